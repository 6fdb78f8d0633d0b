"""The running agent: drivers → totalizer → balance → outbox → publisher.

One TaskGroup supervises the pollers, the processing cycle and the publisher. Shutdown is
an injectable event (tests and the demo set it; `massgate run` sets it on SIGTERM/SIGINT):
polling stops, the last samples are integrated, final totals are committed, the publisher
drains what it can within the graceful timeout, and the outbox is closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import math
import sqlite3
import ssl
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from massgate.drivers import BY_PACKAGE
from massgate.drivers.base import FatalError, Opened, Poller
from massgate.drivers.health import DeviceHealth

from ..balance import audit
from ..balance.nodes import CLEARED, DRIFT, AlarmEvent, NodeBalance, WindowResult
from ..balance.reconciler import Reconciler, SuspectEvent, gross_error_body
from ..config import Config, node_terms
from ..core import preflight
from ..core.records import Record, num, utc
from ..core.samples import Batch, Quality
from ..core.yamlsource import ConfigError
from ..publish.publisher import LinkStatus, Publisher
from ..store.outbox import Outbox
from ..totalize.totalizer import InventoryGauge, StreamTotal
from .health import SNAPSHOT_EVERY, Progress, snapshot, summary_line
from .sdnotify import Notifier
from .statelock import StateLocks, lock_paths
from .statusserver import StatusServer

log = logging.getLogger(__name__)

TICK = 0.25  # s between processing cycles
GRACEFUL_TIMEOUT = 10.0  # s for the publisher to drain at shutdown
BATCH_TAG_AGE = 60.0  # s: an older batch tag value is unknown, and the batch runs on


class StartError(Exception):
    """The pipeline cannot be built (database, TLS, a port): one line saying what and why."""


# What building a part of the pipeline raises when the machine refuses it, not our code.
_REFUSALS = (OSError, sqlite3.Error, ssl.SSLError, ValueError)


def locks_of(config: Config) -> list[Any]:
    return lock_paths(
        state_dir=config.gateway.state_dir,
        outbox=config.outbox.path,
        socket=config.health.socket,
    )


@dataclass
class Carried:
    """What a reload hands from one run to the next in the same process."""

    devices: dict[str, DeviceHealth] = field(default_factory=dict)
    streams: dict[str, StreamTotal] = field(default_factory=dict)
    link: LinkStatus | None = None


@dataclass(slots=True)
class Latest:
    value: float
    mono: float
    quality: Quality


class Gateway:
    """The pipeline's state between drivers and outbox; driven by the runtime's cycle."""

    def __init__(
        self, config: Config, outbox: Outbox, *, carried: dict[str, StreamTotal] | None = None
    ) -> None:
        self.config = config
        saved = outbox.load_totals()
        carried = carried if carried is not None else {}
        # A stream whose configuration a reload did not change goes on integrating in
        # memory: the reload is a gap like any other, bridged up to max_gap. A changed or new
        # one starts from the state saved in the outbox (as after a restart).
        self.streams = {
            s.name: (
                carried[s.name]
                if s.name in carried and carried[s.name].config == s
                else StreamTotal(s, saved=saved.get(s.name))
            )
            for s in config.streams
        }
        carried.clear()
        carried.update(self.streams)
        self.inventories = {v.name: InventoryGauge(v) for v in config.inventories}
        terms = node_terms(config.nodes)
        self.nodes = [
            NodeBalance(n, terms[n.name], self.streams, self.inventories) for n in config.nodes
        ]
        self.reconciler = (
            Reconciler(config.reconciliation, config.nodes, terms, self.streams, self.inventories)
            if config.reconciliation is not None
            else None
        )
        self.latest: dict[str, Latest] = {}
        self.batches = 0
        self.pending: list[Record] = []
        self.next_totals: float | None = None
        self.next_telemetry: float | None = None
        # Recent events for the demo table and status; the outbox keeps the full record.
        self.alarms: deque[AlarmEvent] = deque(maxlen=100)
        self._totals_saved_at = -math.inf
        # The first totals after the database was reset at start say where they restart.
        cause = (outbox.reset or {}).get("cause")
        self.restarted = {"unreadable": "from_zero", "rolled_back": "from_older_state"}.get(
            cause or ""
        )
        self._audit(outbox)

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
        bad = batch.quality >= Quality.BAD
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
        for stream in self.streams.values():
            cfg = stream.config
            if cfg.flow_tag not in batch.values:
                continue
            flow = math.nan if bad else batch.values[cfg.flow_tag]
            temperature = pressure = math.nan
            if cfg.density is not None:
                temperature = self._fresh(cfg.density.temperature, batch.mono, cfg.max_gap)
                pressure = self._fresh(cfg.density.pressure, batch.mono, cfg.max_gap)
            stream.add(batch.mono, batch.wall, flow, temperature, pressure)
        for gauge in self.inventories.values():
            cfg_v = gauge.config
            if gauge.tag not in batch.values or bad:
                continue
            temperature = pressure = math.nan
            if cfg_v.density is not None:
                temperature = self._fresh(cfg_v.density.temperature, batch.mono, cfg_v.max_age)
                pressure = self._fresh(cfg_v.density.pressure, batch.mono, cfg_v.max_age)
            gauge.update(batch.mono, batch.values[gauge.tag], temperature, pressure)

    def cycle(self, mono: float, wall: float, *, final: bool = False) -> None:
        """Integrate, judge the balances that are due, and queue the records that result."""
        for stream in self.streams.values():
            stream.integrate()
            stream.roll_hour(wall)
            self.pending.extend(Record("hourly", body, wall) for body in stream.take_hours())

        def batch_tag(tag: str) -> float:
            return self._fresh(tag, mono, BATCH_TAG_AGE)

        for node in self.nodes:
            results, events = node.tick(mono, wall, batch_tag)
            for result in results:
                self.pending.append(Record("balance", balance_body(result), wall))
            for event in events:
                self._alarm_record(event, wall)
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
            self.pending.append(self._totals_record(wall))
        if self.config.telemetry_interval > 0:
            if self.next_telemetry is None:
                self.next_telemetry = mono
            if mono >= self.next_telemetry:
                self.next_telemetry = mono + self.config.telemetry_interval
                self.pending.append(self._telemetry_record(wall))

    def _alarm_record(self, event: AlarmEvent, wall: float) -> None:
        self.alarms.append(event)
        result = event.result
        if event.event == DRIFT:
            log.warning("node %s: drift: %s", event.node, event.hint, extra={"node": event.node})
        else:
            log.log(
                logging.INFO if event.event == CLEARED else logging.WARNING,
                "node %s: alarm %s: imbalance %.3f kg (tolerance %.3f kg); %s",
                event.node,
                event.event,
                result.imbalance,
                result.tolerance,
                event.hint,
                extra={"node": event.node},
            )
        alarm = {
            "node": event.node,
            "event": event.event,
            "since": utc(event.since_wall),
            "at": utc(event.wall),
            "hint": event.hint,
            "balance": balance_body(result),
        }
        self.pending.append(Record("alarm", alarm, wall))

    def _suspect_record(self, event: SuspectEvent, wall: float) -> None:
        e = event.suspect
        hint = e.describe("kg")
        if event.event == "raised":
            log.warning("reconciliation: gross error: %s", hint)
        else:
            log.info("reconciliation: cleared: %s", hint)
        alarm = {
            "node": "network",
            "event": event.event,
            "since": utc(event.since_wall),
            "at": utc(event.wall),
            "hint": hint if event.event == "raised" else f"no longer found: {hint}",
            "gross_error": gross_error_body(e),
        }
        self.pending.append(Record("alarm", alarm, wall))

    def _totals_record(self, wall: float) -> Record:
        streams = []
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
                }
            )
        body: dict[str, Any] = {"streams": streams}
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

        Totals are saved with every batch of records (so a record and the total it reports
        are one transaction) and at least once a second, which bounds what a power cut loses
        without syncing the SD card at every cycle.
        """
        records, self.pending = self.pending, []
        if not records and mono - self._totals_saved_at < 1.0:
            return records, None
        self._totals_saved_at = mono
        return records, {name: s.saved() for name, s in self.streams.items()}


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
    }


