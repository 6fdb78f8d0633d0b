"""Quantities no meter reads, entered by hand or by an MES (`massgate enter`), and the running
totals of metered streams kept for comparing entries with them.

A manual stream is its entries: each one a quantity at the time it happened (a weighbridge
ticket's, a dip reading's), whenever it was entered. A balance takes the entries whose time
falls inside its window, so an entry made late lands in the window it belongs to (a closed
one is corrected: balance.nodes). A metered stream with compare_entries keeps its running
total for 12 h, so that a ticket for a delivery can be held against what its meter measured
between the delivery's start and end.
"""

from __future__ import annotations

import bisect
import math
from array import array
from dataclasses import asdict, dataclass
from typing import Any

from ..config import ManualStreamConfig

KEEP_ENTRIES = 35 * 86400.0  # s: entries older than this are in the records, not in memory
KEEP_HISTORY = 12 * 3600.0  # s of running total a compared stream keeps
SIGNIFICANT = 2.576  # |z| beyond this is a difference at the 99 % level


@dataclass(frozen=True, slots=True)
class Entry:
    stream: str
    kg: float
    wall: float  # when it happened
    uncertainty: float  # kg, the ± of 95 % (2σ), like a meter's accuracy
    by: str
    ticket: str
    entered: float  # when it was entered


class ManualStream:
    """A stream fed by entries only (the Metered protocol of a balance, plus `between`)."""

    def __init__(self, config: ManualStreamConfig, saved: dict[str, Any] | None = None) -> None:
        self.config = config
        self.entries: list[Entry] = []  # by time
        self.walls: list[float] = []  # their times, for bisect
        self.total = 0.0  # kg of every entry ever made, kept across restarts
        if saved is not None:
            self.total = float(saved.get("total", 0.0))
            for item in saved.get("entries", []):
                self.entries.append(Entry(**item))
            self.entries.sort(key=lambda e: e.wall)
        self.walls = [e.wall for e in self.entries]

    @property
    def accuracy(self) -> float:
        return self.config.accuracy

    @property
    def meter_alarms(self) -> tuple[str, ...]:
        return ()

    def net_at(self, mono: float) -> float | None:
        return self.total  # always known; a balance takes `between` for its kilograms

    def between(self, start_wall: float, end_wall: float) -> tuple[float, float]:
        """kg of the entries dated in (start, end], and the variance of their sum (kg²)."""
        first = bisect.bisect_right(self.walls, start_wall)
        last = bisect.bisect_right(self.walls, end_wall)
        chosen = self.entries[first:last]
        return sum(e.kg for e in chosen), sum((e.uncertainty / 2) ** 2 for e in chosen)

    def ticket(self, ticket: str) -> Entry | None:
        return next((e for e in self.entries if ticket and e.ticket == ticket), None)

    def add(self, entry: Entry, now: float) -> None:
        at = bisect.bisect_right(self.walls, entry.wall)
        self.entries.insert(at, entry)
        self.walls.insert(at, entry.wall)
        self.total += entry.kg
        old = bisect.bisect_left(self.walls, now - KEEP_ENTRIES)
        del self.entries[:old], self.walls[:old]

    def saved(self) -> dict[str, Any]:
        return {"total": self.total, "entries": [asdict(e) for e in self.entries]}


class Tickets:
    """The tickets held against a meter (a compared stream's entries): each taken once."""

    def __init__(self, saved: dict[str, Any] | None = None) -> None:
        self.entries = [Entry(**item) for item in (saved or {}).get("entries", [])]

    def ticket(self, ticket: str) -> Entry | None:
        return next((e for e in self.entries if ticket and e.ticket == ticket), None)

    def add(self, entry: Entry, now: float) -> None:
        self.entries = [e for e in self.entries if e.wall >= now - KEEP_ENTRIES]
        self.entries.append(entry)

    def saved(self) -> dict[str, Any]:
        return {"entries": [asdict(e) for e in self.entries]}


class History:
    """A metered stream's running total (net kg) against wall time, for the last 12 h."""

    def __init__(self) -> None:
        self.walls = array("d")
        self.nets = array("d")

    def add(self, wall: float, net: float) -> None:
        if not math.isfinite(net) or (self.walls and wall <= self.walls[-1]):
            return  # a wall clock stepped back: the older points stay the reference
        self.walls.append(wall)
        self.nets.append(net)
        if wall - self.walls[0] > 2 * KEEP_HISTORY:  # trim now and then, not every cycle
            cut = bisect.bisect_left(self.walls, wall - KEEP_HISTORY)
            del self.walls[:cut]
            del self.nets[:cut]

    def at(self, wall: float) -> float | None:
        """The running total at `wall`, between the two points around it; None outside."""
        if not self.walls or not self.walls[0] <= wall <= self.walls[-1]:
            return None
        i = bisect.bisect_left(self.walls, wall)
        if self.walls[i] == wall:
            return self.nets[i]
        t0, t1 = self.walls[i - 1], self.walls[i]
        return self.nets[i - 1] + (self.nets[i] - self.nets[i - 1]) * (wall - t0) / (t1 - t0)

    @property
    def span(self) -> tuple[float, float] | None:
        return (self.walls[0], self.walls[-1]) if self.walls else None


def comparison(
    entered: float, entry_uncertainty: float, metered: float, accuracy: float
) -> dict[str, Any]:
    """An entry against the meter over the same delivery: the difference and how many
    standard uncertainties of the two together it is."""
    difference = entered - metered
    sigma = math.hypot(accuracy / 2 * abs(metered), entry_uncertainty / 2)
    z = difference / sigma if sigma > 0 else math.inf if difference else 0.0
    return {
        "metered_kg": metered,
        "difference_kg": difference,
        "relative": difference / metered if metered else None,
        "uncertainty_kg": sigma,
        "z": z if math.isfinite(z) else None,
        "significant": abs(z) > SIGNIFICANT,
    }
