"""The gateway's processing: samples in, kilograms, balances and alarms out as records.

Gateway.ingest takes each batch from the drivers; Gateway.cycle integrates, evaluates the
nodes' windows and the reconciler, and commits what they made to the outbox in one
transaction with the running totals.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import deque
from dataclasses import dataclass, replace
from typing import Any

from ..balance import audit
from ..balance.nodes import NodeBalance
from ..balance.reconciler import Reconciler, SuspectEvent, log_suspect, suspect_body
from ..balance.terms import AlarmEvent, Weighed, alarm_body, balance_body, log_event
from ..balance.windows import check_label
from ..balance.zero import Meter, ZeroCheck, zero_body
from ..config import BATCH, Config, NodeTerms, node_terms
from ..config.model import COMMANDS, ENTERED
from ..core.records import Record, num, utc
from ..core.requests import Answered
from ..core.samples import Batch, Quality
from ..store.outbox import Outbox
from ..totalize.engine import Engine, PythonEngine
from ..totalize.engine import load as load_engine
from ..totalize.engine import loaded as engine_loaded
from ..totalize.inventories import DryGauge, InventoryGauge
from ..totalize.manual import History, ManualStream, Tickets
from ..totalize.streams import StreamTotal

log = logging.getLogger(__name__)

FIRST_VALUES_WAIT = 10.0  # s: without telemetry, how long the first values may take at most
BATCH_TAG_AGE = 60.0  # s: an older batch tag value is unknown, and the batch runs on
SAVE_TOTALS_EVERY = 10.0  # s between saves of the running totals (see take_pending)
REPORTS_TOTALS = frozenset({"totals", "hourly"})  # records committed with the totals they report


@dataclass(slots=True)
class Latest:
    value: float
    mono: float
    quality: Quality


class Gateway:
    """The pipeline's state between drivers and outbox; driven by the runtime's cycle."""

    def __init__(
        self,
        config: Config,
        outbox: Outbox,
        *,
        carried: dict[str, StreamTotal] | None = None,
        histories: dict[str, History] | None = None,
    ) -> None:
        self.config = config
        saved = outbox.load_totals()
        carried = carried if carried is not None else {}
        histories = histories if histories is not None else {}
        # A stream whose configuration a reload did not change goes on integrating in
        # memory: the reload is a gap like any other, bridged up to max_gap. A changed or new
        # one starts from the state saved in the outbox (as after a restart).
        # numba is imported only by an agent that integrates with it, and not before the
        # first values are out (see wanted_engine): until then the Python twins integrate,
        # which give the same bits.
        integrates = bool(config.streams or config.inventories)
        self.wanted_engine = (
            config.engine if integrates and not engine_loaded(config.engine) else None
        )
        engine = (
            (PythonEngine() if self.wanted_engine else load_engine(config.engine))
            if integrates
            else None
        )
        self.streams = {
            s.name: (
                carried[s.name]
                if s.name in carried and carried[s.name].config == s
                else StreamTotal(s, saved=saved.get(s.name), engine=engine)
            )
            for s in config.streams
        }
        # Each stream with a moisture or solids analyzer has a dry twin: the same meter's
        # samples times their dry share, integrated alike, kept and carried beside it.
        self.dry = {
            s.name: (
                carried[dry_key(s.name)]
                if dry_key(s.name) in carried and carried[dry_key(s.name)].config == s
                else StreamTotal(s, saved=saved.get(dry_key(s.name)), engine=engine)
            )
            for s in config.streams
            if s.dry_tag is not None
        }
        for stream in (*self.streams.values(), *self.dry.values()):
            stream.engine = engine or stream.engine  # a reload may change the engine
        before = dict(carried)
        carried.clear()
        carried.update(self.streams)
        carried.update({dry_key(name): twin for name, twin in self.dry.items()})
        self.inventories = {v.name: InventoryGauge(v, engine=engine) for v in config.inventories}
        # Stocktakes (count: entry) stand until the next one, across restarts.
        self.counts: dict[str, dict[str, Any]] = {}
        for v in config.inventories:
            kept = saved.get(saved_key("count", v.name))
            if v.count == ENTERED and isinstance(kept, dict) and isinstance(kept.get("count"), int):
                self.inventories[v.name].enter_count(kept["count"])
                self.counts[v.name] = kept
        self.manual = {
            m.name: ManualStream(m, saved.get(saved_key("manual", m.name)))
            for m in config.manual_streams
        }
        # Metered streams whose entries compare with them: their running total for 12 h,
        # carried across a reload with the stream itself (a ticket for a delivery before
        # the reload is still compared).
        self.history = {
            s.name: histories[s.name]
            if s.name in histories and self.streams[s.name] is before.get(s.name)
            else History()
            for s in config.streams
            if s.compare_entries
        }
        histories.clear()
        histories.update(self.history)
        self.tickets = {
            s.name: Tickets(saved.get(saved_key("tickets", s.name)))
            for s in config.streams
            if s.compare_entries
        }
        terms = node_terms(config.nodes)
        self.dry_gauges = {
            v.name: DryGauge(self.inventories[v.name])
            for v in config.inventories
            if v.dry_tag is not None
        }
        dry_streams = {**self.streams, **self.dry}
        dry_gauges: dict[str, Weighed] = {**self.inventories, **self.dry_gauges}
        self.nodes = [
            NodeBalance(n, terms[n.name], dry_streams, dry_gauges)
            if n.basis == "dry"
            else NodeBalance(n, terms[n.name], {**self.streams, **self.manual}, self.inventories)
            for n in config.nodes
        ]
        self._batch_state: dict[str, dict[str, Any]] = {}  # node → its batch by command
        self.answered = Answered(saved.get(ANSWERED_KEY))  # request ids carried out
        # An alarm active at the stop (or the reload) is active again, not raised twice:
        # restored at the first cycle, on the pipeline's clocks.
        self._alarms_kept: dict[str, object] | None = {
            n.config.name: saved.get(saved_key("alarm", n.config.name)) for n in self.nodes
        }
        for node in self.nodes:
            self._resume_batch(node, saved.get(saved_key("batch", node.config.name)))
        self.zero_checks = [
            ZeroCheck(n.name, n.zero_check, self._zero_meters(terms[n.name]))
            for n in config.nodes
            if n.zero_check is not None
        ]
        self.reconciler = (
            Reconciler(config.reconciliation, config.nodes, terms, self.streams, self.inventories)
            if config.reconciliation is not None
            else None
        )
        self.latest: dict[str, Latest] = {}
        self.meter_alarms: dict[str, tuple[str, ...]] = {}  # device → its alarms active now
        # Gas chromatographs → the streams whose gas they analyze, and those whose last
        # analysis was refused (one journal line when refusing starts, one when it ends).
        self._analyzed: dict[str, list[StreamTotal]] = {}
        for stream in self.streams.values():
            model = stream.config.density
            if model is not None and model.composition_device is not None:
                self._analyzed.setdefault(model.composition_device, []).append(stream)
        self._refusing: set[str] = set()
        self._alarm_quality = {
            p.tag: alarm
            for d in config.devices
            for p in d.points
            if (alarm := getattr(p, "alarm", None)) is not None
        }
        self.batches = 0
        self.pending: list[Record] = []
        self.next_totals: float | None = None
        self.next_telemetry: float | None = None
        self._telemetry_from: float | None = None  # the first cycle's time
        self._heard: set[str] = set()  # devices that delivered a batch, good or bad
        self.clock = time.time  # the wall clock that judges an entry's time
        self.sync_now = False  # the records of this cycle are to be synced (and sent) at once
        # Commands waiting for the commit that makes their records durable (see committed).
        self._waiting: list[asyncio.Future[str | None]] = []
        # Set when the pipeline stops (or reloads): what a command records now would come
        # after the last commit, so it is refused instead.
        self.stopping = False
        # Set in the cycle that makes the first values (every device heard once, or a wait).
        self.first_values = asyncio.Event()
        # Recent events for the demo table and status; the outbox keeps the full record.
        self.alarms: deque[AlarmEvent] = deque(maxlen=100)
        self._totals_saved_at = -math.inf
        # The state beside the stream totals (batches, entries, counts, tickets, request ids,
        # alarms) changes only by a command or an alarm event: saved then, not rewritten
        # with every save of the totals.
        self._state_changed = True
        # The first totals after the database was reset at start say where they restart.
        cause = (outbox.reset or {}).get("cause")
        self.restarted = {"unreadable": "from_zero", "rolled_back": "from_older_state"}.get(
            cause or ""
        )
        self._audit(outbox)

    def use_engine(self, engine: Engine) -> None:
        """Integrate with `engine` from the next cycle on (numba's kernels, once loaded)."""
        for stream in (*self.streams.values(), *self.dry.values()):
            stream.engine = engine
        for gauge in self.inventories.values():
            gauge.engine = engine
        self.wanted_engine = None

    def _audit(self, outbox: Outbox) -> None:
        """Record what changed in the computation since the last run, with old and new values."""
        stored = outbox.meta(audit.META_KEY)
        found, current = audit.compare(stored, self.config)
        if not found:
            return
        baseline = stored is None
        audit.log_changes(found, baseline=baseline)
        body = {"baseline": baseline, "config": str(self.config.source), "changes": found}
        # The record and the parameters it moves to are one transaction.
        outbox.put([Record("audit", body, time.time())], meta={audit.META_KEY: current})

    def _fresh(self, tag: str | None, mono: float, max_age: float) -> float:
        if tag is None:
            return math.nan
        latest = self.latest.get(tag)
        if latest is None or latest.quality >= Quality.BAD or mono - latest.mono > max_age:
            return math.nan
        return latest.value

    def ingest(self, batch: Batch) -> None:
        self.batches += 1
        self._heard.add(batch.device)
        bad = batch.quality >= Quality.BAD
        # A failed poll (BAD without alarms) says nothing of the meter's alarms.
        if batch.alarms != self.meter_alarms.get(batch.device, ()) and (batch.alarms or not bad):
            self._alarms_changed(batch.device, batch.alarms)
        # One sum decides for the whole batch (±inf or NaN anywhere makes it non-finite, as
        # does an overflow, which the slow path below then leaves alone); this runs for
        # every poll of every device.
        if not math.isfinite(sum(batch.values.values())):
            # The drivers send NaN for what they could not read; whatever else slips through
            # (±inf) is no reading either, and must not reach a total or a batch label.
            values = {t: v if math.isfinite(v) else math.nan for t, v in batch.values.items()}
            batch = replace(batch, values=values)
        for tag, value in batch.values.items():
            self.latest[tag] = Latest(value, batch.mono, batch.quality)
        if batch.device in self._analyzed:
            self._analysis(batch)
        for stream in self.streams.values():
            cfg = stream.config
            if cfg.flow_tag not in batch.values:
                continue
            flow = math.nan if bad else batch.values[cfg.flow_tag]
            if cfg.belt_speed is not None:
                # A belt scale: load × speed, the speed from this reply when its device
                # gives both (as an integrator does), else its latest fresh reading.
                speed = batch.values.get(cfg.belt_speed)
                if speed is None or bad:
                    speed = self._fresh(cfg.belt_speed, batch.mono, cfg.max_gap)
                flow *= speed
            temperature = pressure = math.nan
            if cfg.density is not None:
                temperature = self._fresh(cfg.density.temperature, batch.mono, cfg.max_gap)
                pressure = self._fresh(cfg.density.pressure, batch.mono, cfg.max_gap)
            stream.add(batch.mono, batch.wall, flow, temperature, pressure)
            stream.note_alarms(batch.alarms)
            if (twin := self.dry.get(cfg.name)) is not None:
                share = self._fresh(cfg.dry_tag, batch.mono, cfg.max_gap)
                if cfg.moisture is not None:
                    share = 1.0 - share
                # A share outside 0..1 is no analysis: the dry twin has a gap, not mass.
                dry_flow = flow * share if 0.0 <= share <= 1.0 else math.nan
                twin.add(batch.mono, batch.wall, dry_flow, temperature, pressure)
                twin.note_alarms(batch.alarms)
        for gauge in self.inventories.values():
            cfg_v = gauge.config
            if gauge.tag not in batch.values or bad:
                continue
            temperature = pressure = math.nan
            if cfg_v.density is not None:
                temperature = self._fresh(cfg_v.density.temperature, batch.mono, cfg_v.max_age)
                pressure = self._fresh(cfg_v.density.pressure, batch.mono, cfg_v.max_age)
            gauge.update(batch.mono, batch.values[gauge.tag], temperature, pressure)
            if (dry := self.dry_gauges.get(cfg_v.name)) is not None:
                share = self._fresh(cfg_v.dry_tag, batch.mono, cfg_v.max_age)
                dry.share = 1.0 - share if cfg_v.moisture is not None else share

    def _analysis(self, batch: Batch) -> None:
        """A gas chromatograph's analysis: the composition of its streams' gas from now on,
        or refused (unreadable, the analyzer faulted or calibrating, a sum that is not 1)
        while the last good one is kept and every density computed with it is flagged."""
        from ..totalize.gas import COMPONENTS, Composition, CompositionError  # noqa: PLC0415

        device, streams = batch.device, self._analyzed[batch.device]
        refused = None
        if batch.quality >= Quality.BAD:
            refused = f"unusable: {batch.error or 'bad'}"
        else:
            given = {
                c: batch.values[f"{device}.{c}"]
                for c in COMPONENTS
                if f"{device}.{c}" in batch.values
            }
            try:
                composition = Composition.parse(given)
            except CompositionError as exc:
                refused = str(exc)
        if refused is None:
            for stream in streams:
                stream.composition, stream.composition_flag = composition, None
            if device in self._refusing:
                self._refusing.discard(device)
                log.info("%s: analysis accepted again", device, extra={"device": device})
            return
        # The flag each density carries is the same words whatever the reason (a sum changes
        # with every analysis: one journal line per spell, said here, not one per figure).
        kept = streams[0].composition is not None
        flag = f"gas: the last good analysis from {device} is kept (the latest is refused)"
        for stream in streams:
            stream.composition_flag = flag if kept else None
        if device not in self._refusing:
            self._refusing.add(device)
            log.warning(
                "%s: analysis refused (%s); %s",
                device,
                refused,
                "the last good one is kept" if kept else "there is no good one yet",
                extra={"device": device},
            )

    def _alarms_changed(self, device: str, alarms: tuple[str, ...]) -> None:
        """One journal line per alarm a meter raises or clears."""
        before = self.meter_alarms.get(device, ())
        for tag in alarms:
            if tag not in before:
                quality = self._alarm_quality.get(tag, "bad")
                if device in self._analyzed:
                    effect = "its analysis is not used"
                elif quality == "bad":
                    effect = "its values are not totalized"
                else:
                    effect = "its values are totalized but do not count towards balance coverage"
                log.warning(
                    "%s: meter alarm %s (%s): %s", device, tag, quality, effect,
                    extra={"device": device},
                )  # fmt: skip
        for tag in before:
            if tag not in alarms:
                log.info("%s: meter alarm %s cleared", device, tag, extra={"device": device})
        if alarms:
            self.meter_alarms[device] = alarms
        else:
            self.meter_alarms.pop(device, None)

    def cycle(self, mono: float, wall: float, *, final: bool = False) -> None:
        """Integrate, judge the balances that are due, and queue the records that result."""
        if self._alarms_kept is not None:
            for node in self.nodes:
                node.alarm.restore(self._alarms_kept.get(node.config.name), mono, wall)
            self._alarms_kept = None
        for name, stream in self.streams.items():
            stream.integrate()
            stream.roll_hour(wall)
            hours = stream.take_hours()
            if (twin := self.dry.get(name)) is not None:
                twin.integrate()
                twin.roll_hour(wall)
                dry = {h["hour_start"]: h["quantity_kg"] for h in twin.take_hours()}
                for hour in hours:
                    hour["dry_kg"] = dry.get(hour["hour_start"])
            self.pending.extend(Record("hourly", hour, wall) for hour in hours)
            if (history := self.history.get(name)) is not None and stream.last_wall is not None:
                history.add(stream.last_wall, stream.net)

        def tag_value(tag: str) -> float:
            return self._fresh(tag, mono, BATCH_TAG_AGE)

        for node in self.nodes:
            results, events = node.tick(mono, wall, tag_value)
            for result in results:
                self.pending.append(Record("balance", balance_body(result), wall))
            for event in events:
                self._alarm_record(event, wall)
        for check in self.zero_checks:
            for zero in check.tick(mono, wall, tag_value):
                self.pending.append(Record("alarm", zero_body(zero), wall))
        if self.reconciler is not None:
            body, suspects = self.reconciler.tick(mono, wall)
            if body is not None:
                self.pending.append(Record("reconciliation", body, wall))
            for suspect in suspects:
                self._suspect_record(suspect, wall)
        if self.next_totals is None:
            self.next_totals = mono + self.config.totals_interval
        if final or mono >= self.next_totals:
            self.next_totals = mono + self.config.totals_interval
            self.pending.append(self._totals_record(mono, wall))
        if not self.first_values.is_set() and self._first_values_due(mono):
            self.first_values.set()  # what waited for the first values to go may start
        if self.config.telemetry_interval > 0 and self._telemetry_due(mono):
            # The first values wait for no timed sync: they go as soon as they are committed.
            self.sync_now = self.sync_now or self.next_telemetry is None
            self.next_telemetry = mono + self.config.telemetry_interval
            self.pending.append(self._telemetry_record(wall))

    def _resume_batch(self, node: NodeBalance, kept: Any) -> None:
        """A batch started by command and running when the agent stopped goes on; its
        window begins again (what ran before the stop is not in memory any more)."""
        cfg = node.config
        if cfg.window_kind != BATCH or cfg.batch_tag is not None or not isinstance(kept, dict):
            return
        batch, campaign, by = kept.get("batch"), kept.get("campaign"), kept.get("by")
        if not isinstance(batch, str) or node.batch is not None:
            return
        campaign = campaign if isinstance(campaign, str) else None
        by = by if isinstance(by, str) else ""
        node.command(batch, campaign=campaign, by=by)
        self._batch_state[cfg.name] = {"batch": batch, "campaign": campaign, "by": by}
        log.warning(
            "node %s: batch %s (started by %s) goes on after the restart; its window begins "
            "again now (report --by batch sums its parts)",
            cfg.name,
            batch,
            by or "unknown",
            extra={"node": cfg.name},
        )

    def command(self, request: dict[str, Any]) -> dict[str, Any]:
        """An operator's command from the command socket or the broker: {"command": "batch",
        "node", "action": "start"|"end", "batch", "campaign", "by"} or {"command": "enter",
        ...} (see enter), with "via" (socket, mqtt) and optionally an "id": a request whose id
        was carried out already is answered again, not carried out twice. Refusals are
        answers, never exceptions."""
        if self.stopping:
            return {
                "ok": False,
                "error": "the agent is stopping or reloading its configuration; try again",
            }
        now = self.clock()
        key = request.get("id")
        if key is not None:
            try:
                key = check_label(key, "id")
            except ValueError as exc:
                return {"ok": False, "error": str(exc)}
            if (done := self.answered.get(key, now)) is not None:
                at, said = done
                return {
                    "ok": True,
                    "repeat": True,
                    "message": f"request {key} was carried out at {utc(at)}, not again: {said}",
                }
        answer = self._command(request, now)
        if key is not None and answer.get("ok") is True:
            self.answered.add(key, now, str(answer.get("message", "")))
            self.save_soon()  # a retry after a restart is still known
        return answer

    def _command(self, request: dict[str, Any], now: float) -> dict[str, Any]:
        via = request.get("via") if request.get("via") in VIA else VIA[0]
        if request.get("command") == "enter":
            from .entries import enter  # noqa: PLC0415  (entries imports this module)

            try:
                return enter(self, {**request, "via": via}, now)
            except ValueError as exc:
                return {"ok": False, "error": str(exc)}
        if request.get("command") != "batch":
            return {
                "ok": False,
                "error": f"unknown command {request.get('command')!r} ({', '.join(COMMANDS)})",
            }
        name = request.get("node")
        node = next((n for n in self.nodes if n.config.name == name), None)
        if node is None:
            known = ", ".join(n.config.name for n in self.nodes) or "none"
            return {"ok": False, "error": f"no node named {name!r} (nodes: {known})"}
        action, by = request.get("action"), request.get("by")
        if action not in ("start", "end"):
            return {"ok": False, "error": f"unknown action {action!r} (start, end)"}
        try:
            by = check_label(by, "by") if by is not None else ""
            batch = check_label(request.get("batch"), "batch") if action == "start" else None
            campaign = request.get("campaign")
            campaign = check_label(campaign, "campaign") if campaign is not None else None
            running = node.batch
            node.command(batch, campaign=campaign, by=by)
        except ValueError as exc:
            return {"ok": False, "error": str(exc)}
        which = batch if batch is not None else running
        log.info(
            "node %s: batch %s %s by %s (via %s)", name, which, "started" if batch else "ended",
            by or "unknown", via, extra={"node": name},
        )  # fmt: skip
        self._batch_state[node.config.name] = {"batch": batch, "campaign": campaign, "by": by}
        self.save_soon()  # a restart resumes it
        verb = "begins" if batch else "ends"
        return {"ok": True, "message": f"node {name}: batch {which} {verb} with the next cycle"}

    def committed(self) -> asyncio.Future[str | None]:
        """Done when what was put in `pending` so far is committed and synced: an operator
        is told that an entry was taken once it is on the disk, not before (a power cut after
        the answer must not lose it). Its result is None, or why the records are not on the
        disk after all (a full disk holds them in memory)."""
        waiter: asyncio.Future[str | None] = asyncio.get_running_loop().create_future()
        self._waiting.append(waiter)
        self.sync_now = True
        return waiter

    def take_waiting(self) -> list[asyncio.Future[str | None]]:
        """The commands waiting for the records taken with take_pending (in the same turn)."""
        waiting, self._waiting = self._waiting, []
        return waiting

    def not_committed(
        self,
        records: list[Record],
        totals: dict[str, Any] | None,
        waiting: list[asyncio.Future[str | None]],
        *,
        sync: bool,
    ) -> None:
        """What take_pending and take_waiting gave was not committed: the records go with
        the next commit, the running totals too (an entry's stream and its request id are
        kept there: not 10 s later), and the commands wait for it."""
        self.pending[:0] = records
        self._waiting[:0] = waiting
        self.sync_now = self.sync_now or sync
        if totals is not None:
            self._state_due()

    def save_soon(self) -> None:
        """What an operator did (a batch command, an entry): the running totals (where it
        is kept) saved and synced with the next commit, as an alarm is."""
        self._state_due()
        self.sync_now = True

    def _state_due(self) -> None:
        self._totals_saved_at = -math.inf
        self._state_changed = True

    def _zero_meters(self, terms: NodeTerms) -> list[Meter]:
        """The node's flow meters (a register has no flow to read still; a manual stream is
        no meter), each then keeping its last raw reading."""
        names = (*terms.inputs, *terms.outputs, *terms.generation, *terms.consumption)
        meters = [
            Meter(n, s, s.config.low_flow_cutoff, s.config.max_gap, s.config.zero_stability)
            for n in names
            if (s := self.streams.get(n)) is not None and s.config.mass_total is None
        ]
        for meter in meters:
            self.streams[meter.name].watched = True
        return meters

    def _telemetry_due(self, mono: float) -> bool:
        """The first telemetry goes as soon as every device has answered (or failed) once, so
        the first values reach the broker with the first polls, not an interval later and
        never as an empty record; a device that stays silent holds it up one interval at most.
        """
        if self.next_telemetry is not None:
            return mono >= self.next_telemetry
        return self._first_values_due(mono)

    def _first_values_due(self, mono: float) -> bool:
        if self._telemetry_from is None:
            self._telemetry_from = mono
        every_device = len(self._heard) >= len(self.config.devices)
        wait = self.config.telemetry_interval or FIRST_VALUES_WAIT
        return every_device or mono >= self._telemetry_from + wait

    def _alarm_record(self, event: AlarmEvent, wall: float) -> None:
        self.alarms.append(event)
        log_event(log, event)
        self.pending.append(Record("alarm", alarm_body(event), wall))
        self._state_due()  # the alarm's state is committed with its event

    def _suspect_record(self, event: SuspectEvent, wall: float) -> None:
        log_suspect(log, event)
        self.pending.append(Record("alarm", suspect_body(event), wall))

    def _totals_record(self, mono: float, wall: float) -> Record:
        streams: list[dict[str, Any]] = []
        for name, stream in self.streams.items():
            period = stream.close_period()
            streams.append(
                {
                    "stream": name,
                    "period_start": utc(period.start_wall),
                    "period_end": utc(period.end_wall),
                    "mass_kg": num(period.mass),
                    "forward_kg": num(stream.forward),
                    "reverse_kg": num(stream.reverse),
                    "estimated_kg": num(period.estimated),
                    "gap_s": num(period.gap_time),
                    # What a balance upstream (across gateways) needs of the stream: its
                    # running net total to difference, and its accuracy to weigh it by.
                    "net_kg": num(stream.net),
                    "accuracy": stream.config.accuracy,
                }
            )
            if alarms := stream.take_period_alarms():
                # Which of the period's kilograms came while the meter said it was in doubt
                # (or not measuring): a consumer weighs the period's quantity by it.
                streams[-1]["meter_alarms"] = alarms
            if (twin := self.dry.get(name)) is not None:
                dry_period = twin.close_period()
                streams[-1]["dry_kg"] = num(dry_period.mass)
                streams[-1]["dry_net_kg"] = num(twin.net)
        body: dict[str, Any] = {"streams": streams}
        if self.inventories:
            body["inventories"] = [
                {
                    "inventory": name,
                    "mass_kg": num(gauge.mass_at(mono)),
                    "at": utc(wall - (mono - gauge.mono)) if math.isfinite(gauge.mono) else None,
                    "sigma_kg": num(gauge.sigma),
                }
                | (
                    {"dry_mass_kg": num(dry.mass_at(mono))}
                    if (dry := self.dry_gauges.get(name)) is not None
                    else {}
                )
                for name, gauge in self.inventories.items()
            ]
        if self.restarted is not None:
            body["restarted"] = self.restarted
            self.restarted = None
        return Record("totals", body, wall)

    def _telemetry_record(self, wall: float) -> Record:
        points = {
            tag: {"value": num(latest.value), "quality": latest.quality.name.lower()}
            for tag, latest in sorted(self.latest.items())
        }
        return Record("telemetry", {"points": points}, wall)

    def take_pending(self, mono: float) -> tuple[list[Record], dict[str, Any] | None]:
        """Records to commit, and the running totals when they are due to be saved.

        Totals are saved with every record that reports them (so a totals or hourly record
        and the total it reports are one transaction) and otherwise every SAVE_TOTALS_EVERY:
        a power cut then costs at most that much (plus the outbox's SYNC_EVERY) of
        integration, which the next start counts as gap time like the outage itself, and
        the card is not rewritten every second for it.
        """
        records, self.pending = self.pending, []
        reports = any(r.kind in REPORTS_TOTALS for r in records)
        if not reports and mono - self._totals_saved_at < SAVE_TOTALS_EVERY:
            return records, None
        self._totals_saved_at = mono
        totals = {name: s.saved() for name, s in self.streams.items()}
        totals.update({dry_key(name): twin.saved() for name, twin in self.dry.items()})
        if not self._state_changed:
            return records, totals
        self._state_changed = False
        totals.update({saved_key("batch", n): state for n, state in self._batch_state.items()})
        totals.update({saved_key("manual", n): m.saved() for n, m in self.manual.items()})
        totals.update({saved_key("count", n): kept for n, kept in self.counts.items()})
        totals.update(
            {saved_key("tickets", n): t.saved() for n, t in self.tickets.items() if t.entries}
        )
        if self.answered.kept:
            totals[ANSWERED_KEY] = self.answered.saved()
        # Every node's, inactive too: a saved state is replaced, never deleted.
        totals.update({saved_key("alarm", n.config.name): n.alarm.saved() for n in self.nodes})
        return records, totals


ANSWERED_KEY = "commands/answered"  # where the ids of requests carried out are saved
VIA = ("socket", "mqtt")  # where a command came from (the command socket, the broker)


def saved_key(kind: str, name: str) -> str:
    """Where a part of the gateway's state beside the stream totals is saved: kind/name (a
    node's alarm or batch, an inventory's count, a stream's tickets or manual entries). No
    name holds a '/', so none is taken for a stream's own key."""
    return f"{kind}/{name}"


def dry_key(stream: str) -> str:
    """Where a stream's dry twin is saved and carried: no stream name holds a '/'."""
    return f"{stream}/dry"


def outbox_reset_record(outbox: Outbox) -> None:
    """The first record after a reset of the outbox says what a consumer needs: why the epoch
    changed, the old epoch and its last seq (what to expect no more of), how many records
    were left unsent, and where the old file was kept."""
    reset = outbox.reset or {}
    cause = reset.get("cause", "unreadable")
    now = time.time()
    unsent = reset.get("unsent")
    left = f"{unsent} records not yet sent" if unsent is not None else "records not yet sent"
    if cause == "rolled_back":
        hint = (
            f"the outbox database is older than the sequence numbers already issued (a "
            f"restored backup or lost writes): epoch {reset.get('old_epoch')} ends, a new "
            f"one starts above seq {reset.get('issued_up_to')}; its {left} go out as they "
            "were made (possibly again), and totals go on from the state in that file"
        )
    else:
        when = "while running" if cause == "damaged" else "at start"
        hint = (
            f"the outbox database was found {cause} {when} ({outbox.moved_aside_reason}); "
            f"it was moved aside to {outbox.moved_aside} and a new one started: its {left} "
            + (
                "are not sent; totals go on from memory"
                if cause == "damaged"
                else "are not sent, and totals restart from zero"
            )
        )
    body = {
        "node": "gateway",
        "event": "outbox_reset",
        "since": utc(now),
        "at": utc(now),
        "hint": hint,
        "cause": cause,
        "aside": outbox.moved_aside if cause != "rolled_back" else None,
        "old_epoch": reset.get("old_epoch"),
        "old_last_seq": reset.get("old_last_seq"),
        "unsent": unsent,
    }
    outbox.put([Record("alarm", body, now)])
