"""Faults the simulated plant can suffer, by name and schedule, deterministic given a seed.

Value faults change what a meter says: `bias` (a relative offset), `drift` (a relative offset
that grows per hour), `stuck` (the meter repeats the reading it had when the fault began).
Link faults change how it answers: `dropout` (silence), `slow` (the reply comes `magnitude`
seconds late), `exception` (a Modbus exception reply, `magnitude` is the code, 6 = busy),
`crc` (a reply with a broken CRC, with probability `magnitude`, on a serial line). `slip`
(a belt scale's belt slips on its speed sensor's pulley: the speed and the rate it reads are
`magnitude` low, so that share of what the belt carries goes unweighed). `alarm`
raises one of the meter's own status flags (`point`: empty_pipe, drive_gain_high, ... as
its profile names them; the flags not raised read 0). `zero` (a flow meter's zero has
shifted: it reads `magnitude` kg/s more than flows, and so reads that much on a line that
stands still). Plant faults: `leak` (mass leaves the product line unmetered at `magnitude`
kg/s) and `stop` (a line's pump stops).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

KINDS = (
    "leak", "bias", "drift", "stuck", "dropout", "slow", "exception", "crc", "alarm", "slip",
    "stop", "zero",
)  # fmt: skip


@dataclass(frozen=True, slots=True, kw_only=True)
class Fault:
    kind: str
    target: str  # a meter's name; "plant" for a leak
    start: float = 0.0  # s after the plant started
    end: float | None = None  # s after the plant started; None: until removed
    magnitude: float = 0.0
    point: str = ""  # alarm: the status flag it raises

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown fault '{self.kind}' (known: {', '.join(KINDS)})")
        if (self.kind == "alarm") != bool(self.point):
            raise ValueError("an alarm fault, and only an alarm fault, names its status 'point'")

    def active(self, t: float) -> bool:
        return self.start <= t and (self.end is None or t < self.end)


@dataclass
class Faults:
    """The fault schedule of one plant; tests add and clear faults while it runs."""

    seed: int = 1
    faults: list[Fault] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.rng = np.random.default_rng(self.seed + 7919)  # its own stream: noise stays put
        self._stuck: dict[str, dict[str, float]] = {}

    def add(self, fault: Fault) -> Fault:
        self.faults.append(fault)
        return fault

    def clear(self, target: str | None = None, kind: str | None = None) -> None:
        self.faults = [
            f
            for f in self.faults
            if not ((target is None or f.target == target) and (kind is None or f.kind == kind))
        ]
        if kind in (None, "stuck"):
            for name in list(self._stuck):
                if target is None or name == target:
                    del self._stuck[name]

    def find(self, kind: str, target: str, t: float) -> Fault | None:
        for fault in self.faults:
            if fault.kind == kind and fault.target == target and fault.active(t):
                return fault
        return None

    def apply(self, target: str, t: float, values: dict[str, float]) -> dict[str, float]:
        """What a meter says under its value faults at plant time `t`."""
        raised = {
            f.point: 1.0
            for f in self.faults
            if f.kind == "alarm" and f.target == target and f.active(t)
        }
        if raised:
            values = {**values, **raised}
        if (slip := self.find("slip", target, t)) is not None:
            values = {
                k: v * (1.0 - slip.magnitude) if k in ("speed", "rate") else v
                for k, v in values.items()
            }
        if self.find("stuck", target, t) is not None:
            return dict(self._stuck.setdefault(target, dict(values)))
        self._stuck.pop(target, None)
        factor = 1.0
        if (bias := self.find("bias", target, t)) is not None:
            factor += bias.magnitude
        if (drift := self.find("drift", target, t)) is not None:
            factor += drift.magnitude * (t - drift.start) / 3600.0
        if factor == 1.0:
            return values
        # Totalizers integrate what the meter measured: biasing them too would need their
        # history. Rates and levels carry the error; totals stay true.
        return {k: (v if k.endswith("_total") else v * factor) for k, v in values.items()}

    def garble(self, target: str, t: float) -> bool:
        fault = self.find("crc", target, t)
        return fault is not None and bool(self.rng.random() < (fault.magnitude or 1.0))
