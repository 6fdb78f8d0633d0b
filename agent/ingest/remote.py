"""A gateway's streams and inventories as its totals records tell them, for a balance upstream.

Each totals record gives, per stream, what it moved in a period (`period_start` to
`period_end`, the first and last good sample) and its running net total at the end
(`net_kg`); per inventory, the mass at its last reading. A stream's timeline is the chain of
those periods: a period starts where the one before ended (`period_start` equal to the
previous `period_end`), or, when no good sample came in it, the record says so
(`period_start` null, `period_end` unchanged) and the time up to the record is unknown.

A record missing from the chain (not yet delivered: the gateway's outbox or an ingest's
session still holds it) shows as a break: the timeline stops before it and a balance waits,
so nothing is judged on missing data. Once later records have been in for
`wait_for_missing` of gateway time, the break is taken as lost and its span as unknown; it
is told (a `Gap`), so that a record still arriving after that can re-open what was judged.

Times are the gateway's wall clock, in seconds since 1970.
"""

from __future__ import annotations

import bisect
import itertools
import math
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

# A stretch of a stream's period with this much of it in gaps (the gateway's gap_s) is not
# known well enough to interpolate in: the balance sees it as missing.
MAX_GAP_SHARE = 0.1


@dataclass(frozen=True, slots=True)
class TotalsRow:
    """One totals record of one gateway, as read from the database."""

    epoch: str
    seq: int
    created: float
    streams: list[Any]
    inventories: list[Any]


@dataclass(slots=True)
class _Span:
    t0: float
    t1: float
    c0: float  # cumulative net kg at t0 (NaN: unknown)
    c1: float


def _time(value: Any) -> float | None:
    if not isinstance(value, str):
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        return None
    # Without an offset it is UTC, as the agent writes it (never the ingest's local time).
    return (moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)).timestamp()


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


@dataclass
class RemoteStream:
    """A gateway's stream: `net_at` interpolates its running total within known periods."""

    name: str
    accuracy: float = math.nan
    spans: list[_Span] = field(default_factory=list)
    ends: list[float] = field(default_factory=list)
    waiting: str = ""  # what the timeline waits for, when it stops at a break
    # Continuity across the gateway's epochs: the running total restarts with a new epoch,
    # so each epoch's totals are shifted to go on from where the one before ended. Kept for
    # the life of the evaluator: a later pass that no longer reads the older epoch keeps
    # the same shift.
    offsets: dict[str, float] = field(default_factory=dict)
    # A gateway's totals records do not carry its meters' alarms: its own balance counted them.
    meter_alarms: tuple[str, ...] = ()

    @property
    def first_known(self) -> float:
        known = [s.t0 for s in self.spans if not math.isnan(s.c0)]
        return known[0] if known else math.inf

    @property
    def known_until(self) -> float:
        return self.ends[-1] if self.ends else -math.inf

    def net_at(self, mono: float) -> float | None:
        i = bisect.bisect_left(self.ends, mono)
        if i >= len(self.spans):
            return None
        span = self.spans[i]
        if mono < span.t0 or math.isnan(span.c0):
            return None
        if span.t1 <= span.t0:
            return span.c1
        return span.c0 + (span.c1 - span.c0) * (mono - span.t0) / (span.t1 - span.t0)

    def _add(self, t0: float, t1: float, c0: float, c1: float) -> None:
        end = self.known_until
        if t1 <= end:
            return
        if t0 < end:  # overlaps time already said unknown: keep only what is after it
            if not math.isnan(c0) and t1 > t0:
                c0 += (c1 - c0) * (end - t0) / (t1 - t0)
            t0 = end
        elif t0 > end and self.spans:
            self.spans.append(_Span(end, t0, math.nan, math.nan))
            self.ends.append(t0)
        self.spans.append(_Span(t0, t1, c0, c1))
        self.ends.append(t1)


@dataclass
class RemoteInventory:
    """A gateway's inventory: its readings, interpolated between neighbouring records."""

    name: str
    sigma: float = math.nan
    readings: list[tuple[float, float | None]] = field(default_factory=list)  # (at, kg)
    max_spacing: float = math.inf  # readings farther apart are not interpolated between

    @property
    def first_known(self) -> float:
        known = [at for at, kg in self.readings if kg is not None]
        return known[0] if known else math.inf

    @property
    def known_until(self) -> float:
        return self.readings[-1][0] if self.readings else -math.inf

    def mass_at(self, mono: float) -> float | None:
        i = bisect.bisect_right(self.readings, mono, key=lambda r: r[0]) - 1
        if i < 0:
            return None
        at, kg = self.readings[i]
        if kg is None:
            return None
        if at == mono:
            return kg
        if i + 1 >= len(self.readings):
            return None
        at1, kg1 = self.readings[i + 1]
        if kg1 is None or at1 - at > self.max_spacing:
            return None
        return kg + (kg1 - kg) * (mono - at) / (at1 - at)


@dataclass(frozen=True, slots=True)
class Gap:
    """Totals records between two sequence numbers of one epoch, taken as lost: what was
    known of the gateway's streams ended at `start`, and began again with the record after
    (`after_seq` .. `before_seq`, both records that are here)."""

    epoch: str
    after_seq: int
    before_seq: int
    start: float
    end: float


