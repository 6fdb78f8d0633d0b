"""numba kernels of the totalizer: state in, state out, no fastmath.

fastmath would let LLVM reassociate the compensated sum and cancel the compensation, so it
stays off. Each kernel has a plain-Python twin in tests/naive.py that the tests hold it to.
Importing this module imports numba; only the totalizer does.
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt
from numba import njit

# Layout of a flow integrator's state vector.
HAS_LAST = 0  # 1.0 once a good sample has been seen
LAST_T = 1  # monotonic time of the last good sample, s
LAST_Q = 2  # its flow, after the low-flow cut-off
FORWARD = 3  # forward total
FORWARD_C = 4  # its Kahan compensation
REVERSE = 5  # reverse total (positive number)
REVERSE_C = 6
ESTIMATED = 7  # quantity integrated across bridged bad samples
GAP_TIME = 8  # time not integrated because a gap was longer than max_gap, s
PENDING_BAD = 9  # 1.0 when bad samples came since the last good one
STATE_SIZE = 10


@njit(cache=True, nogil=True)
def _kahan_add(state: np.ndarray, total: int, comp: int, value: float) -> None:
    y = value - state[comp]
    t = state[total] + y
    state[comp] = (t - state[total]) - y
    state[total] = t


@njit(cache=True, nogil=True)
def integrate_flow(
    t: np.ndarray,
    q: np.ndarray,
    good: np.ndarray,
    state: np.ndarray,
    max_gap: float,
    cutoff: float,
) -> np.ndarray:
    """Trapezoid integral of a flow signal over monotonic time; returns the new state.

    A bad or NaN sample is skipped; the interval it sat in is bridged between the good
    samples around it when that interval is at most `max_gap` (and counted as estimated),
    and not integrated at all when longer (counted as gap time). Forward and reverse flow
    accumulate separately so a reverse flow never silently lowers the forward total.
    """
    s = state.copy()
    for i in range(t.shape[0]):
        ti = t[i]
        qi = q[i]
        if not good[i] or math.isnan(qi) or math.isinf(qi) or math.isnan(ti):
            s[PENDING_BAD] = 1.0
            continue
        if abs(qi) < cutoff:
            qi = 0.0
        if s[HAS_LAST] != 0.0:
            dt = ti - s[LAST_T]
            if dt <= 0.0:
                # A repeated or out-of-order time stamp carries no new interval.
                continue
            if dt > max_gap:
                s[GAP_TIME] += dt
            else:
                q0 = s[LAST_Q]
                forward = 0.5 * (max(q0, 0.0) + max(qi, 0.0)) * dt
                reverse = 0.5 * (max(-q0, 0.0) + max(-qi, 0.0)) * dt
                _kahan_add(s, FORWARD, FORWARD_C, forward)
                _kahan_add(s, REVERSE, REVERSE_C, reverse)
                if s[PENDING_BAD] != 0.0:
                    s[ESTIMATED] += forward + reverse
        s[HAS_LAST] = 1.0
        s[LAST_T] = ti
        s[LAST_Q] = qi
        s[PENDING_BAD] = 0.0
    return s


@njit(cache=True, nogil=True)
def density_linear(
    temperature: np.ndarray, reference: float, reference_temperature: float, expansion: float
) -> np.ndarray:
    """ρ(T) = ρ_ref / (1 + β (T − T_ref)) for each temperature (K); NaN stays NaN."""
    out = np.empty_like(temperature)
    for i in range(temperature.shape[0]):
        out[i] = reference / (1.0 + expansion * (temperature[i] - reference_temperature))
    return out


def new_state() -> npt.NDArray[np.float64]:
    return np.zeros(STATE_SIZE, dtype=np.float64)
