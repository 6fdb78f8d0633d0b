"""Plain-Python references of the numba kernels: slow, obvious, and the definition of right."""

from __future__ import annotations

import math


def integrate_flow(t, q, good, state, max_gap, cutoff):
    """Reference of agent.kernels.integrate_flow (same state layout)."""
    has_last, last_t, last_q, fwd, fwd_c, rev, rev_c, est, gap, pending = list(state)
    for ti, q_raw, ok in zip(t, q, good, strict=True):
        qi = q_raw
        if not ok or math.isnan(qi) or math.isinf(qi) or math.isnan(ti):
            pending = 1.0
            continue
        if abs(qi) < cutoff:
            qi = 0.0
        if has_last:
            dt = ti - last_t
            if dt <= 0.0:
                continue
            if dt > max_gap:
                gap += dt
            else:
                forward = 0.5 * (max(last_q, 0.0) + max(qi, 0.0)) * dt
                reverse = 0.5 * (max(-last_q, 0.0) + max(-qi, 0.0)) * dt
                y = forward - fwd_c
                s = fwd + y
                fwd_c = (s - fwd) - y
                fwd = s
                y = reverse - rev_c
                s = rev + y
                rev_c = (s - rev) - y
                rev = s
                if pending:
                    est += forward + reverse
        has_last, last_t, last_q, pending = 1.0, ti, qi, 0.0
    return [has_last, last_t, last_q, fwd, fwd_c, rev, rev_c, est, gap, pending]


def density_linear(temperatures, reference, reference_temperature, expansion):
    return [reference / (1.0 + expansion * (x - reference_temperature)) for x in temperatures]