@dataclass
class _Chain:
    """Where one stream's timeline stands while the records are read in order."""

    epoch: str = ""
    seq: int = 0
    period_end: Any = None  # the previous record's period_end, as the gateway wrote it
    broken: bool = False


def load_gateway(
    gateway: str,
    rows: list[TotalsRow],
    streams: dict[str, RemoteStream],
    inventories: dict[str, RemoteInventory],
    *,
    wait_for_missing: float,
    newest: float | None = None,
    gaps: set[Gap] | None = None,
) -> None:
    """Rebuild the timelines of `gateway`'s `streams` and `inventories` (keyed by their own
    names) from its totals records, read in order: epochs as they began, seq within each.
    The breaks taken as lost are added to `gaps`."""
    first_of: dict[str, float] = {}
    for row in rows:
        first_of[row.epoch] = min(first_of.get(row.epoch, math.inf), row.created)
    rows = sorted(rows, key=lambda r: (first_of[r.epoch], r.epoch, r.seq))
    if newest is None:  # the newest totals of the gateway, read or not
        newest = max((r.created for r in rows), default=-math.inf)
    for stream in streams.values():
        stream.spans, stream.ends, stream.waiting = [], [], ""
    for inventory in inventories.values():
        inventory.readings = []
    if not rows:
        for stream in streams.values():
            stream.waiting = f"no totals of {gateway} yet"
        return
    chains = {name: _Chain() for name in streams}
    for row in rows:
        for entry in row.streams:
            # Whatever a record holds (it came over the network): a name is text or no name.
            name = entry.get("stream") if isinstance(entry, dict) else None
            if isinstance(name, str) and name in streams:
                gap = _step(
                    gateway, streams[name], chains[name], row, entry, newest, wait_for_missing
                )
                if gap is not None and gaps is not None:
                    gaps.add(gap)
        for entry in row.inventories:
            name = entry.get("inventory") if isinstance(entry, dict) else None
            if isinstance(name, str) and name in inventories:
                _reading(inventories[name], row, entry)
    for name, stream in streams.items():
        if not stream.spans and not stream.waiting:
            stream.waiting = f"{gateway}'s totals name no stream '{name}'"
    spacing = sorted(b.created - a.created for a, b in itertools.pairwise(rows))
    typical = spacing[len(spacing) // 2] if spacing else math.inf
    for inventory in inventories.values():
        inventory.max_spacing = 3.0 * typical


def _step(
    gateway: str,
    stream: RemoteStream,
    chain: _Chain,
    row: TotalsRow,
    entry: dict[str, Any],
    newest: float,
    wait: float,
) -> Gap | None:
    """Add the record's period to the stream's timeline; the gap taken as lost before it,
    if there is one."""
    if chain.broken:
        return None
    start_text, end_text = entry.get("period_start"), entry.get("period_end")
    gap = None
    if chain.epoch == row.epoch and chain.seq:
        linked = (start_text if start_text is not None else end_text) == chain.period_end
        if not linked:
            if newest - row.created <= wait:
                chain.broken = True
                stream.waiting = (
                    f"{gateway}'s totals between seq {chain.seq} and {row.seq} (epoch "
                    f"{row.epoch}) are not all here yet"
                )
                return None
            # Past the wait, what the missing record covered is missing data, not zero.
            gap = Gap(row.epoch, chain.seq, row.seq, stream.known_until, row.created)
    mass, net = _number(entry.get("mass_kg")), _number(entry.get("net_kg"))
    start, end = _time(start_text), _time(end_text)
    gap_s = _number(entry.get("gap_s"))
    accuracy = _number(entry.get("accuracy"))
    if accuracy is not None:
        stream.accuracy = accuracy
    fresh = chain.epoch != row.epoch and row.epoch not in stream.offsets
    if fresh and mass is not None and net is not None:
        before = next((s.c1 for s in reversed(stream.spans) if not math.isnan(s.c1)), None)
        stream.offsets[row.epoch] = (before - (net - mass)) if before is not None else 0.0
    chain.epoch, chain.seq, chain.period_end = row.epoch, row.seq, end_text
    offset = stream.offsets.get(row.epoch, 0.0)
    if start is None or end is None or mass is None or net is None or accuracy is None:
        # Nothing measured in the period, or a gateway too old to send net_kg and accuracy:
        # unknown up to the record.
        if net is None or accuracy is None:
            stream.waiting = f"{gateway}'s totals carry no net_kg or accuracy (older massgate?)"
        stream._add(stream.known_until, row.created, math.nan, math.nan)
        return gap
    sound = gap_s is not None and gap_s <= MAX_GAP_SHARE * max(end - start, 0.0)
    c1 = net + offset if sound else math.nan
    stream._add(start, end, c1 - mass if sound else math.nan, c1)
    return gap


def _reading(inventory: RemoteInventory, row: TotalsRow, entry: dict[str, Any]) -> None:
    sigma = _number(entry.get("sigma_kg"))
    if sigma is not None:
        inventory.sigma = sigma
    kg, at = _number(entry.get("mass_kg")), _time(entry.get("at"))
    when = at if at is not None and kg is not None else row.created
    if inventory.readings and when <= inventory.readings[-1][0]:
        if when == inventory.readings[-1][0] and kg is None:
            inventory.readings[-1] = (when, None)
        return  # the same reading again (nothing newer came), or a clock stepped back
    inventory.readings.append((when, kg))