@dataclass
class Agent:
    """Handles the running parts, for the demo's table, status and tests."""

    config: Config
    gateway: Gateway
    outbox: Outbox
    pollers: list[Poller]
    publisher: Publisher | None
    started: float = field(default_factory=time.time)
    health: dict[str, Any] = field(default_factory=dict)  # the latest snapshot, replaced whole
    reload_error: str | None = None
    locks: StateLocks | None = None
    opened: list[Opened] = field(default_factory=list)  # by driver: what closes after polling
    # Restarts of supervised tasks after an unexpected exception, by task name.
    restarts: dict[str, int] = field(default_factory=dict)


async def run(
    config: Config,
    *,
    shutdown: asyncio.Event | None = None,
    on_cycle: Callable[[Agent], None] | None = None,
    tick: float = TICK,
    graceful_timeout: float = GRACEFUL_TIMEOUT,
    reload: asyncio.Event | None = None,
    load: Callable[[], Config] | None = None,
    notifier: Notifier | None = None,
    started: float | None = None,
    carried: Carried | None = None,
    locks: StateLocks | None = None,
    refused: str | None = None,
) -> Config | None:
    """Run the agent until `shutdown` is set (forever if None).

    When `reload` is set, `load()` reads the configuration again. A valid one that the
    machine can also run (its database opens, its ports are free, see `_preflight`) ends this
    run cleanly (totals saved, outbox flushed) and is returned, for the caller to run next;
    any other is refused with its problems in the log, and this run goes on unchanged.
    `carried` keeps what goes on across such runs: each device's health (a meter that was
    down before a reload is not announced down again, and its counts go on), the streams'
    running totals (integration goes on across the reload like across any gap) and the broker
    link's figures. `locks` are the state locks the caller holds for the life of the process
    (taken here, and released at the end, when not given); `refused` is a reload refusal to
    show from the start.

    Raises AlreadyRunning when another agent holds the state, StartError when the pipeline
    cannot be built.
    """
    shutdown = shutdown or asyncio.Event()
    notifier = notifier or Notifier("")
    started = started or time.time()
    own_locks = locks is None
    locks = locks or StateLocks()
    try:
        # First, before the outbox is touched: no other agent may be running on this state.
        locks.hold(locks_of(config))
        server = await _status_server(config)
        try:
            return await _run(
                config,
                shutdown=shutdown,
                on_cycle=on_cycle,
                tick=tick,
                graceful_timeout=graceful_timeout,
                reload=reload,
                load=load,
                notifier=notifier,
                started=started,
                server=server,
                carried=Carried() if carried is None else carried,
                locks=locks,
                refused=refused,
            )
        finally:
            await server.close()
    finally:
        if own_locks:
            locks.release()


