"""An integrator's state vector: its layout, a new one, its totals, and states saved by any
release read as this release's. numpy only: the Python engine and the saved totals need no
numba."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

# Layout of an integrator's state vector. A saved state shorter than STATE_SIZE comes from an
# older release: the slots added since then start at zero (see `upgrade_state`).
HAS_LAST = 0  # 1.0 once a good sample has been seen
LAST_T = 1  # monotonic time of the last good sample, s
LAST_Q = 2  # its flow after the low-flow cut-off (a register kernel: the register value)
FORWARD = 3  # forward total: running sum ...
FORWARD_C = 4  # ... and its compensation (TwoSum errors); the total is their sum: `total`
REVERSE = 5  # reverse total (positive number)
REVERSE_C = 6
ESTIMATED = 7  # quantity integrated across bridged bad samples
GAP_TIME = 8  # time whose quantity is unknown (gap longer than max_gap, or a faulted jump), s
PENDING_BAD = 9  # 1.0 when bad samples came since the last good one
FLOW_TIME = 10  # time with flow above the cut-off, s
FAULTS = 11  # register jumps refused as implausible
COVERED_TIME = 12  # time whose quantity is known (integrated, bridged or counted), s
STATE_SIZE = 13


def new_state() -> npt.NDArray[np.float64]:
    return np.zeros(STATE_SIZE, dtype=np.float64)


def total(state: npt.NDArray[np.float64] | list[float], slot: int) -> float:
    """The compensated total of FORWARD or REVERSE: running sum plus compensation."""
    return float(state[slot]) + float(state[slot + 1])


_KAHAN_STATE_SIZE = 10  # the first layout, whose compensation was Kahan's: opposite sign


def upgrade_state(saved: list[float]) -> npt.NDArray[np.float64]:
    """A state saved by any release as this release's vector: totals are never reset."""
    if len(saved) > STATE_SIZE:
        raise ValueError(
            f"saved totalizer state has {len(saved)} slots, this release knows {STATE_SIZE}: "
            "it was written by a newer massgate; downgrading would lose totals"
        )
    state = new_state()
    state[: len(saved)] = np.asarray(saved, dtype=np.float64)
    if len(saved) == _KAHAN_STATE_SIZE:
        state[FORWARD_C] = -state[FORWARD_C]
        state[REVERSE_C] = -state[REVERSE_C]
    return state
