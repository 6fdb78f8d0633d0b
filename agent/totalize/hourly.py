"""Hourly quantity records per stream, as a flow computer keeps them (API MPMS 21.1/21.2).

An hour is a UTC clock hour. Its quantity is the difference of the stream's non-resettable
totals at its close and at its open, so the hours of a day add up to the day exactly and a
restart in the middle of an hour continues that hour. Averages of temperature, pressure and
density are flow-weighted: each sample weighs its mass flow times the time it stands for.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from ..core.records import num, utc
from . import state as layout

HOUR = 3600.0


def hour_index(wall: float) -> int:
    return math.floor(wall / HOUR)


@dataclass(slots=True)
class OpenHour:
    """The hour being accumulated: the totals at its open and the weighted sums so far."""

    index: int
    opened: list[float]  # the integrator's state vector when the hour opened
    sums: dict[str, list[float]] = field(default_factory=dict)  # name → [Σ w·x, Σ w]

    def weigh(
        self,
        t: npt.NDArray[np.float64],
        mass_flow: npt.NDArray[np.float64],
        values: dict[str, npt.NDArray[np.float64]],
        last_t: float,
    ) -> None:
        """Add one chunk's samples: weight = |mass flow| × time since the previous sample."""
        if t.size == 0:
            return
        previous = np.concatenate(([last_t if math.isfinite(last_t) else t[0]], t[:-1]))
        dt = np.clip(t - previous, 0.0, None)
        weight = np.abs(mass_flow) * dt
        for name, x in values.items():
            ok = np.isfinite(x) & np.isfinite(weight) & (weight > 0.0)
            if not ok.any():
                continue
            acc = self.sums.setdefault(name, [0.0, 0.0])
            acc[0] += float(np.sum(weight[ok] * x[ok]))
            acc[1] += float(np.sum(weight[ok]))

    def average(self, name: str) -> float | None:
        acc = self.sums.get(name)
        if acc is None or acc[1] <= 0.0:
            return None
        return acc[0] / acc[1]

    def saved(self) -> dict[str, Any]:
        return {"index": self.index, "opened": self.opened, "sums": self.sums}

    @classmethod
    def restore(cls, saved: dict[str, Any]) -> OpenHour:
        opened = layout.upgrade_state([float(x) for x in saved["opened"]]).tolist()
        sums = {str(k): [float(v[0]), float(v[1])] for k, v in saved["sums"].items()}
        return cls(int(saved["index"]), opened, sums)


CLOCK_SLACK = 60.0  # s an hour may be covered beyond 3600 s before it is a clock step


def hour_body(
    stream: str,
    hour: OpenHour,
    state: npt.NDArray[np.float64],
    *,
    ignore_reverse: bool,
    standard: tuple[float, float, float] | None = None,
) -> dict[str, Any]:
    """The record of a closed hour, from the state at its close.

    `standard` = (density, temperature, pressure) of a volumetric stream's standard
    conditions, for its quantity as a standard volume.
    """

    def delta(slot: int) -> float:
        return float(state[slot]) - hour.opened[slot]

    forward = layout.total(state, layout.FORWARD) - layout.total(hour.opened, layout.FORWARD)
    reverse = layout.total(state, layout.REVERSE) - layout.total(hour.opened, layout.REVERSE)
    quantity = forward if ignore_reverse else forward - reverse
    covered = delta(layout.COVERED_TIME)
    # An interval that ends just after the hour counts in the new hour, so an hour can be
    # covered for a little more than 3600 s; what is never covered is the faulted time.
    faulted = min(max(HOUR - covered, 0.0), HOUR)
    estimated = delta(layout.ESTIMATED)
    moved = forward + reverse
    start = hour.index * HOUR
    body: dict[str, Any] = {
        "stream": stream,
        "hour_start": utc(start),
        "hour_end": utc(start + HOUR),
        "quantity_kg": num(quantity),
        "forward_kg": num(forward),
        "reverse_kg": num(reverse),
        "flow_time_s": num(delta(layout.FLOW_TIME)),
        "estimated_kg": num(estimated),
        "estimated_share": num(estimated / moved if moved > 0.0 else 0.0),
        "faulted_s": num(faulted),
        "faulted_share": num(faulted / HOUR),
        # Covered longer than the hour by the monotonic clock: the wall clock stepped back
        # within it, and the quantity is more than this hour's.
        "clock_stepped": covered > HOUR + CLOCK_SLACK,
        "register_faults": int(delta(layout.FAULTS)),
        "temperature_K": num(hour.average("temperature")),
        "pressure_Pa": num(hour.average("pressure")),
        "density_kg_m3": num(hour.average("density")),
        "forward_total_kg": num(layout.total(state, layout.FORWARD)),
        "reverse_total_kg": num(layout.total(state, layout.REVERSE)),
    }
    if standard is not None:
        rho, temperature, pressure = standard
        body["standard_volume_m3"] = num(quantity / rho)
        body["standard_conditions"] = {"temperature_K": temperature, "pressure_Pa": pressure}
    return body