async def _status_server(config: Config) -> StatusServer:
    server = StatusServer(config.health.socket, dict)
    try:
        await server.start()
    except OSError as exc:
        raise StartError(
            f"cannot open the status socket {config.health.socket}: {exc.strerror or exc}"
        ) from None
    return server


async def _run(
    config: Config,
    *,
    shutdown: asyncio.Event,
    on_cycle: Callable[[Agent], None] | None,
    tick: float,
    graceful_timeout: float,
    reload: asyncio.Event | None,
    load: Callable[[], Config] | None,
    notifier: Notifier,
    started: float,
    server: StatusServer,
    carried: Carried,
    locks: StateLocks,
    refused: str | None,
) -> Config | None:
    next_config: Config | None = None
    try:
        outbox = Outbox(
            config.outbox.path,
            max_bytes=config.outbox.max_bytes,
            site=config.gateway.site,
            gateway=config.gateway.id,
            topic_prefix=config.mqtt.topic_prefix if config.mqtt else "massgate",
            max_age=config.outbox.max_age,
        )
    except _REFUSALS as exc:
        raise StartError(f"cannot open the outbox {config.outbox.path}: {_why(exc)}") from None
    try:
        if outbox.reset is not None:
            outbox_reset_record(outbox)
        # Damage found while running: a new database, the alarm, and the pipeline goes on
        # (the totals in memory are saved into the new file with the next cycle).
        outbox.on_reset = lambda: outbox_reset_record(outbox)
        gateway = Gateway(config, outbox, carried=carried.streams)
        batches: asyncio.Queue[Batch] = asyncio.Queue()
        opened = _open_pollers(config, batches.put_nowait)
        pollers = [poller for o in opened for poller in o.pollers]
        _carry_health(pollers, carried.devices)
        publisher = None
        if config.mqtt is not None and config.mqtt.brokers:
            try:
                publisher = Publisher(
                    outbox,
                    config.mqtt,
                    config.gateway.site,
                    config.gateway.id,
                    drain_rate=config.outbox.drain_rate,
                )
            except _REFUSALS as exc:
                raise StartError(f"cannot set up TLS for the broker: {_why(exc)}") from None
            if carried.link is not None:  # the figures of the run before a reload go on
                before = carried.link
                publisher.status.last_publish = before.last_publish
                publisher.status.published = before.published
                publisher.status.acked = before.acked
                publisher.status.connects = before.connects
            carried.link = publisher.status
        else:
            log.warning("no MQTT broker configured: records are kept in the outbox %s", outbox.path)
        agent = Agent(config, gateway, outbox, pollers, publisher, started=started, opened=opened)
        agent.reload_error = refused
        agent.locks = locks
        if publisher is not None:
            # The status topic carries the same health as `massgate status`.
            publisher.health = lambda: _topic_health(agent.health)
        server.get = lambda: agent.health
        metrics = None
        if config.health.metrics is not None:
            from .metrics import MetricsServer  # noqa: PLC0415  # only when asked for

            metrics = MetricsServer(config.health.metrics, lambda: agent.health)
        agent.health = snapshot(agent, started=started)
        try:
            if metrics is not None:
                try:
                    metrics.start()
                except OSError as exc:
                    host, port = config.health.metrics  # type: ignore[misc]
                    raise StartError(
                        f"cannot serve metrics on {host}:{port}: {_why(exc)}"
                    ) from None
            next_config = await _pipeline(
                agent,
                batches,
                shutdown=shutdown,
                reload=reload,
                load=load,
                notifier=notifier,
                on_cycle=on_cycle,
                tick=tick,
                graceful_timeout=graceful_timeout,
            )
        finally:
            if metrics is not None:
                metrics.close()
    finally:
        outbox.close()
    return next_config


