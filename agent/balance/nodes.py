"""Mass balance of a node over its windows, the alarm on it, and drift of its residual.

    imbalance = in + generation − out − consumption − Δinventory

is judged against tolerance = fixed + relative · throughput + k · σ, where σ propagates each
meter's rated accuracy (taken as 2σ) over what that meter moved in the window, and each
inventory's reading accuracy at both ends. Windows are rolling, calendar-aligned (shift
boundaries in a time zone, daylight saving included) or batches delimited by a tag.

The alarm is a state machine: raised when the imbalance stays outside tolerance for
`persistence` (on-delay), cleared when it stays inside (1 − deadband) · tolerance for
`clear_after` (off-delay), reminded every `re_alarm` while active. A window with too little
good data is inconclusive: it never raises an alarm, and it breaks the on-delay's run.

Drift: a two-sided CUSUM on the imbalance of each `evaluate_every` interval divided by its σ
catches a residual that creeps up long before it crosses the window's tolerance. The
intervals do not overlap, so consecutive values are independent apart from the inventory
reading they share, and the CUSUM's run lengths hold.
"""

from __future__ import annotations

import logging
import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

from ..config import BATCH, CALENDAR, NodeConfig, NodeTerms
from ..core.records import utc
from ..totalize.totalizer import InventoryGauge, StreamTotal

log = logging.getLogger(__name__)

OK = "ok"
WARNING = "warning"  # outside tolerance, not yet for the persistence time
ALARM = "alarm"
INCONCLUSIVE = "inconclusive"

RAISED, CLEARED, REPEATED, DRIFT = "raised", "cleared", "repeated", "drift"

IN, OUT, GEN, CONS = 0, 1, 2, 3
DRIFT_LEARN = 30  # intervals that set the drift baseline before the CUSUM runs
DRIFT_MEMORY = 86400.0  # s over which the baseline follows the plant afterwards


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


def _hint(imbalance: float) -> str:
    if imbalance > 0:
        return (
            "mass is missing: a leak or an unmetered outlet, an input meter reading high, "
            "or an output meter reading low"
        )
    return (
        "more mass than came in: an unmetered inlet, an input meter reading low, "
        "or an output meter reading high"
    )


def next_boundary(wall: float, times: tuple[tuple[int, int], ...], zone: str) -> float:
    """The first calendar boundary after `wall`: a local time of day in `zone`, as UTC epoch.

    Local times are resolved per day, so a shift that spans a daylight-saving change is an
    hour shorter or longer, as the plant's clocks say; a local time that does not exist that
    day (spring forward) falls an hour later, as the wall clock shows it.
    """
    tz = ZoneInfo(zone)
    today = datetime.fromtimestamp(wall, tz).date()
    best = math.inf
    for offset in (-1, 0, 1, 2):
        day = today + timedelta(days=offset)
        for hour, minute in times:
            at = datetime(day.year, day.month, day.day, hour, minute, tzinfo=tz).timestamp()
            if wall < at < best:
                best = at
    return best


def previous_boundary(wall: float, times: tuple[tuple[int, int], ...], zone: str) -> float:
    tz = ZoneInfo(zone)
    today = datetime.fromtimestamp(wall, tz).date()
    best = -math.inf
    for offset in (-2, -1, 0, 1):
        day = today + timedelta(days=offset)
        for hour, minute in times:
            at = datetime(day.year, day.month, day.day, hour, minute, tzinfo=tz).timestamp()
            if best < at <= wall:
                best = at
    return best


