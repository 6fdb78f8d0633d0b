"""Mass balance of a node over its windows; its alarm (alarm.py) and drift (drift.py).

    imbalance = in + generation − out − consumption − Δinventory

is judged against tolerance = fixed + relative · throughput + k · σ, where σ propagates each
meter's rated accuracy (taken as 2σ) over what that meter moved in the window, and each
inventory's reading accuracy at both ends. Windows are rolling, calendar-aligned (shift
boundaries in a time zone, daylight saving included) or batches delimited by a tag.

A window with too little good data is inconclusive: it never raises an alarm, and it
breaks the alarm's on-delay run.
"""

from __future__ import annotations

import logging
import math
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace

from ..config import BATCH, CALENDAR, PRODUCT, NodeConfig, NodeTerms
from ..core.records import utc
from .alarm import Alarm
from .drift import Drift
from .terms import (
    ALARM,
    CONS,
    GEN,
    IN,
    INCONCLUSIVE,
    NO_TERMS,
    OK,
    OUT,
    WARNING,
    AlarmEvent,
    Entered,
    Metered,
    Snapshot,
    Terms,
    Weighed,
    WindowResult,
)
from .windows import batch_label, next_boundary, previous_boundary

log = logging.getLogger(__name__)

KEEP_CLOSED = 200  # closed windows a late entry can still correct, per node


@dataclass(frozen=True, slots=True)
class Closed:
    data_start: Snapshot
    data_end: Snapshot
    result: WindowResult