async def _pipeline(
    agent: Agent,
    batches: asyncio.Queue[Batch],
    *,
    shutdown: asyncio.Event,
    reload: asyncio.Event | None,
    load: Callable[[], Config] | None,
    notifier: Notifier,
    on_cycle: Callable[[Agent], None] | None,
    tick: float,
    graceful_timeout: float,
) -> Config | None:
    pollers, publisher, gateway = agent.pollers, agent.publisher, agent.gateway
    stop_polling = asyncio.Event()
    stop_publishing = asyncio.Event()
    next_config: Config | None = None
    progress = Progress(notifier.watchdog) if notifier.watchdog else None
    ready = False
    next_health = next_pet = 0.0

    async with asyncio.TaskGroup() as group:
        poll_tasks = [
            group.create_task(
                _supervised(
                    f"poll-{p.device.name}",
                    functools.partial(_poll, p, stop_polling),
                    agent,
                    stop_polling,
                ),
                name=f"poll-{p.device.name}",
            )
            for p in pollers
        ]
        if publisher is not None:
            group.create_task(
                _supervised(
                    "publisher",
                    lambda: publisher.run(stop_publishing, drain_timeout=graceful_timeout),
                    agent,
                    stop_publishing,
                ),
                name="publisher",
            )
        log.info(
            "massgate running: %d devices, %d streams, %d nodes",
            len(pollers),
            len(gateway.streams),
            len(gateway.nodes),
        )
        while not shutdown.is_set():
            _guarded_cycle(agent, batches)
            now = time.monotonic()
            if now >= next_health:
                next_health = now + SNAPSHOT_EVERY
                agent.health = snapshot(agent, started=agent.started)
                line = summary_line(agent.health)
                if ready:
                    notifier.status(line)
                else:
                    # The pipeline has run one whole cycle: systemd may call it started.
                    notifier.ready(line)
                    ready = True
            if progress is not None and now >= next_pet and progress.check(agent, now) is None:
                notifier.pet()
                next_pet = now + progress.limit / 4
            if reload is not None and reload.is_set():
                reload.clear()
                next_config = _reload(agent, load, notifier)
                if next_config is not None:
                    break
                # `massgate status` shows the refusal from now on.
                agent.health = snapshot(agent, started=agent.started)
            if on_cycle is not None:
                on_cycle(agent)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(shutdown.wait(), timeout=tick)
        if next_config is None:
            notifier.stopping()
            log.info("stopping: polling ends, totals and outbox are flushed")
        else:
            log.info("reloading: polling ends, totals and outbox are flushed")
        stop_polling.set()
        # Bounded like the rest of shutdown: a poller stuck in a read is cancelled.
        _, late = await asyncio.wait(poll_tasks, timeout=graceful_timeout)
        for task in late:
            task.cancel()
        if late:
            log.warning("stopping: %d pollers did not stop in time and were cancelled", len(late))
            await asyncio.gather(*late, return_exceptions=True)
        for drivers in agent.opened:
            await drivers.close()
        try:
            _process(agent, batches, final=True)
        except Exception:  # the last cycle too: logged, and the stop goes on
            log.exception("the final processing cycle failed; what it made stays unsaved")
        if on_cycle is not None:
            on_cycle(agent)
        if publisher is not None and next_config is not None:
            # A reload does not wait for the outbox to drain: the records stay committed and
            # the next pipeline sends them; meanwhile its polling would be stopped.
            publisher.skip_drain = True
        stop_publishing.set()
    return next_config


