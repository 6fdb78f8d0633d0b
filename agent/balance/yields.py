"""Yield and losses summed over the windows of a batch, a shift, a production day or a
campaign, from the balance records the gateway kept (or an ingest stored).

Only windows that do not overlap can be summed: calendar windows (shifts) and batches. A
rolling window overlaps the one before it, so a node with rolling windows is not summed.

A window goes to the shift, day or campaign it ran in by its midpoint, so that a shift window
ending at 14:00 belongs to the shift that began at 06:00. The production day begins at the
first of the plant's shift times (06:00), as the plant reckons its day, or at midnight when no
shifts are known.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from ..config import LOSS_CLASSES, OUTPUT_CLASSES, PRODUCT
from .windows import previous_boundary

BY = ("batch", "shift", "day", "campaign")
SUMMED = ("calendar", "batch")  # window kinds that do not overlap

# A campaign by batch id: the id less its last part after a separator (C7-012 → C7).
_LAST_PART = re.compile(r"[-_/.:][^-_/.:]*$")


@dataclass
class Group:
    """One node's windows in one batch, shift, day or campaign, summed."""

    node: str
    key: str
    windows: int = 0
    without_data: int = 0  # windows with no usable data (inconclusive, no terms): not summed
    statuses: dict[str, int] = field(default_factory=dict)
    in_kg: float = 0.0
    out_kg: float = 0.0
    generation_kg: float = 0.0
    consumption_kg: float = 0.0
    delta_inventory_kg: float = 0.0
    imbalance_kg: float = 0.0
    variance: float = 0.0  # of the imbalance: windows' uncertainties are independent
    outputs_kg: dict[str, float] = field(default_factory=dict)
    theoretical: set[float | None] = field(default_factory=set)
    start: str = ""
    end: str = ""

    def add(self, b: dict[str, Any]) -> None:
        self.windows += 1
        status = b.get("status") or "unknown"
        self.statuses[status] = self.statuses.get(status, 0) + 1
        self.start = min(self.start, b["window_start"] or "~") if self.start else b["window_start"]
        self.end = max(self.end, b["window_end"] or "")
        amounts = [b.get(k) for k in ("in_kg", "out_kg", "delta_inventory_kg", "imbalance_kg")]
        if any(not isinstance(a, int | float) for a in amounts):
            self.without_data += 1
            return
        self.in_kg += b["in_kg"]
        self.out_kg += b["out_kg"]
        self.generation_kg += b.get("generation_kg") or 0.0
        self.consumption_kg += b.get("consumption_kg") or 0.0
        self.delta_inventory_kg += b["delta_inventory_kg"]
        self.imbalance_kg += b["imbalance_kg"]
        self.variance += (b.get("uncertainty_kg") or 0.0) ** 2
        accounting = b.get("accounting") or {}
        # A record from before output classes: all its outputs were product.
        outputs = accounting.get("outputs_kg", {PRODUCT: b["out_kg"]})
        for kind, kg in outputs.items():
            self.outputs_kg[kind] = self.outputs_kg.get(kind, 0.0) + (kg or 0.0)
        self.theoretical.add(accounting.get("theoretical_yield"))

    @property
    def fed_kg(self) -> float:
        return self.in_kg + self.generation_kg

    @property
    def yield_(self) -> float:
        product = self.outputs_kg.get(PRODUCT)
        return product / self.fed_kg if product is not None and self.fed_kg > 0 else math.nan

    @property
    def theoretical_yield(self) -> float | None:
        """The recipe's yield, where every window had the same one."""
        return next(iter(self.theoretical)) if len(self.theoretical) == 1 else None

    @property
    def known_loss_kg(self) -> float:
        return sum(self.outputs_kg.get(c, 0.0) for c in LOSS_CLASSES)

    @property
    def uncertainty_kg(self) -> float:
        return math.sqrt(self.variance)

    def body(self) -> dict[str, Any]:
        theory = self.theoretical_yield
        product = self.outputs_kg.get(PRODUCT)
        gap = theory * self.fed_kg - product if theory is not None and product is not None else None
        summed = self.windows > self.without_data
        amounts: dict[str, Any] = {
            "in_kg": self.in_kg,
            "out_kg": self.out_kg,
            "generation_kg": self.generation_kg,
            "consumption_kg": self.consumption_kg,
            "delta_inventory_kg": self.delta_inventory_kg,
            "outputs_kg": {c: self.outputs_kg[c] for c in OUTPUT_CLASSES if c in self.outputs_kg},
            "yield": _finite(self.yield_),
            "theoretical_yield": theory,
            "yield_gap_kg": gap,
            "known_loss_kg": self.known_loss_kg,
            "unaccounted_kg": self.imbalance_kg,
            "unaccounted_uncertainty_kg": self.uncertainty_kg,
        }
        if not summed:  # no window had data: nothing was measured, not zero
            amounts = {k: {} if k == "outputs_kg" else None for k in amounts}
        return {
            "node": self.node,
            "group": self.key,
            "first_window_start": self.start,
            "last_window_end": self.end,
            "windows": self.windows,
            "windows_without_data": self.without_data,
            "statuses": dict(sorted(self.statuses.items())),
            **amounts,
        }


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