class NodeBalance:
    """Snapshots a node's terms every cycle; closes and judges its windows; watches drift."""

    def __init__(
        self,
        config: NodeConfig,
        terms: NodeTerms,
        streams: dict[str, StreamTotal],
        gauges: dict[str, InventoryGauge],
    ) -> None:
        self.config = config
        self.groups = (terms.inputs, terms.outputs, terms.generation, terms.consumption)
        self.streams = [streams[name] for group in self.groups for name in group]
        self.group_of = [g for g, group in enumerate(self.groups) for _ in group]
        self.inventories = [gauges[name] for name in terms.inventories]
        self.snapshots: deque[Snapshot] = deque()
        self.cycles = 0
        self.complete = 0
        self.last: WindowResult | None = None
        self.last_ok: Snapshot | None = None
        # Alarm state.
        self.alarm_active = False
        self._exceeded_since: tuple[float, float] | None = None
        self._within_since: float | None = None
        self._announced: float = 0.0
        # Window state: the open calendar window or batch.
        self._open: Snapshot | None = None  # where the window began (its cycle counters)
        self._open_data: Snapshot | None = None  # its first snapshot with every term known
        self._open_wall = math.nan  # the calendar boundary it began at
        self._close_at = math.nan
        self._batch: float | None = None  # the running batch's tag value
        self._next_evaluation: float | None = None
        # Drift state.
        self.cusum_high = 0.0
        self.cusum_low = 0.0
        self._drift_from: Snapshot | None = None
        self._drift_started: tuple[float, float] | None = None
        self._drift_mass = 0.0
        self._drift_time = 0.0
        self._z_count = 0
        self._drifting: int | None = None  # +1 / −1 while a drift episode lasts
        self._z_mean = 0.0
        self._z_var = 0.0
        self._rate_mean = 0.0

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
        self.complete += ok
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
        variance = 0.0
        for i, stream in enumerate(self.streams):
            moved = b.flows[i] - a.flows[i]
            sums[self.group_of[i]] += moved
            variance += (stream.config.accuracy / 2.0 * moved) ** 2
        for gauge in self.inventories:
            variance += 2.0 * gauge.sigma**2  # one reading at each end
        return Terms(
            sums[IN], sums[OUT], sums[GEN], sums[CONS], a.inventory, b.inventory,
            math.sqrt(variance),
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
            value = tag(self.config.batch_tag) if tag and self.config.batch_tag else math.nan
            judged += self._batch_step(snap, value)
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
            self._drift_from = snap if snap.ok else None
        elif mono >= self._next_evaluation:
            self._next_evaluation += self.config.evaluate_every
            if self._next_evaluation <= mono:  # fell behind; do not evaluate in a burst
                self._next_evaluation = mono + self.config.evaluate_every
            if kind not in (CALENDAR, BATCH):
                result, found = self._rolling(snap)
                judged.append((result, found))
                events += found
            drift = self._drift(snap)
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
        judged = []
        if self._batch is not None and self._open is not None:
            span = snap.mono - self._open.mono
            judged.append(self._judge(self._open, self._open_data, snap, span, _label(self._batch)))
        if value != 0:
            self._batch = value
            self._open, self._open_data = snap, snap if snap.ok else None
        else:
            self._batch = None
            self._open = self._open_data = None
        return judged

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
            terms, coverage = NO_TERMS, 0.0
        tolerance = (
            cfg.tolerance_fixed
            + cfg.tolerance_relative * terms.throughput
            + cfg.tolerance_sigma * terms.sigma
        )
        conclusive = usable and coverage >= cfg.min_coverage and math.isfinite(terms.imbalance)
        events = self._step(end, terms.imbalance, tolerance, conclusive=conclusive)
        exceeded = conclusive and abs(terms.imbalance) > tolerance
        if not conclusive:
            status = INCONCLUSIVE
        elif self.alarm_active:
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
            alarm_active=self.alarm_active,
            cusum_high=self.cusum_high,
            cusum_low=self.cusum_low,
        )
        self.last = result
        return result, [
            AlarmEvent(cfg.name, kind, end.mono, end.wall, since_mono, since_wall, result, hint)
            for kind, since_mono, since_wall, hint in events
        ]

    def _step(
        self, end: Snapshot, imbalance: float, tolerance: float, *, conclusive: bool
    ) -> list[tuple[str, float, float, str]]:
        """The on-delay / off-delay / deadband / re-alarm state machine."""
        cfg = self.config
        mono, wall = end.mono, end.wall
        if not conclusive:
            # Evidence must persist without a hole: a data gap restarts both delays.
            self._exceeded_since = None
            self._within_since = None
            return []
        if not self.alarm_active:
            if abs(imbalance) <= tolerance:
                self._exceeded_since = None
                return []
            if self._exceeded_since is None:
                self._exceeded_since = (mono, wall)
            since_mono, since_wall = self._exceeded_since
            if mono - since_mono >= cfg.persistence:
                self.alarm_active = True
                self._within_since = None
                self._announced = mono
                return [(RAISED, since_mono, since_wall, _hint(imbalance))]
            return []
        if abs(imbalance) > tolerance * (1.0 - cfg.deadband):
            self._within_since = None
            if cfg.re_alarm > 0 and mono - self._announced >= cfg.re_alarm:
                self._announced = mono
                assert self._exceeded_since is not None
                since_mono, since_wall = self._exceeded_since
                return [(REPEATED, since_mono, since_wall, "still outside tolerance")]
            return []
        if self._within_since is None:
            self._within_since = mono
        if mono - self._within_since >= cfg.clear_after:
            self.alarm_active = False
            since = self._within_since
            self._exceeded_since = None
            return [(CLEARED, since, wall - (mono - since), "back within tolerance")]
        return []

    def _drift(self, snap: Snapshot) -> AlarmEvent | None:
        """One CUSUM step on the interval since the last; an event when it crosses h.

        The statistic is the interval's imbalance over its propagated σ, less its own
        baseline: a steady offset between meters that are each within their rating is not a
        drift. The baseline is learned over the first DRIFT_LEARN intervals and then follows
        over about a day; the spread used is the larger of the rated one and the one observed,
        so a noisier instrument than its data sheet says does not raise drift after drift.
        """
        cfg = self.config
        start, self._drift_from = self._drift_from, snap if snap.ok else None
        if cfg.drift_h <= 0 or start is None or not snap.ok or snap.mono <= start.mono:
            return None
        terms = self.terms(start, snap)
        if not terms.sigma > 0 or not math.isfinite(terms.imbalance):
            return None
        dt = snap.mono - start.mono
        z_raw = terms.imbalance / terms.sigma
        rate = terms.imbalance / dt * 3600.0
        self._z_count += 1
        if self._z_count <= DRIFT_LEARN:  # plain running mean and variance
            step = 1.0 / self._z_count
        else:
            step = min(1.0, cfg.evaluate_every / DRIFT_MEMORY)
        delta = z_raw - self._z_mean
        self._z_mean += step * delta
        self._z_var = (1.0 - step) * (self._z_var + step * delta * delta)
        self._rate_mean += step * (rate - self._rate_mean)
        if self._z_count <= DRIFT_LEARN:
            return None
        z = (z_raw - self._z_mean) / max(1.0, math.sqrt(self._z_var))
        if self._drift_started is None:
            self._drift_started = (start.mono, start.wall)
        self._drift_mass += terms.imbalance
        self._drift_time += dt
        self.cusum_high = max(0.0, self.cusum_high + z - cfg.drift_k)
        self.cusum_low = max(0.0, self.cusum_low - z - cfg.drift_k)
        if self._drifting is not None:
            # One event per episode: it ends when the residual is back at its baseline. The
            # sum is capped so that a long episode does not take as long again to unwind.
            cap = 2.0 * cfg.drift_h
            self.cusum_high, self.cusum_low = min(self.cusum_high, cap), min(self.cusum_low, cap)
            if (self.cusum_high if self._drifting > 0 else self.cusum_low) == 0.0:
                self._drifting = None
                self._drift_started = None
                self._drift_mass = self._drift_time = 0.0
            return None
        if max(self.cusum_high, self.cusum_low) <= cfg.drift_h:
            if self.cusum_high == 0.0 and self.cusum_low == 0.0:
                self._drift_started = None
                self._drift_mass = self._drift_time = 0.0
            return None
        self._drifting = 1 if self.cusum_high > cfg.drift_h else -1
        recent = self._drift_mass / self._drift_time * 3600.0
        direction = "more missing" if self._drifting > 0 else "more gained"
        since_mono, since_wall = self._drift_started
        hint = (
            f"the imbalance has moved off its baseline: {abs(recent - self._rate_mean):.3g} kg/h "
            f"{direction} than its usual {self._rate_mean:+.3g} kg/h since then, before the "
            "window's tolerance is crossed: a meter drifting, or a small leak starting"
        )
        terms = Terms(math.nan, math.nan, math.nan, math.nan, math.nan, math.nan, math.nan)
        result = WindowResult(
            cfg.name, "drift", "", since_wall, snap.wall, terms, math.nan, 1.0,
            self.last.status if self.last else OK, self.alarm_active,
            self.cusum_high, self.cusum_low,
        )  # fmt: skip
        return AlarmEvent(cfg.name, DRIFT, snap.mono, snap.wall, since_mono, since_wall, result,
                          hint)  # fmt: skip


def _label(value: float) -> str:
    if not math.isfinite(value):  # never from a tag (bad readings are NaN), but never a crash
        return repr(value)
    return str(int(value)) if value == int(value) else repr(value)
