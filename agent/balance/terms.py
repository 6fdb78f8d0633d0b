"""What a node's balance is made of: snapshots of its terms, the terms of a window, the
judged window, and the alarm events; the statuses and event kinds they carry."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from ..config import LOSS_CLASSES, PRODUCT
from ..core.records import num, utc

OK = "ok"
WARNING = "warning"  # outside tolerance, not yet for the persistence time
ALARM = "alarm"
INCONCLUSIVE = "inconclusive"

RAISED, CLEARED, REPEATED, DRIFT = "raised", "cleared", "repeated", "drift"

IN, OUT, GEN, CONS = 0, 1, 2, 3


class Metered(Protocol):
    """A stream as a balance sees it: the gateway's own running total (StreamTotal) or, upstream,
    a gateway's totals records (ingest.remote)."""

    @property
    def accuracy(self) -> float: ...  # rated, as a fraction of what it moved (taken as 2σ)

    def net_at(self, mono: float) -> float | None: ...  # cumulative net kg; None: unknown

    @property
    def meter_alarms(self) -> tuple[str, ...]: ...  # the meter's own alarms active now


@runtime_checkable
class Entered(Protocol):
    """A stream of entries (a manual stream): its kilograms are those dated in a window,
    whenever they were entered."""

    def between(self, start_wall: float, end_wall: float) -> tuple[float, float]: ...


class Weighed(Protocol):
    """An inventory as a balance sees it: its gauge here, or its readings upstream."""

    @property
    def sigma(self) -> float: ...  # kg, one reading

    def mass_at(self, mono: float) -> float | None: ...


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
    by_class: tuple[tuple[str, float], ...] = ()  # the outputs by class (product, scrap...)

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
    theoretical_yield: float | None = None
    revision: int = 0  # 0: as judged when it closed; n: its n-th correction by a late entry
    campaign: str = ""  # the batch's campaign (its tag's value or the command's); or empty
    started_by: str = ""  # who started and ended a batch by command
    ended_by: str = ""

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


def accounting(r: WindowResult) -> dict[str, Any]:
    """Yield and losses: the outputs by class, the yield on the inputs (and the recipe's), the
    losses known by class and the unaccounted one (the imbalance) with its uncertainty."""
    t = r.terms
    outputs = dict(t.by_class)
    product = outputs.get(PRODUCT)
    fed = t.inflow + t.generation
    actual = product / fed if product is not None and fed > 0 else math.nan
    theory = r.theoretical_yield
    return {
        "outputs_kg": {c: num(kg) for c, kg in outputs.items()},
        "yield": num(actual),
        "theoretical_yield": theory,
        "yield_gap_kg": (
            num(theory * fed - product) if theory is not None and product is not None else None
        ),
        "known_loss_kg": num(sum(outputs.get(c, 0.0) for c in LOSS_CLASSES)),
        "unaccounted_kg": num(t.imbalance),
        "unaccounted_uncertainty_kg": num(t.sigma),
    }


def balance_body(r: WindowResult) -> dict[str, Any]:
    t = r.terms
    return {
        "node": r.node,
        "window": r.window,
        "batch": r.label or None,
        "window_start": utc(r.start_wall),
        "window_end": utc(r.end_wall),
        "in_kg": num(t.inflow),
        "out_kg": num(t.outflow),
        "generation_kg": num(t.generation),
        "consumption_kg": num(t.consumption),
        "inventory_start_kg": num(t.inventory_start),
        "inventory_end_kg": num(t.inventory_end),
        "delta_inventory_kg": num(t.delta_inventory),
        "imbalance_kg": num(r.imbalance),
        "relative": num(r.relative),
        "uncertainty_kg": num(r.sigma),
        "tolerance_kg": num(r.tolerance),
        "coverage": num(r.coverage),
        "status": r.status,
        "alarm_active": r.alarm_active,
        "cusum": {"high": num(r.cusum_high), "low": num(r.cusum_low)},
        "campaign": r.campaign or None,
        "revision": r.revision,
        "started_by": r.started_by or None,
        "ended_by": r.ended_by or None,
        "accounting": accounting(r),
    }


def alarm_body(event: AlarmEvent) -> dict[str, Any]:
    return {
        "node": event.node,
        "event": event.event,
        "since": utc(event.since_wall),
        "at": utc(event.wall),
        "hint": event.hint,
        "balance": balance_body(event.result),
    }


def log_event(log: logging.Logger, event: AlarmEvent, what: str = "node") -> None:
    """An alarm event in the journal: a warning when raised, repeated or drifting."""
    extra = {"node": event.node}
    if event.event == DRIFT:
        log.warning("%s %s: drift: %s", what, event.node, event.hint, extra=extra)
        return
    log.log(
        logging.INFO if event.event == CLEARED else logging.WARNING,
        "%s %s: alarm %s: imbalance %.3f kg (tolerance %.3f kg); %s",
        what,
        event.node,
        event.event,
        event.result.imbalance,
        event.result.tolerance,
        event.hint,
        extra=extra,
    )
