"""`massgate bench outbox`: durable enqueue, drain to a TLS Mosquitto next to raw paho, and
the time a large backlog takes to drain.

Everything runs in one process against one local Mosquitto (started with its own throw-away
certificates), so the two drain figures are measured on the same machine at the same time.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import ssl
import statistics
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from ..config import DEFAULT_DRAIN_RATE, BrokerEndpoint, MqttConfig
from ..core.records import Record
from ..publish.publisher import Publisher
from ..store.outbox import Outbox
from ..store.writer import Writer
from .localbroker import LOOPBACK, BrokerUnavailable, LocalBroker, Mosquitto, free_port

BIG = 4 << 30  # an outbox bound the benchmark never reaches (4 GiB)


def telemetry(points: int, i: int) -> Record:
    """A telemetry record like the agent's: `points` values with their quality."""
    body = {
        "points": {
            f"dev{i % 50:02d}.v{p:02d}": {"value": 1234.5678 + p + i * 1e-3, "quality": "good"}
            for p in range(points)
        }
    }
    return Record("telemetry", body, 1_800_000_000.0 + i)


@dataclass(frozen=True)
class Enqueue:
    batch: int
    records: int
    seconds: float

    @property
    def per_second(self) -> float:
        return self.records / self.seconds


def bench_enqueue(directory: Path, *, batch: int, seconds: float, points: int) -> Enqueue:
    """Records/s committed with `batch` records per transaction, at the default durability."""
    box = Outbox(directory / f"enqueue-{batch}.sqlite", max_bytes=BIG, site="b", gateway="g")
    records = [telemetry(points, i) for i in range(batch)]
    done = 0
    start = time.perf_counter()
    deadline = start + seconds
    while time.perf_counter() < deadline:
        box.put(records, sync=True)
        done += batch
    elapsed = time.perf_counter() - start
    box.close()
    return Enqueue(batch, done, elapsed)


def fill(path: Path, records: int, points: int, chunk: int = 10_000) -> Outbox:
    box = Outbox(path, max_bytes=BIG, site="b", gateway="g")
    for start in range(0, records, chunk):
        box.put([telemetry(points, i) for i in range(start, min(records, start + chunk))])
    box.sync()  # all of it sendable from the start of the drain
    return box


def mqtt_config(broker: LocalBroker | Mosquitto, in_flight: int) -> MqttConfig:
    return MqttConfig(
        brokers=(BrokerEndpoint(host=LOOPBACK, port=broker.port, tls=True),),
        ca_file=broker.ca,
        client_cert=None,
        client_key=None,
        protocol="5",
        keepalive=30.0,
        topic_prefix="massgate",
        in_flight=in_flight,
        username=None,
        password_file=None,
        password_env=None,
        client_id="massgate-bench",
        status_interval=60.0,
    )


def drain_ours(box: Outbox, config: MqttConfig, *, drain_rate: float = 0.0) -> float:
    """Seconds from start until the outbox is empty (every record PUBACKed), with the outbox
    on a writer thread as the agent runs it."""
    writer = Writer()
    publisher = Publisher(box, config, "b", "g", drain_rate=drain_rate, writer=writer)

    async def main() -> float:
        stop = asyncio.Event()
        start = time.perf_counter()
        task = asyncio.create_task(publisher.run(stop))
        while box.depth() > 0:
            if task.done():
                raise RuntimeError(f"the publisher stopped: {publisher.status.last_error}")
            await asyncio.sleep(0.02)
        elapsed = time.perf_counter() - start
        stop.set()
        await task
        return elapsed

    try:
        return asyncio.run(main())
    finally:
        writer.close()


STALL_TICK = 0.01  # s: the timer whose lateness is the event loop's stall
CYCLE = 0.25  # s between the agent's processing cycles