class NodeBalance:
    """Snapshots a node's terms every cycle; closes and judges its windows; watches drift."""

    def __init__(
        self,
        config: NodeConfig,
        terms: NodeTerms,
        streams: Mapping[str, Metered],
        gauges: Mapping[str, Weighed],
    ) -> None:
        self.config = config
        self.groups = (terms.inputs, terms.outputs, terms.generation, terms.consumption)
        self.streams = [streams[name] for group in self.groups for name in group]
        self.group_of = [g for g, group in enumerate(self.groups) for _ in group]
        classes = dict(terms.output_classes)
        self.class_of = [
            classes.get(name, PRODUCT) if g == OUT else ""
            for g, group in enumerate(self.groups)
            for name in group
        ]
        self.classes = tuple(dict.fromkeys(c for c in self.class_of if c))
        self.inventories = [gauges[name] for name in terms.inventories]
        # Which terms are entries, once: a runtime Protocol check costs microseconds a call.
        self.entered = [isinstance(s, Entered) for s in self.streams]
        self.lumpy = any(self.entered)
        self.snapshots: deque[Snapshot] = deque()
        self.cycles = 0
        self.complete = 0
        self.last: WindowResult | None = None
        # Calendar and batch windows judged lately, which a late entry can correct.
        self.closed: deque[Closed] = deque(maxlen=KEEP_CLOSED)
        self.last_ok: Snapshot | None = None
        self.alarm = Alarm(config)
        self.drift = Drift(config)
        # Window state: the open calendar window or batch.
        self._open: Snapshot | None = None  # where the window began (its cycle counters)
        self._open_data: Snapshot | None = None  # its first snapshot with every term known
        self._open_wall = math.nan  # the calendar boundary it began at
        self._close_at = math.nan
        self._batch: float | None = None  # the running batch's tag value
        self._label: str | None = None  # the running batch's id
        self._campaign: str | None = None  # the running batch's campaign
        # Batches by command (massgate batch start|end): what the next cycle applies, in
        # order, and the batch as the commands given so far leave it.
        self._commands: list[tuple[str | None, str | None, str]] = []  # (batch, campaign, by)
        self._commanded: str | None = None
        self.started_by = ""
        self._ended_by = ""
        self._next_evaluation: float | None = None

    @property
    def alarm_active(self) -> bool:
        return self.alarm.active

    # --- snapshots ------------------------------------------------------------------------

    def _snapshot(self, mono: float, wall: float) -> Snapshot:
        flows: list[float] | None = []
        for stream in self.streams:
            value = stream.net_at(mono)
            if value is None or flows is None:
                flows = None
            else:
                flows.append(value)
        inventory: float | None = 0.0
        for gauge in self.inventories:
            mass = gauge.mass_at(mono)
            inventory = None if mass is None or inventory is None else inventory + mass
        self.cycles += 1
        ok = flows is not None and inventory is not None
        # A cycle counts towards coverage only with every term known and no meter of the
        # node saying its own value is in doubt (an uncertain alarm's kilograms are counted,
        # but a window mostly under one cannot be judged).
        self.complete += ok and not any(stream.meter_alarms for stream in self.streams)
        snap = Snapshot(
            mono,
            wall,
            tuple(flows) if flows is not None else None,
            inventory,
            self.cycles,
            self.complete,
        )
        if ok:
            self.last_ok = snap
        return snap

    def terms(self, a: Snapshot, b: Snapshot) -> Terms:
        assert a.flows is not None
        assert b.flows is not None
        assert a.inventory is not None
        assert b.inventory is not None
        sums = [0.0, 0.0, 0.0, 0.0]
        by_class = dict.fromkeys(self.classes, 0.0)
        variance = 0.0
        for i, stream in enumerate(self.streams):
            if self.entered[i]:
                moved, entered = stream.between(a.wall, b.wall)  # type: ignore[attr-defined]
                variance += entered
            else:
                moved = b.flows[i] - a.flows[i]
                variance += (stream.accuracy / 2.0 * moved) ** 2
            sums[self.group_of[i]] += moved
            if self.class_of[i]:
                by_class[self.class_of[i]] += moved
        for gauge in self.inventories:
            variance += 2.0 * gauge.sigma**2  # one reading at each end
        return Terms(
            sums[IN], sums[OUT], sums[GEN], sums[CONS], a.inventory, b.inventory,
            math.sqrt(variance), tuple(by_class.items()),
        )  # fmt: skip

    # --- the cycle ------------------------------------------------------------------------

    def tick(
        self, mono: float, wall: float, tag: Callable[[str], float] | None = None
    ) -> tuple[list[WindowResult], list[AlarmEvent]]:
        """Take this cycle's snapshot; return the windows that closed and the events."""
        snap = self._snapshot(mono, wall)
        kind = self.config.window_kind
        judged: list[tuple[WindowResult, list[AlarmEvent]]] = []
        if kind == CALENDAR:
            judged += self._calendar(snap)
        elif kind == BATCH:
            if self.config.batch_tag is None:
                judged += self._command_step(snap)
            else:
                judged += self._batch_step(snap, tag(self.config.batch_tag) if tag else math.nan)
            if self._label is not None and self._campaign is None and self.config.campaign_tag:
                # The campaign the batch began in: its first good reading of the tag.
                campaign = tag(self.config.campaign_tag) if tag else math.nan
                self._campaign = batch_label(campaign) if math.isfinite(campaign) else None
        else:
            # Kept at a fraction of the evaluation interval, not every cycle: an 8 h window
            # would otherwise hold 115,000 snapshots per node on a Raspberry Pi. The cycle
            # counters in each snapshot keep the coverage exact.
            spacing = min(self.config.evaluate_every, self.config.window) / 20
            if not self.snapshots or mono - self.snapshots[-1].mono >= spacing:
                self.snapshots.append(snap)
            horizon = mono - self.config.window * 1.2 - self.config.evaluate_every
            while len(self.snapshots) > 2 and self.snapshots[1].mono < horizon:
                self.snapshots.popleft()
        if self._open is not None and self._open_data is None and snap.ok:
            self._open_data = snap
        events = [e for _, found in judged for e in found]
        if self._next_evaluation is None:
            self._next_evaluation = mono + self.config.evaluate_every
            self.drift.begin(snap)
        elif mono >= self._next_evaluation:
            self._next_evaluation += self.config.evaluate_every
            if self._next_evaluation <= mono:  # fell behind; do not evaluate in a burst
                self._next_evaluation = mono + self.config.evaluate_every
            if kind not in (CALENDAR, BATCH):
                result, found = self._rolling(snap)
                judged.append((result, found))
                events += found
            # A manual stream's entries come in lumps: no interval of its node is steady.
            drift = (
                None
                if self.lumpy
                else self.drift.step(
                    snap,
                    self.terms,
                    status=self.last.status if self.last else OK,
                    alarm_active=self.alarm.active,
                )
            )
            if drift is not None:
                events.append(drift)
        return [r for r, _ in judged], events

    def _rolling(self, end: Snapshot) -> tuple[WindowResult, list[AlarmEvent]]:
        start_mono = end.mono - self.config.window
        first = next((s for s in self.snapshots if s.mono >= start_mono - 1e-6), end)
        data = next((s for s in self.snapshots if s.mono >= first.mono and s.ok), None)
        return self._judge(first, data, end, self.config.window, "")

    def _calendar(self, snap: Snapshot) -> list[tuple[WindowResult, list[AlarmEvent]]]:
        cfg = self.config
        if self._open is None:
            self._open, self._open_data = snap, snap if snap.ok else None
            self._open_wall = previous_boundary(snap.wall, cfg.calendar, cfg.timezone)
            self._close_at = next_boundary(snap.wall, cfg.calendar, cfg.timezone)
            return []
        if snap.wall < self._close_at:
            return []
        nominal = self._close_at - self._open_wall
        judged = self._judge(self._open, self._open_data, snap, nominal, "")
        self._open, self._open_data = snap, snap if snap.ok else None
        self._open_wall = self._close_at
        self._close_at = next_boundary(snap.wall, cfg.calendar, cfg.timezone)
        return [judged]

    def _batch_step(
        self, snap: Snapshot, value: float
    ) -> list[tuple[WindowResult, list[AlarmEvent]]]:
        if not math.isfinite(value) or value == self._batch or (self._batch is None and value == 0):
            return []  # an unreadable tag changes nothing: the batch runs on
        self._batch = value if value != 0 else None
        return self._switch(snap, batch_label(value) if value != 0 else None, None)

    def _command_step(self, snap: Snapshot) -> list[tuple[WindowResult, list[AlarmEvent]]]:
        judged = []
        for batch, campaign, by in self._commands:
            self._ended_by = by if batch is None else ""
            judged += self._switch(snap, batch, campaign)
            self.started_by = by if batch is not None else ""
        self._commands.clear()
        return judged

    def _switch(
        self, snap: Snapshot, label: str | None, campaign: str | None
    ) -> list[tuple[WindowResult, list[AlarmEvent]]]:
        """The running batch (if any) ends here; `label` (if any) begins."""
        judged = []
        if self._label is not None and self._open is not None:
            span = snap.mono - self._open.mono
            judged.append(self._judge(self._open, self._open_data, snap, span, self._label))
        self._label, self._campaign = label, campaign
        if label is not None:
            self._open, self._open_data = snap, snap if snap.ok else None
        else:
            self._open = self._open_data = None
        return judged

    @property
    def batch(self) -> str | None:
        """The batch running, as the commands given so far leave it (or its tag says)."""
        return self._commanded if self.config.batch_tag is None else self._label

    def command(self, batch: str | None, *, campaign: str | None = None, by: str = "") -> None:
        """Start `batch`, or end the running one (None), with the next cycle.

        Raises ValueError when the node's batches follow a tag, when a batch is started while
        one runs, or ended while none does.
        """
        cfg = self.config
        if cfg.window_kind != BATCH:
            raise ValueError(f"node {cfg.name} has a {cfg.window_kind} window, not batches")
        if cfg.batch_tag is not None:
            raise ValueError(f"node {cfg.name}'s batches follow its tag {cfg.batch_tag}")
        if batch is not None and self._commanded is not None:
            raise ValueError(f"batch {self._commanded} is running on node {cfg.name}: end it first")
        if batch is None and self._commanded is None:
            raise ValueError(f"no batch is running on node {cfg.name}")
        self._commands.append((batch, campaign, by))
        self._commanded = batch

    def correct(self, wall: float) -> list[WindowResult]:
        """The closed windows an entry dated `wall` falls in, judged again with it (a late
        weighbridge ticket): their amounts and status; the alarm is not run again."""
        found = []
        for i, closed in enumerate(self.closed):
            if not closed.data_start.wall < wall <= closed.data_end.wall:
                continue
            old = closed.result
            terms = self.terms(closed.data_start, closed.data_end)
            tolerance = self._tolerance(terms)
            status = old.status
            if status in (OK, WARNING):  # an alarm raised stays raised: it is not run again
                status = WARNING if abs(terms.imbalance) > tolerance else OK
            result = replace(
                old, terms=terms, tolerance=tolerance, status=status, revision=old.revision + 1
            )
            self.closed[i] = Closed(closed.data_start, closed.data_end, result)
            found.append(result)
        return found

    def _tolerance(self, terms: Terms) -> float:
        cfg = self.config
        return (
            cfg.tolerance_fixed
            + cfg.tolerance_relative * terms.throughput
            + cfg.tolerance_sigma * terms.sigma
        )

    def _judge(
        self,
        first: Snapshot,
        data_start: Snapshot | None,
        end: Snapshot,
        nominal: float,
        label: str,
    ) -> tuple[WindowResult, list[AlarmEvent]]:
        cfg = self.config
        data_end = end if end.ok else self.last_ok
        cycles = end.cycles - first.cycles
        usable = (
            data_start is not None
            and data_end is not None
            and data_end.mono > data_start.mono
            and cycles > 0
        )
        if usable:
            assert data_start is not None
            assert data_end is not None
            terms = self.terms(data_start, data_end)
            complete = (end.complete - first.complete) / cycles
            span = data_end.mono - data_start.mono
            coverage = complete * (min(span / nominal, 1.0) if nominal > 0 else 1.0)
            if cfg.window_kind == CALENDAR and span > nominal + max(60.0, 0.01 * nominal):
                # The shift by the wall clock, longer by the monotonic one: the wall clock
                # stepped back within it. Its kilograms are not the shift's: inconclusive.
                log.warning(
                    "node %s: the window ending %s ran %.0f s by the monotonic clock, %.0f s "
                    "by the wall clock (it stepped back?): inconclusive",
                    cfg.name,
                    utc(end.wall),
                    span,
                    nominal,
                    extra={"node": cfg.name},
                )
                coverage = 0.0
        else:
            terms = replace(NO_TERMS, by_class=tuple((c, math.nan) for c in self.classes))
            coverage = 0.0
        tolerance = self._tolerance(terms)
        conclusive = usable and coverage >= cfg.min_coverage and math.isfinite(terms.imbalance)
        events = self.alarm.step(
            end.mono, end.wall, terms.imbalance, tolerance, conclusive=conclusive
        )
        exceeded = conclusive and abs(terms.imbalance) > tolerance
        if not conclusive:
            status = INCONCLUSIVE
        elif self.alarm.active:
            status = ALARM
        else:
            status = WARNING if exceeded else OK
        result = WindowResult(
            node=cfg.name,
            window=cfg.window_kind,
            label=label,
            start_wall=first.wall,
            end_wall=end.wall,
            terms=terms,
            tolerance=tolerance,
            coverage=coverage,
            status=status,
            alarm_active=self.alarm.active,
            cusum_high=self.drift.cusum_high,
            cusum_low=self.drift.cusum_low,
            theoretical_yield=cfg.theoretical_yield,
            campaign=self._campaign or "" if label else "",
            started_by=self.started_by if label else "",
            ended_by=self._ended_by if label else "",
        )
        self.last = result
        if cfg.window_kind in (CALENDAR, BATCH) and usable:
            assert data_start is not None
            assert data_end is not None
            self.closed.append(Closed(data_start, data_end, result))
        return result, [
            AlarmEvent(cfg.name, kind, end.mono, end.wall, since_mono, since_wall, result, hint)
            for kind, since_mono, since_wall, hint in events
        ]
