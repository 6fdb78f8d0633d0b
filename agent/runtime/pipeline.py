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
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from massgate.drivers import BY_PACKAGE
from massgate.drivers.base import Opened, Poller
from massgate.drivers.health import DeviceHealth

from ..config import Config
from ..core.samples import Batch
from ..core.yamlsource import ConfigError
from ..publish.status import LinkStatus

if TYPE_CHECKING:
    from ..publish.publisher import Publisher
from ..store.outbox import Outbox
from ..store.writer import Writer
from ..totalize.engine import Engine, kernels_for, warmed
from ..totalize.manual import History
from ..totalize.streams import StreamTotal
from .commandserver import CommandServer, command_socket
from .gateway import Gateway, outbox_reset_record
from .health import SNAPSHOT_EVERY, Progress, snapshot, summary_line
from .refusal import REFUSALS, StartError, preflight_reload, why
from .sdnotify import Notifier
from .statelock import StateLocks, locks_of
from .statusserver import StatusServer
from .supervise import guarded_cycle, poll_device, process_batches, supervised

log = logging.getLogger(__name__)

TICK = 0.25  # s between processing cycles
GRACEFUL_TIMEOUT = 10.0  # s for the publisher to drain at shutdown


@dataclass
class Carried:
    """What a reload hands from one run to the next in the same process."""

    devices: dict[str, DeviceHealth] = field(default_factory=dict)
    streams: dict[str, StreamTotal] = field(default_factory=dict)
    histories: dict[str, History] = field(default_factory=dict)  # compared streams' 12 h
    link: LinkStatus | None = None


@dataclass
class Agent:
    """Handles the running parts, for the demo's table, status and tests."""

    config: Config
    gateway: Gateway
    outbox: Outbox
    pollers: list[Poller]
    publisher: Publisher | None
    writer: Writer  # the outbox's SQLite calls while the pipeline runs
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
    machine can also run (its database opens, its ports are free, see `preflight_reload`) ends this
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
        commands = CommandServer(command_socket(config.health.socket))
        try:
            try:
                await commands.start()
            except OSError as exc:
                raise StartError(
                    f"cannot open the command socket {commands.path}: {exc.strerror or exc}"
                ) from None
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
                commands=commands,
                carried=Carried() if carried is None else carried,
                locks=locks,
                refused=refused,
            )
        finally:
            await commands.close()
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
    commands: CommandServer,
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
    except REFUSALS as exc:
        raise StartError(f"cannot open the outbox {config.outbox.path}: {why(exc)}") from None
    # From the pipeline's first cycle to its last, the outbox is this thread's alone.
    writer = Writer()
    try:
        if outbox.reset is not None:
            outbox_reset_record(outbox)
        # Damage found while running: a new database, the alarm, and the pipeline goes on
        # (the totals in memory are saved into the new file with the next cycle).
        outbox.on_reset = lambda: outbox_reset_record(outbox)
        gateway = Gateway(config, outbox, carried=carried.streams, histories=carried.histories)
        batches: asyncio.Queue[Batch] = asyncio.Queue()
        opened = _open_pollers(config, batches.put_nowait)
        pollers = [poller for o in opened for poller in o.pollers]
        _carry_health(pollers, carried.devices)
        publisher = None
        if config.mqtt is not None and config.mqtt.brokers:
            try:
                # paho only for an agent that publishes.
                from ..publish.publisher import Publisher  # noqa: PLC0415

                publisher = Publisher(
                    outbox,
                    config.mqtt,
                    config.gateway.site,
                    config.gateway.id,
                    drain_rate=config.outbox.drain_rate,
                    writer=writer,
                )
            except REFUSALS as exc:
                raise StartError(f"cannot set up TLS for the broker: {why(exc)}") from None
            if carried.link is not None:  # the figures of the run before a reload go on
                before = carried.link
                publisher.status.last_publish = before.last_publish
                publisher.status.published = before.published
                publisher.status.acked = before.acked
                publisher.status.connects = before.connects
            carried.link = publisher.status
        else:
            log.warning("no MQTT broker configured: records are kept in the outbox %s", outbox.path)
        agent = Agent(
            config, gateway, outbox, pollers, publisher, writer, started=started, opened=opened
        )
        agent.reload_error = refused
        agent.locks = locks
        if publisher is not None:
            # The status topic carries the same health as `massgate status`.
            publisher.health = lambda: _topic_health(agent.health)
        server.get = lambda: agent.health
        commands.handle, commands.committed = gateway.command, gateway.committed
        if publisher is not None and publisher.commands is not None:
            # mqtt.commands: the same handler, answered alike once on the disk
            publisher.commands.handle = gateway.command
            publisher.commands.committed = gateway.committed
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
                    raise StartError(f"cannot serve metrics on {host}:{port}: {why(exc)}") from None
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
        commands.idle()
        writer.close()  # every call handed over is done; the outbox is the loop's again
        outbox.close()
    return next_config