def _reload(agent: Agent, load: Callable[[], Config] | None, notifier: Notifier) -> Config | None:
    """The new configuration if it is valid; otherwise None, with every problem logged."""
    source = agent.config.source
    if load is None:
        log.warning("reload asked for, but this agent was not started from a file; ignored")
        return None
    try:
        config = load()
    except ConfigError as exc:
        for problem in exc.problems:
            log.error("reload refused: %s", problem)
        agent.reload_error = (
            f"{len(exc.problems)} problem(s) in {source}; still running the configuration "
            "loaded before"
        )
        log.error("reload refused: %s", agent.reload_error)
        notifier.status(f"reload refused: {agent.reload_error}")
        return None
    except OSError as exc:
        agent.reload_error = f"cannot read {source}: {exc.strerror or exc}"
        log.error("reload refused: %s; still running the configuration loaded before", exc)
        notifier.status(f"reload refused: {agent.reload_error}")
        return None
    cannot = _preflight(agent, config)
    if cannot is not None:
        agent.reload_error = f"{config.source} is valid but cannot run here: {cannot}"
        log.error(
            "reload refused: %s; still running the configuration loaded before",
            agent.reload_error,
        )
        notifier.status(f"reload refused: {agent.reload_error}")
        return None
    agent.reload_error = None
    log.info("reload: %s is valid; the pipeline restarts with it (totals are kept)", source)
    notifier.reloading()
    return config


def _preflight(agent: Agent, new: Config) -> str | None:
    """What would stop `new` from starting, tried while the old pipeline still runs.

    A valid file can still name what this machine will not give: a database that does not
    open, a metrics port another program holds, a serial port that is not there, a state
    directory another agent holds. Each is tried here, where only what `new` changes and
    the running agent does not already hold is tried.
    """
    old = agent.config
    try:
        if agent.locks is not None:
            agent.locks.hold(locks_of(new))
        if new.mqtt is not None and any(b.tls for b in new.mqtt.brokers):
            preflight.tls_context(
                ca_file=new.mqtt.ca_file,
                client_cert=new.mqtt.client_cert,
                client_key=new.mqtt.client_key,
            )
        if new.outbox.path != old.outbox.path:
            connection = sqlite3.connect(new.outbox.path, timeout=1.0)
            try:
                connection.execute("PRAGMA schema_version").fetchone()
            finally:
                connection.close()
        if new.health.metrics is not None and new.health.metrics != old.health.metrics:
            _try_bind(*new.health.metrics)
        for package in sorted({d.driver for d in new.devices}):
            problem = BY_PACKAGE[package].config().start_problem(new.devices, old.devices)
            if problem is not None:
                return str(problem)
    except _REFUSALS as exc:
        return _why(exc)
    except Exception as exc:  # AlreadyRunning and whatever a library raises: refuse, not die
        return str(exc) or type(exc).__name__
    return None


def _try_bind(host: str, port: int) -> None:
    if (exc := preflight.bind_refused(host, port)) is not None:
        raise OSError(exc.errno, f"metrics endpoint {host}:{port}: {exc.strerror}")