def outage_stall(box: Outbox, config: MqttConfig, *, seconds: float, points: int) -> float:
    """The longest event-loop stall (s) while the backlog in `box` waits out an outage.

    What the agent's loop does then: a cycle's telemetry committed every CYCLE, the oldest
    record's age looked up every second (the status), and the publisher trying a broker
    that is not there; a 10 ms timer measures how late the loop runs it. The commits go to
    the outbox's writer thread, as the agent's do.
    """
    writer = Writer()
    publisher = Publisher(box, config, "b", "g", writer=writer)

    async def main() -> float:
        stop = asyncio.Event()
        task = asyncio.create_task(publisher.run(stop, drain_timeout=0.0))
        loop = asyncio.get_running_loop()
        worst = 0.0

        async def ticker() -> None:
            nonlocal worst
            while not stop.is_set():
                before = loop.time()
                await asyncio.sleep(STALL_TICK)
                worst = max(worst, loop.time() - before - STALL_TICK)

        timer = asyncio.create_task(ticker())
        end = loop.time() + seconds
        i, next_status = 0, 0.0
        while loop.time() < end:
            await writer.call(box.put, [telemetry(points, 10_000_000 + i)])
            await writer.call(box.flush)
            i += 1
            if loop.time() >= next_status:
                box.oldest_age()
                next_status = loop.time() + 1.0
            await asyncio.sleep(CYCLE)
        stop.set()
        await timer
        await task
        return worst

    try:
        return asyncio.run(main())
    finally:
        writer.close()


def drain_raw(payloads: list[tuple[str, bytes]], config: MqttConfig) -> float:
    """Raw paho: its own loop thread and queue, the same window, the same messages."""
    client = mqtt.Client(
        callback_api_version=CallbackAPIVersion.VERSION2,
        client_id="massgate-bench-raw",
        protocol=mqtt.MQTTv5,
    )
    context = ssl.create_default_context(cafile=str(config.ca_file))
    client.tls_set_context(context)
    client.max_inflight_messages_set(config.in_flight)
    client.max_queued_messages_set(0)
    connected = threading.Event()
    finished = threading.Event()
    acked = 0

    def on_publish(c: mqtt.Client, u: object, mid: int, rc: object, p: object) -> None:
        nonlocal acked
        acked += 1
        if acked == len(payloads):
            finished.set()

    client.on_connect = lambda c, u, f, rc, p: connected.set()
    client.on_publish = on_publish
    start = time.perf_counter()
    client.connect(LOOPBACK, config.brokers[0].port, keepalive=30)
    client.loop_start()
    try:
        if not connected.wait(10):
            raise RuntimeError("raw paho did not connect")
        for topic, payload in payloads:
            client.publish(topic, payload, qos=1)
        if not finished.wait(600):
            raise RuntimeError(f"raw paho: only {acked} of {len(payloads)} acknowledged")
        return time.perf_counter() - start
    finally:
        client.disconnect()
        client.loop_stop()


@dataclass(frozen=True)
class OutboxFigures:
    enqueue: list[Enqueue]
    messages: int
    points: int
    ours_s: float
    raw_s: float
    limited_s: float | None
    backlog: int
    backlog_fill_s: float
    backlog_drain_s: float
    backlog_bytes: int
    outage_stall_s: float  # longest event-loop stall with the backlog waiting out an outage


def bench_outbox(
    *,
    messages: int = 50_000,
    backlog: int = 1_000_000,
    points: int = 10,
    in_flight: int = 20,
    seconds: float = 2.0,
    rounds: int = 3,
    directory: Path | None = None,
) -> OutboxFigures:
    with tempfile.TemporaryDirectory(prefix="massgate-bench-", dir=directory) as tmp:
        work = Path(tmp)
        enqueue = [
            bench_enqueue(work, batch=b, seconds=seconds, points=points) for b in (1, 10, 100, 1000)
        ]
        with LocalBroker() as broker:
            config = mqtt_config(broker, in_flight)
            # Alternating rounds, medians: the broker and both clients share this machine's
            # cores, and one round of either can be unlucky.
            raw_runs, ours_runs = [], []
            for i in range(rounds):
                box = fill(work / f"drain-{i}.sqlite", messages, points)
                payloads = [(m.topic, m.payload) for m in box.take(messages)]
                raw_runs.append(drain_raw(payloads, config))
                ours_runs.append(drain_ours(box, config))
                box.close()
            raw_s, ours_s = statistics.median(raw_runs), statistics.median(ours_runs)
            limited_s = None
            limited_n = int(DEFAULT_DRAIN_RATE * 5)
            if messages >= limited_n:
                box = fill(work / "limited.sqlite", limited_n, points)
                limited_s = drain_ours(box, config, drain_rate=DEFAULT_DRAIN_RATE)
                box.close()
            start = time.perf_counter()
            box = fill(work / "backlog.sqlite", backlog, points)
            fill_s = time.perf_counter() - start
            size = box.size()
            # The broker gone (a port nobody listens on): the backlog waits out an outage.
            gone = dataclasses.replace(
                config, brokers=(BrokerEndpoint(host=LOOPBACK, port=free_port(), tls=True),)
            )
            stall_s = outage_stall(box, gone, seconds=seconds * 5, points=points)
            drain_s = drain_ours(box, config)
            box.close()
    return OutboxFigures(
        enqueue,
        messages,
        points,
        ours_s,
        raw_s,
        limited_s,
        backlog,
        fill_s,
        drain_s,
        size,
        stall_s,
    )


