"""numba kernels of the totalizer: state in, state out, no fastmath.

fastmath would let LLVM reassociate the compensated sum and cancel the compensation, so it
stays off. error_model="numpy": a division by zero gives inf or NaN, which the kernels treat
as a bad sample, instead of raising out of the middle of a cycle. Each kernel has a
plain-Python twin in reference.py that tests/agent/test_kernels.py holds it to.
Importing this module imports numba; only the totalizer and the benchmark do.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

# The state vector's layout lives in state.py (no numba there, so the Python engine and the
# saved totals need none); its slot numbers are compile-time constants here.
from .state import (
    COVERED_TIME,
    ESTIMATED,
    FAULTS,
    FLOW_TIME,
    FORWARD,
    FORWARD_C,
    GAP_TIME,
    HAS_LAST,
    LAST_Q,
    LAST_T,
    PENDING_BAD,
    REVERSE,
    REVERSE_C,
    STATE_SIZE,
    new_state,
    total,
    upgrade_state,
)

__all__ = [
    "COVERED_TIME",
    "ESTIMATED",
    "FAULTS",
    "FLOW_TIME",
    "FORWARD",
    "FORWARD_C",
    "GAP_TIME",
    "HAS_LAST",
    "LAST_Q",
    "LAST_T",
    "PENDING_BAD",
    "REVERSE",
    "REVERSE_C",
    "STATE_SIZE",
    "density_linear",
    "difference_register",
    "integrate_flow",
    "integrate_volume",
    "linear_density",
    "new_state",
    "strapping",
    "total",
    "upgrade_state",
]


@njit(cache=True, nogil=True, error_model="numpy", inline="always")
def linear_density(
    temperature: float,
    gauge: float,
    reference: float,
    reference_temperature: float,
    expansion: float,
    compressibility: float,
) -> float:
    """ρ(T, P) = ρ_ref / ((1 + β (T − T_ref)) · (1 − κ·P)): the linear thermal model with a
    compressibility term in the form of API 11.1's CPL (P gauge, Pa).

    The one place this formula is written: the volume kernel, density_linear and the
    per-sample path (conditions.density_at) all call it, so they cannot disagree.
    """
    return reference / (
        (1.0 + expansion * (temperature - reference_temperature)) * (1.0 - compressibility * gauge)
    )


@njit(cache=True, nogil=True, inline="always")
def _two_sum(total: float, compensation: float, value: float) -> tuple[float, float]:
    """total + value, and the compensation with that addition's exact rounding error added
    (Knuth's TwoSum: no branch, so the running sum depends on one addition per sample)."""
    x = total + value
    z = x - total
    return x, compensation + ((total - (x - z)) + (value - z))


@njit(cache=True, nogil=True, error_model="numpy")
def _trapezoid(
    t: np.ndarray,
    q: np.ndarray,
    temperature: np.ndarray,
    pressure: np.ndarray,
    good: np.ndarray,
    state: np.ndarray,
    max_gap: float,
    cutoff: float,
    reference: float,
    reference_temperature: float,
    expansion: float,
    compressibility: float,
    corrected: bool,
) -> np.ndarray:
    """The one trapezoid loop behind integrate_flow and integrate_volume.

    The state lives in local variables for the loop, so that LLVM keeps it in registers,
    and the totals are compensated with Knuth's TwoSum, which finds each addition's exact
    rounding error without a branch: the running sum depends on one addition per sample,
    not Kahan's four, and the true total is sum + compensation (`total`).
    """
    has_last = state[HAS_LAST]
    last_t = state[LAST_T]
    last_q = state[LAST_Q]
    fwd = state[FORWARD]
    fwd_c = state[FORWARD_C]
    rev = state[REVERSE]
    rev_c = state[REVERSE_C]
    estimated = state[ESTIMATED]
    gap = state[GAP_TIME]
    pending = state[PENDING_BAD]
    flow_time = state[FLOW_TIME]
    covered = state[COVERED_TIME]
    for i in range(t.shape[0]):
        ti = t[i]
        qi = q[i]
        if abs(qi) < cutoff:
            qi = 0.0
        if corrected:
            qi = qi * linear_density(
                temperature[i],
                pressure[i],
                reference,
                reference_temperature,
                expansion,
                compressibility,
            )
        if not good[i] or math.isnan(qi) or math.isinf(qi) or math.isnan(ti):
            pending = 1.0
            continue
        if has_last != 0.0:
            dt = ti - last_t
            if dt <= 0.0:
                # A repeated or out-of-order time stamp carries no new interval.
                continue
            if dt > max_gap:
                gap += dt
            else:
                forward = 0.5 * (max(last_q, 0.0) + max(qi, 0.0)) * dt
                reverse = 0.5 * (max(-last_q, 0.0) + max(-qi, 0.0)) * dt
                fwd, fwd_c = _two_sum(fwd, fwd_c, forward)
                rev, rev_c = _two_sum(rev, rev_c, reverse)
                covered += dt
                if last_q != 0.0 or qi != 0.0:
                    flow_time += dt
                if pending != 0.0:
                    estimated += forward + reverse
        has_last = 1.0
        last_t = ti
        last_q = qi
        pending = 0.0
    s = state.copy()
    s[HAS_LAST] = has_last
    s[LAST_T] = last_t
    s[LAST_Q] = last_q
    s[FORWARD] = fwd
    s[FORWARD_C] = fwd_c
    s[REVERSE] = rev
    s[REVERSE_C] = rev_c
    s[ESTIMATED] = estimated
    s[GAP_TIME] = gap
    s[PENDING_BAD] = pending
    s[FLOW_TIME] = flow_time
    s[COVERED_TIME] = covered
    return s


@njit(cache=True, nogil=True, error_model="numpy")
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
    return _trapezoid(t, q, q, q, good, state, max_gap, cutoff, 1.0, 0.0, 0.0, 0.0, False)


@njit(cache=True, nogil=True, error_model="numpy")
def integrate_volume(
    t: np.ndarray,
    qv: np.ndarray,
    temperature: np.ndarray,
    pressure: np.ndarray,
    good: np.ndarray,
    state: np.ndarray,
    max_gap: float,
    cutoff: float,
    reference: float,
    reference_temperature: float,
    expansion: float,
    compressibility: float,
) -> np.ndarray:
    """Mass from a volume flow and the density at each sample's temperature and pressure.

    ρ from linear_density; `pressure` is gauge, Pa (zeros when the stream has no pressure
    tag). The cut-off applies to the volume flow, as a meter's
    does. A sample whose temperature or pressure is missing is bad like a missing flow.
    """
    return _trapezoid(
        t,
        qv,
        temperature,
        pressure,
        good,
        state,
        max_gap,
        cutoff,
        reference,
        reference_temperature,
        expansion,
        compressibility,
        True,
    )


@njit(cache=True, nogil=True, error_model="numpy")
def difference_register(
    t: np.ndarray,
    register: np.ndarray,
    good: np.ndarray,
    state: np.ndarray,
    span: float,
    max_rate: float,
) -> np.ndarray:
    """Quantity from a meter's own totalizer register by differencing.

    A register below its last value rolled over at `span` (inf: it never does). A step
    larger than `max_rate` could deliver in the time since the last value (a meter reset, a
    replaced meter, a garbled reply that passed the CRC) is a fault, not mass: it is counted,
    its interval goes to gap time, and the new value becomes the reference. So does a step
    over an interval long enough for the register to roll over more than once, because how
    often it did cannot be known. Time between good samples needs no bridging: the meter
    counted through it.
    """
    has_last = state[HAS_LAST]
    last_t = state[LAST_T]
    last_r = state[LAST_Q]
    fwd = state[FORWARD]
    fwd_c = state[FORWARD_C]
    gap = state[GAP_TIME]
    flow_time = state[FLOW_TIME]
    faults = state[FAULTS]
    covered = state[COVERED_TIME]
    for i in range(t.shape[0]):
        ti = t[i]
        ri = register[i]
        if not good[i] or math.isnan(ri) or math.isinf(ri) or math.isnan(ti):
            continue
        if has_last != 0.0:
            dt = ti - last_t
            if dt <= 0.0:
                continue
            delta = ri - last_r
            if delta < 0.0:
                delta += span
            if delta > max_rate * dt or max_rate * dt >= span:
                faults += 1.0
                gap += dt
            else:
                fwd, fwd_c = _two_sum(fwd, fwd_c, delta)
                covered += dt
                if delta > 0.0:
                    flow_time += dt
        has_last = 1.0
        last_t = ti
        last_r = ri
    s = state.copy()
    s[HAS_LAST] = has_last
    s[LAST_T] = last_t
    s[LAST_Q] = last_r
    s[FORWARD] = fwd
    s[FORWARD_C] = fwd_c
    s[GAP_TIME] = gap
    s[FLOW_TIME] = flow_time
    s[FAULTS] = faults
    s[COVERED_TIME] = covered
    return s


@njit(cache=True, nogil=True, error_model="numpy")
def strapping(level: np.ndarray, levels: np.ndarray, volumes: np.ndarray) -> np.ndarray:
    """Volume at each level by linear interpolation in a gauge table (levels ascending).

    A level outside the table is NaN: a tank's shape beyond its calibration is not guessed.
    """
    out = np.empty_like(level)
    n = levels.shape[0]
    for i in range(level.shape[0]):
        x = level[i]
        if math.isnan(x) or x < levels[0] or x > levels[n - 1]:
            out[i] = math.nan
            continue
        lo = 0
        hi = n - 1
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if levels[mid] <= x:
                lo = mid
            else:
                hi = mid
        x0 = levels[lo]
        x1 = levels[hi]
        if x1 == x0:
            out[i] = volumes[hi]
        else:
            out[i] = volumes[lo] + (volumes[hi] - volumes[lo]) * (x - x0) / (x1 - x0)
    return out


@njit(cache=True, nogil=True, error_model="numpy")
def density_linear(
    temperature: np.ndarray, reference: float, reference_temperature: float, expansion: float
) -> np.ndarray:
    """ρ(T) = ρ_ref / (1 + β (T − T_ref)) for each temperature (K); NaN stays NaN."""
    out = np.empty_like(temperature)
    for i in range(temperature.shape[0]):
        out[i] = linear_density(
            temperature[i], 0.0, reference, reference_temperature, expansion, 0.0
        )
    return out