def _time(text: str | None) -> float:
    if not text:
        return math.nan
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


@dataclass(frozen=True)
class Grouping:
    by: str  # batch | shift | day | campaign
    shifts: tuple[tuple[int, int], ...] = ()  # local shift start times, sorted
    timezone: str = "UTC"
    prefix: int = 0  # campaign: the batch id's first characters; 0: less its last part

    def key(self, b: dict[str, Any]) -> str | None:
        """The group a window belongs to; None where it has none (no batch id)."""
        if self.by in ("batch", "campaign"):
            batch = b.get("batch")
            if not batch:
                return None
            if self.by == "batch":
                return str(batch)
            if b.get("campaign"):
                return str(b["campaign"])
            return batch[: self.prefix] if self.prefix else _LAST_PART.sub("", batch)
        start, end = _time(b.get("window_start")), _time(b.get("window_end"))
        middle = (start + end) / 2 if math.isfinite(start) else end
        if not math.isfinite(middle):
            return None
        zone = ZoneInfo(self.timezone)
        if self.by == "shift":
            began = previous_boundary(middle, self.shifts, self.timezone)
            return datetime.fromtimestamp(began, zone).strftime("%Y-%m-%d %H:%M")
        if self.shifts:
            began = previous_boundary(middle, self.shifts[:1], self.timezone)
        else:
            local = datetime.fromtimestamp(middle, zone)
            began = datetime(local.year, local.month, local.day, tzinfo=zone).timestamp()
        return datetime.fromtimestamp(began, zone).date().isoformat()


def latest(balances: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each window once, at its latest revision: a late entry's correction replaces the
    record of the same node and window (in the order they came)."""
    found: dict[tuple[str, str, str, str | None], dict[str, Any]] = {}
    for b in balances:
        key = (b["node"], b.get("window", ""), b.get("window_start") or "", b.get("window_end"))
        if key not in found or (b.get("revision") or 0) >= (found[key].get("revision") or 0):
            found[key] = b
    return list(found.values())


def summarize(
    balances: Iterable[dict[str, Any]], grouping: Grouping
) -> tuple[list[Group], list[str]]:
    """The groups, per node in the order met and by key in time order; and the nodes whose
    windows could not be summed (rolling: they overlap)."""
    groups: dict[tuple[str, str], Group] = {}
    overlapping: list[str] = []
    for b in balances:
        node = b["node"]
        if b.get("window") not in SUMMED:
            if node not in overlapping:
                overlapping.append(node)
            continue
        key = grouping.key(b)
        if key is None:
            continue
        group = groups.setdefault((node, key), Group(node, key))
        group.add(b)
    found = sorted(groups.values(), key=lambda g: (g.node, g.start))
    return found, [n for n in overlapping if not any(g.node == n for g in found)]