def figures_for(args: argparse.Namespace) -> OutboxFigures:
    """bench_outbox with the command line's options."""
    return bench_outbox(
        messages=args.messages,
        backlog=args.backlog,
        points=args.readings,
        in_flight=args.in_flight,
        seconds=args.seconds,
        rounds=args.rounds,
    )


def cmd_bench_outbox(args: argparse.Namespace) -> int:
    print(
        f"massgate bench outbox: telemetry messages of {args.readings} readings; TLS Mosquitto "
        f"on loopback; QoS 1 with {args.in_flight} in flight; outbox synchronous=FULL (WAL)"
    )
    try:
        f = figures_for(args)
    except BrokerUnavailable as exc:
        print(f"error: {exc}")
        return 2
    print("durable enqueue (one transaction, one disk sync per put):")
    print(f"  {'records/put':>12}{'records/s':>12}{'puts/s':>10}")
    for e in f.enqueue:
        print(f"  {e.batch:>12}{e.per_second:>12.0f}{e.per_second / e.batch:>10.0f}")
    ours, raw = f.messages / f.ours_s, f.messages / f.raw_s
    print(
        f"drain of {f.messages} messages (start, connect, until every PUBACK), median of "
        f"{args.rounds} alternating rounds:"
    )
    print(f"  {'':<34}{'messages/s':>12}{'readings/s':>12}")
    print(f"  {'massgate (outbox → broker, delete)':<34}{ours:>12.0f}{ours * f.points:>12.0f}")
    print(f"  {'raw paho (same messages, same window)':<34}{raw:>12.0f}{raw * f.points:>12.0f}")
    print(f"  massgate drains at {ours / raw:.0%} of raw paho")
    if f.limited_s is not None:
        n = int(DEFAULT_DRAIN_RATE * 5)
        print(
            f"  with the default drain_rate ({DEFAULT_DRAIN_RATE:g}/s): {n / f.limited_s:.0f} "
            "messages/s"
        )
    print(
        f"backlog of {f.backlog} records ({f.backlog_bytes / 1e6:.0f} MB): written in "
        f"{f.backlog_fill_s:.1f} s, drained in {f.backlog_drain_s:.1f} s "
        f"({f.backlog / f.backlog_drain_s:.0f} messages/s, drain_rate unlimited)"
    )
    print(
        f"with that backlog waiting out an outage (a cycle's telemetry every {CYCLE:g} s, the "
        f"status every second, the broker gone): the longest event-loop stall was "
        f"{f.outage_stall_s * 1000:.0f} ms"
    )
    return 0


def add_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("outbox")
    g.add_argument(
        "--messages", type=int, default=50_000, help="outbox: messages drained (default 50000)"
    )
    g.add_argument(
        "--backlog",
        type=int,
        default=1_000_000,
        help="outbox: records in the backlog drained at the end (default 1000000)",
    )
    g.add_argument(
        "--readings", type=int, default=10, help="outbox: readings per message (default 10)"
    )
    g.add_argument("--rounds", type=int, default=3, help="outbox: drain rounds of each (default 3)")
    g.add_argument(
        "--in-flight", type=int, default=20, help="outbox: QoS 1 messages in flight (default 20)"
    )