def _why(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        where = f" ({exc.filename})" if exc.filename else ""
        return f"{exc.strerror}{where}"
    return str(exc) or type(exc).__name__


def _topic_health(snap: dict[str, Any]) -> dict[str, Any]:
    """The health fields the status topic adds to its own outbox and link figures."""
    keys = ("devices", "streams", "nodes", "alarms_active", "started", "reload_refused")
    return {k: snap[k] for k in keys if k in snap}


def _carry_health(pollers: list[Poller], carried: dict[str, DeviceHealth]) -> None:
    kept = {}
    for p in pollers:
        old = carried.get(p.device.name)
        if old is not None and old.endpoint == p.health.endpoint and not old.stopped:
            old.stall_after = p.health.stall_after
            old.beat()
            p.health = old
        kept[p.device.name] = p.health
    carried.clear()
    carried.update(kept)


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


def _open_pollers(config: Config, emit: Callable[[Batch], None]) -> list[Opened]:
    """Each driver the configuration uses, and only those: asyncua takes a second to import
    on a Raspberry Pi, pymodbus half of one."""
    opened: list[Opened] = []
    for package in dict.fromkeys(d.driver for d in config.devices):
        mine = [d for d in config.devices if d.driver == package]
        opened.append(BY_PACKAGE[package].open_pollers()(mine, emit=emit))
    return opened


RESTART_FIRST = 1.0  # s before a task that raised is started again; doubles ...
RESTART_MAX = 60.0  # ... up to this; a task that then ran a minute starts from the first again


async def _supervised(
    name: str, start: Callable[[], Any], agent: Agent, stop: asyncio.Event
) -> None:
    """Run `start()` until it returns; restart it with backoff after an unexpected exception.

    One bad device, record or broker must not end the process (DESIGN, "runtime"): the first
    failure of a task is logged with its traceback, later ones in one line; every one is
    counted in `agent.restarts` for `massgate status`.
    """
    delay = RESTART_FIRST
    while True:
        began = time.monotonic()
        try:
            await start()
            return
        except Exception as exc:
            count = agent.restarts.get(name, 0) + 1
            agent.restarts[name] = count
            if time.monotonic() - began > RESTART_MAX:
                delay = RESTART_FIRST
            if count == 1:
                log.exception("%s failed unexpectedly; restarting it in %g s", name, delay)
            else:
                log.error("%s failed again (%d restarts): %r; restarting in %g s",
                          name, count, exc, delay)  # fmt: skip
        if stop.is_set():
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=delay)
        if stop.is_set():
            return
        delay = min(delay * 2, RESTART_MAX)


def _guarded_cycle(agent: Agent, batches: asyncio.Queue[Batch]) -> None:
    """One processing cycle; an unexpected exception is logged, counted and the next cycle
    tries again (the records it made are kept for it, see _process)."""
    try:
        _process(agent, batches, final=False)
    except Exception as exc:
        count = agent.restarts.get("cycle", 0) + 1
        agent.restarts["cycle"] = count
        if count == 1:
            log.exception("the processing cycle failed unexpectedly; the next one tries again")
        elif count % 100 == 0:
            log.error("the processing cycle failed again (%d times): %r", count, exc)


async def _poll(poller: Poller, stop: asyncio.Event) -> None:
    try:
        await poller.run(stop)
    except FatalError as exc:
        # One misconfigured device must not stop the others; it stays down and says why.
        poller.health.stop(str(exc))


def _process(agent: Agent, batches: asyncio.Queue[Batch], *, final: bool) -> None:
    while True:
        try:
            agent.gateway.ingest(batches.get_nowait())
        except asyncio.QueueEmpty:
            break
    mono = time.monotonic()
    agent.gateway.cycle(mono, time.time(), final=final)
    records, totals = agent.gateway.take_pending(mono)
    # Group commit: one transaction per cycle for its records and the totals they report.
    try:
        agent.outbox.put(records, totals=totals)
    except BaseException:
        # Not committed: the records go again with the next cycle, never lost on the way.
        agent.gateway.pending[:0] = records
        raise
    if any(r.kind == "hourly" for r in records):
        agent.outbox.prune_archive("hourly", time.time() - agent.config.hourly_retention)
        # Balance records are many (one per node a minute): pruned once an hour, like hourly.
        for kind in ("balance", "alarm", "reconciliation"):
            agent.outbox.prune_archive(kind, time.time() - agent.config.balance_retention)
    if agent.publisher is not None and records:
        agent.publisher.wake(max(r.priority for r in records))
