"""What a node's balance is made of: snapshots of its terms, the terms of a window, the
judged window, and the alarm events; the statuses and event kinds they carry."""

from __future__ import annotations

import math
from dataclasses import dataclass

OK = "ok"
WARNING = "warning"  # outside tolerance, not yet for the persistence time
ALARM = "alarm"
INCONCLUSIVE = "inconclusive"

RAISED, CLEARED, REPEATED, DRIFT = "raised", "cleared", "repeated", "drift"

IN, OUT, GEN, CONS = 0, 1, 2, 3


@dataclass(frozen=True, slots=True)
class Snapshot:
    mono: float
    wall: float
    flows: tuple[float, ...] | None  # cumulative net of each term stream; None: one is missing
    inventory: float | None  # kg in the node's inventories
    cycles: int  # cycles seen so far
    complete: int  # of which every term was known

    @property
    def ok(self) -> bool:
        return self.flows is not None and self.inventory is not None


@dataclass(frozen=True, slots=True)
class Terms:
    """The node's terms between two snapshots, kg."""

    inflow: float
    outflow: float
    generation: float
    consumption: float
    inventory_start: float
    inventory_end: float
    sigma: float

    @property
    def delta_inventory(self) -> float:
        return self.inventory_end - self.inventory_start

    @property
    def imbalance(self) -> float:
        return (
            self.inflow + self.generation - self.outflow - self.consumption - self.delta_inventory
        )

    @property
    def throughput(self) -> float:
        return max(abs(self.inflow + self.generation), abs(self.outflow + self.consumption))


NO_TERMS = Terms(*(math.nan,) * 6, sigma=math.nan)


@dataclass(frozen=True, slots=True)
class WindowResult:
    node: str
    window: str  # rolling | calendar | batch
    label: str  # the batch's tag value; empty otherwise
    start_wall: float
    end_wall: float
    terms: Terms
    tolerance: float
    coverage: float
    status: str
    alarm_active: bool
    cusum_high: float
    cusum_low: float

    @property
    def imbalance(self) -> float:
        return self.terms.imbalance

    @property
    def relative(self) -> float:
        t = self.terms.throughput
        return self.imbalance / t if t > 0 else math.nan

    @property
    def sigma(self) -> float:
        return self.terms.sigma


@dataclass(frozen=True, slots=True)
class AlarmEvent:
    node: str
    event: str  # raised | cleared | repeated | drift
    mono: float
    wall: float
    since_mono: float  # when the condition began
    since_wall: float
    result: WindowResult
    hint: str
