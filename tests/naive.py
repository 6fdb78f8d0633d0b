"""Plain-Python references of the numba kernels: slow, obvious, and the definition of right.

Each works on a plain list in agent.kernels' state layout (13 slots).
"""

from __future__ import annotations

import math
from bisect import bisect_right

HAS_LAST, LAST_T, LAST_Q, FWD, FWD_C, REV, REV_C, EST, GAP, PENDING = range(10)
FLOW_TIME, FAULTS, COVERED = range(10, 13)


def _kahan(s, total, comp, value):
    y = value - s[comp]
    t = s[total] + y
    s[comp] = (t - s[total]) - y
    s[total] = t


def _step(s, ti, qi, max_gap):
    if s[HAS_LAST]:
        dt = ti - s[LAST_T]
        if dt <= 0.0:
            return
        if dt > max_gap:
            s[GAP] += dt
        else:
            q0 = s[LAST_Q]
            forward = 0.5 * (max(q0, 0.0) + max(qi, 0.0)) * dt
            reverse = 0.5 * (max(-q0, 0.0) + max(-qi, 0.0)) * dt
            _kahan(s, FWD, FWD_C, forward)
            _kahan(s, REV, REV_C, reverse)
            s[COVERED] += dt
            if q0 != 0.0 or qi != 0.0:
                s[FLOW_TIME] += dt
            if s[PENDING]:
                s[EST] += forward + reverse
    s[HAS_LAST], s[LAST_T], s[LAST_Q], s[PENDING] = 1.0, ti, qi, 0.0


def _bad(ok, qi, ti):
    return not ok or math.isnan(qi) or math.isinf(qi) or math.isnan(ti)


def integrate_flow(t, q, good, state, max_gap, cutoff):
    """Reference of agent.kernels.integrate_flow."""
    s = list(state)
    for ti, qi, ok in zip(t, q, good, strict=True):
        if _bad(ok, qi, ti):
            s[PENDING] = 1.0
            continue
        _step(s, ti, 0.0 if abs(qi) < cutoff else qi, max_gap)
    return s


def integrate_volume(t, qv, temperature, pressure, good, state, max_gap, cutoff, *model):
    """Reference of agent.kernels.integrate_volume; model = ρ_ref, T_ref, β, κ."""
    ref, t_ref, beta, kappa = model
    s = list(state)
    for ti, q_raw, temp, p, ok in zip(t, qv, temperature, pressure, good, strict=True):
        qi = 0.0 if abs(q_raw) < cutoff else q_raw
        try:
            mass = qi * (ref / ((1.0 + beta * (temp - t_ref)) * (1.0 - kappa * p)))
        except ZeroDivisionError:
            mass = math.nan  # the kernel's inf or NaN, which it treats as bad
        if _bad(ok, mass, ti):
            s[PENDING] = 1.0
            continue
        _step(s, ti, mass, max_gap)
    return s


def difference_register(t, register, good, state, span, max_rate):
    """Reference of agent.kernels.difference_register."""
    s = list(state)
    for ti, ri, ok in zip(t, register, good, strict=True):
        if _bad(ok, ri, ti):
            continue
        if s[HAS_LAST]:
            dt = ti - s[LAST_T]
            if dt <= 0.0:
                continue
            delta = ri - s[LAST_Q]
            if delta < 0.0:
                delta += span
            if delta > max_rate * dt or max_rate * dt >= span:
                s[FAULTS] += 1.0
                s[GAP] += dt
            else:
                _kahan(s, FWD, FWD_C, delta)
                s[COVERED] += dt
                if delta > 0.0:
                    s[FLOW_TIME] += dt
        s[HAS_LAST], s[LAST_T], s[LAST_Q] = 1.0, ti, ri
    return s


def strapping(level, levels, volumes):
    """Reference of agent.kernels.strapping."""
    out = []
    for x in level:
        if math.isnan(x) or x < levels[0] or x > levels[-1]:
            out.append(math.nan)
            continue
        hi = min(bisect_right(levels, x), len(levels) - 1)
        lo = hi - 1
        x0, x1 = levels[lo], levels[hi]
        out.append(volumes[lo] + (volumes[hi] - volumes[lo]) * (x - x0) / (x1 - x0))
    return out


def density_linear(temperatures, reference, reference_temperature, expansion):
    return [reference / (1.0 + expansion * (x - reference_temperature)) for x in temperatures]
