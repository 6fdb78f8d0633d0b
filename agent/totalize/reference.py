"""Plain-Python references of the numba kernels: slow, obvious, and the definition of right.

The tests hold each kernel in agent/totalize/kernels.py to its twin here, bit for bit, and
`massgate bench totalizer` measures both. Each works on a plain list in the kernels' state
layout.
"""

from __future__ import annotations

import math
from bisect import bisect_right
from collections.abc import Sequence

from . import state as k

Floats = Sequence[float]


def _two_sum(s: list[float], total: int, comp: int, value: float) -> None:
    x = s[total] + value
    z = x - s[total]
    s[comp] += (s[total] - (x - z)) + (value - z)
    s[total] = x


def _step(s: list[float], ti: float, qi: float, max_gap: float) -> None:
    if s[k.HAS_LAST]:
        dt = ti - s[k.LAST_T]
        if dt <= 0.0:
            return
        if dt > max_gap:
            s[k.GAP_TIME] += dt
        else:
            q0 = s[k.LAST_Q]
            forward = 0.5 * (max(q0, 0.0) + max(qi, 0.0)) * dt
            reverse = 0.5 * (max(-q0, 0.0) + max(-qi, 0.0)) * dt
            _two_sum(s, k.FORWARD, k.FORWARD_C, forward)
            _two_sum(s, k.REVERSE, k.REVERSE_C, reverse)
            s[k.COVERED_TIME] += dt
            if q0 != 0.0 or qi != 0.0:
                s[k.FLOW_TIME] += dt
            if s[k.PENDING_BAD]:
                s[k.ESTIMATED] += forward + reverse
    s[k.HAS_LAST], s[k.LAST_T], s[k.LAST_Q], s[k.PENDING_BAD] = 1.0, ti, qi, 0.0


def _bad(ok: bool, qi: float, ti: float) -> bool:
    return not ok or math.isnan(qi) or math.isinf(qi) or math.isnan(ti)


def integrate_flow(
    t: Floats, q: Floats, good: Sequence[bool], state: Floats, max_gap: float, cutoff: float
) -> list[float]:
    """Reference of kernels.integrate_flow."""
    s = list(state)
    for ti, qi, ok in zip(t, q, good, strict=True):
        if _bad(ok, qi, ti):
            s[k.PENDING_BAD] = 1.0
            continue
        _step(s, ti, 0.0 if abs(qi) < cutoff else qi, max_gap)
    return s


def integrate_volume(
    t: Floats,
    qv: Floats,
    temperature: Floats,
    pressure: Floats,
    good: Sequence[bool],
    state: Floats,
    max_gap: float,
    cutoff: float,
    *model: float,
) -> list[float]:
    """Reference of kernels.integrate_volume; model = ρ_ref, T_ref, β, κ."""
    ref, t_ref, beta, kappa = model
    s = list(state)
    for ti, q_raw, temp, p, ok in zip(t, qv, temperature, pressure, good, strict=True):
        qi = 0.0 if abs(q_raw) < cutoff else q_raw
        mass = qi * _divide(ref, (1.0 + beta * (temp - t_ref)) * (1.0 - kappa * p))
        if _bad(ok, mass, ti):
            s[k.PENDING_BAD] = 1.0
            continue
        _step(s, ti, mass, max_gap)
    return s


def difference_register(
    t: Floats, register: Floats, good: Sequence[bool], state: Floats, span: float, max_rate: float
) -> list[float]:
    """Reference of kernels.difference_register."""
    s = list(state)
    for ti, ri, ok in zip(t, register, good, strict=True):
        if _bad(ok, ri, ti):
            continue
        if s[k.HAS_LAST]:
            dt = ti - s[k.LAST_T]
            if dt <= 0.0:
                continue
            delta = ri - s[k.LAST_Q]
            if delta < 0.0:
                delta += span
            if delta > max_rate * dt or max_rate * dt >= span:
                s[k.FAULTS] += 1.0
                s[k.GAP_TIME] += dt
            else:
                _two_sum(s, k.FORWARD, k.FORWARD_C, delta)
                s[k.COVERED_TIME] += dt
                if delta > 0.0:
                    s[k.FLOW_TIME] += dt
        s[k.HAS_LAST], s[k.LAST_T], s[k.LAST_Q] = 1.0, ti, ri
    return s


def strapping(level: Floats, levels: Floats, volumes: Floats) -> list[float]:
    """Reference of kernels.strapping."""
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


def density_linear(
    temperatures: Floats, reference: float, reference_temperature: float, expansion: float
) -> list[float]:
    """Reference of kernels.density_linear."""
    return [_divide(reference, 1.0 + expansion * (x - reference_temperature)) for x in temperatures]


def linear_density(
    temperature: float,
    gauge: float,
    reference: float,
    reference_temperature: float,
    expansion: float,
    compressibility: float,
) -> float:
    """Reference of kernels.linear_density."""
    return _divide(
        reference,
        (1.0 + expansion * (temperature - reference_temperature)) * (1.0 - compressibility * gauge),
    )


def _divide(a: float, b: float) -> float:
    """a / b as IEEE 754 (and the kernels' error_model="numpy") has it: ±inf or NaN for a
    zero divisor, never ZeroDivisionError out of the middle of a cycle."""
    if b != 0.0:
        return a / b
    if a == 0.0 or math.isnan(a):
        return math.nan
    return math.copysign(math.inf, a) * math.copysign(1.0, b)