async def _load_engine(gateway: Gateway, stop: asyncio.Event) -> None:
    """numba's kernels, loaded on a thread once the first values are out.

    Until then the Python twins integrate (the same bits): importing numba and loading its
    kernels takes most of a second of a core with a warm cache (tens of seconds cold, on a
    Raspberry Pi), and neither the first polls nor the first values wait for it. The thread
    is a daemon: a stop does not wait for a compile either.
    """
    name = gateway.wanted_engine
    assert name is not None
    config = gateway.config
    kernels = kernels_for(config.streams, config.inventories)  # numba's memory is per kernel
    loop = asyncio.get_running_loop()
    stopped = asyncio.ensure_future(stop.wait())
    first = asyncio.ensure_future(gateway.first_values.wait())
    done: asyncio.Future[Engine | BaseException] = loop.create_future()

    def settle(result: Engine | BaseException) -> None:
        if not done.done():
            done.set_result(result)

    def load() -> None:
        try:
            result: Engine | BaseException = warmed(name, kernels)
        except Exception as exc:  # a damaged cache, an llvmlite that will not load
            result = exc
        with contextlib.suppress(RuntimeError):  # the agent stopped meanwhile: nobody waits
            loop.call_soon_threadsafe(settle, result)

    try:
        await asyncio.wait({stopped, first}, return_when=asyncio.FIRST_COMPLETED)
        if stop.is_set():
            return
        threading.Thread(target=load, name="numba-load", daemon=True).start()
        either: set[asyncio.Future[Any]] = {stopped, done}
        await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)
        if not done.done():
            return
        result = done.result()
        if isinstance(result, BaseException):
            log.error(
                "numba's kernels could not be loaded (%r): the totalizer goes on with its Python "
                "engine, the same kilograms with more CPU",
                result,
            )
            return
        gateway.use_engine(result)
        log.info("totalizer: numba's kernels loaded; they integrate from this cycle on")
    finally:
        stopped.cancel()
        first.cancel()


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
                supervised(
                    f"poll-{p.device.name}",
                    functools.partial(poll_device, p, stop_polling),
                    agent,
                    stop_polling,
                ),
                name=f"poll-{p.device.name}",
            )
            for p in pollers
        ]
        if publisher is not None:
            group.create_task(
                supervised(
                    "publisher",
                    lambda: publisher.run(stop_publishing, drain_timeout=graceful_timeout),
                    agent,
                    stop_publishing,
                ),
                name="publisher",
            )
        if gateway.wanted_engine is not None:
            group.create_task(_load_engine(gateway, stop_polling), name="engine")
        log.info(
            "massgate running: %d devices, %d streams, %d nodes",
            len(pollers),
            len(gateway.streams),
            len(gateway.nodes),
        )
        while not shutdown.is_set():
            await guarded_cycle(agent, batches)
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
        # A command taken from here on would miss the last commit: refused, said why.
        gateway.stopping = True
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
            await process_batches(agent, batches, final=True)
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
    cannot = preflight_reload(agent, config)
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


def _open_pollers(config: Config, emit: Callable[[Batch], None]) -> list[Opened]:
    """Each driver the configuration uses, and only those: asyncua takes a second to import
    on a Raspberry Pi, pymodbus half of one."""
    opened: list[Opened] = []
    for package in dict.fromkeys(d.driver for d in config.devices):
        mine = [d for d in config.devices if d.driver == package]
        opened.append(BY_PACKAGE[package].open_pollers()(mine, emit=emit))
    return opened
