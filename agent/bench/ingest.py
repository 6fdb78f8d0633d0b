"""`massgate bench ingest`: records/s from the broker into PostgreSQL, next to a plain psycopg
COPY of the same rows, and the unexplained gaps after a broker restart and a SIGKILL.

Everything is started here: a throw-away PostgreSQL (localdb.py), a TLS Mosquitto with
persistence (so that the ingest's session and what waits in it survive the restart), and
`massgate ingest run` as a child process, as in the field.

- Throughput: the ingest subscribes once and stops; a backlog of agent records is published
  into its session; the ingest is started again and timed from its connection (CONNACK) to
  its last stored record (its start-up is not counted).
- COPY: the same rows into a table of the same shape, in one transaction, with psycopg.
- Faults: a gateway's publisher drains an outbox through the ingest while the broker is
  restarted once and the ingest is SIGKILLed once and started again; then the accounting must
  show no unexplained gap and every record stored once.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from ..store.outbox import Outbox
from .localbroker import LOOPBACK, BrokerUnavailable, Mosquitto
from .localdb import DatabaseUnavailable, LocalPostgres
from .outbox import fill, mqtt_config
from .pki import make_pki

WAIT = 300.0  # s: the longest any step may take before the bench gives up
STORED = "SELECT coalesce(sum(received - duplicates), 0)::bigint FROM massgate.arrivals"


class BenchFailed(RuntimeError):
    """A step did not finish; the message says which."""


@dataclass(frozen=True)
class IngestFigures:
    records: int
    points: int
    ingest_per_s: float
    copy_per_s: float
    fault_records: int
    stored: int
    duplicates: int
    unexplained: int


def _until(condition: Callable[[], bool], what: str, limit: float = WAIT) -> None:
    deadline = time.monotonic() + limit
    while not condition():
        if time.monotonic() > deadline:
            raise BenchFailed(f"{what}: not within {limit:g} s")
        time.sleep(0.02)


class _Counter:
    """Rows in a table, read over one connection kept for the whole phase: a connection per
    look would start a PostgreSQL backend every 20 ms beside the ingest being timed."""

    def __init__(self, url: str) -> None:
        import psycopg  # noqa: PLC0415  # the ingest extra; `massgate bench --help` goes without

        self._conn = psycopg.connect(url, autocommit=True)

    def __call__(self, sql: str = "SELECT count(*) FROM massgate.records") -> int:
        import psycopg  # noqa: PLC0415

        try:
            row = self._conn.execute(sql).fetchone()
        except psycopg.errors.UndefinedTable:
            return 0  # the ingest has not made its schema yet
        return int(row[0]) if row else 0

    def __enter__(self) -> _Counter:
        return self

    def __exit__(self, *exc: object) -> None:
        self._conn.close()


class _Ingest:
    """`massgate ingest run` as a child process, its output in a file."""

    def __init__(self, work: Path, broker: Mosquitto, url: str, client_id: str) -> None:
        self.config = work / f"{client_id}.yaml"
        self.log = work / f"{client_id}.log"
        self.config.write_text(
            "mqtt:\n"
            f"  brokers: [mqtts://{LOOPBACK}:{broker.port}]\n"
            f"  ca_file: {broker.pki.ca}\n"
            f"  client_id: {client_id}\n"
            "database:\n"
            f"  url: {url}\n"
        )
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        command = [sys.executable, "-m", "massgate.agent.commands.cli", "ingest", "run"]
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(
                [*command, str(self.config)],
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )

    def connects(self) -> int:
        """How many times it has been connected (CONNACK) since the bench began."""
        return self.log.read_text().count("ingest: connected") if self.log.exists() else 0

    def sessions(self) -> int:
        """How many times it has subscribed (SUBACK) since the bench began."""
        return self.log.read_text().count("ingest: subscribed") if self.log.exists() else 0

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        self.process = None


def _publish(broker: Mosquitto, payloads: list[tuple[str, bytes]]) -> None:
    """Raw paho at QoS 1: the backlog into the ingest's session at the broker."""
    client = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    client.tls_set(ca_certs=str(broker.pki.ca))
    client.max_inflight_messages_set(100)
    client.max_queued_messages_set(0)
    client.connect(LOOPBACK, broker.port)
    client.loop_start()
    try:
        infos = [client.publish(topic, payload, qos=1) for topic, payload in payloads]
        for info in infos:
            info.wait_for_publish(WAIT)
    finally:
        client.disconnect()
        client.loop_stop()


def _throughput(work: Path, broker: Mosquitto, db: LocalPostgres, box: Outbox, n: int) -> float:
    url = db.create_database("throughput")
    ingest = _Ingest(work, broker, url, "bench-ingest")
    marker = box.take(1)
    with _Counter(url) as count:
        ingest.start()
        try:
            # Subscribed, and a first record stored: then it stops, and its session collects.
            _until(lambda: ingest.sessions() >= 1, "the ingest's subscription")
            _publish(broker, [(m.topic, m.payload) for m in marker])
            _until(lambda: count() == 1, "the ingest's first record")
        finally:
            ingest.stop()
        payloads = [(m.topic, m.payload) for m in box.take(n + 1)[1:]]
        _publish(broker, payloads)
        ingest.start()
        try:
            # Timed from the CONNACK of the resumed session, after which the broker sends
            # what waits: the ingest's start-up is not counted. (Timing from the first batch
            # stored measured nothing when that one batch held the whole backlog.)
            _until(lambda: ingest.connects() >= 2, "the ingest's second connection")
            start = time.perf_counter()
            # Watched by the ingest's own count of what it stored (a row per gateway), not
            # by count(*) over the growing table: that scan, 50 times a second, took a
            # fifth of a core from the two being measured.
            _until(lambda: count(STORED) == n + 1, "the whole backlog")
            elapsed = time.perf_counter() - start
            if count() != n + 1:
                raise BenchFailed(
                    f"the ingest counted {n + 1} records stored, the table has {count()}"
                )
            return n / elapsed
        finally:
            ingest.stop()


def _copy(db: LocalPostgres, box: Outbox, n: int) -> float:
    """Plain psycopg: the same rows COPYed into a table of the same shape, one transaction."""
    import psycopg  # noqa: PLC0415

    url = db.create_database("copy")
    rows = []
    for m in box.take(n + 1)[1:]:
        _, site, gateway, kind = m.topic.rsplit("/", 3)
        rows.append((site, gateway, box.epoch, m.seq, kind, m.payload.decode()))
    with psycopg.connect(url) as conn:
        conn.execute(
            "CREATE TABLE records (site text, gateway text, epoch text, seq bigint, kind text, "
            "payload jsonb, received_at timestamptz DEFAULT now(), "
            "PRIMARY KEY (site, gateway, epoch, seq))"
        )
        conn.commit()
        start = time.perf_counter()
        with (
            conn.cursor() as cur,
            cur.copy("COPY records (site, gateway, epoch, seq, kind, payload) FROM STDIN") as copy,
        ):
            for row in rows:
                copy.write_row(row)
        conn.commit()
        return n / (time.perf_counter() - start)


def _faults(
    work: Path, broker: Mosquitto, db: LocalPostgres, n: int, points: int
) -> tuple[int, int, int]:
    """A gateway drains n records through the ingest; the broker is restarted at a third, the
    ingest SIGKILLed at two thirds. Returns (stored, duplicates, unexplained)."""
    from ..publish.publisher import Publisher  # noqa: PLC0415

    url = db.create_database("faults")
    ingest = _Ingest(work, broker, url, "bench-ingest-faults")
    box = fill(work / "faults.sqlite", n, points)
    config = mqtt_config(broker, 20)
    publisher = Publisher(box, config, "b", "g")
    stop = asyncio.Event()
    loop = asyncio.new_event_loop()
    thread = threading.Thread(
        target=loop.run_until_complete, args=(publisher.run(stop),), name="bench-publisher"
    )
    with _Counter(url) as count:
        ingest.start()
        try:
            _until(lambda: ingest.sessions() >= 1, "the ingest's session")
            thread.start()
            _until(lambda: count() >= n // 3, "a third of the records")
            broker.restart()
            _until(lambda: count() >= 2 * n // 3, "two thirds of the records")
            ingest.stop(signal.SIGKILL)
            ingest.start()
            _until(lambda: count() >= n, "every record")
            _until(lambda: box.depth() == 0, "the gateway's outbox empty")
        finally:
            loop.call_soon_threadsafe(stop.set)
            if thread.is_alive():
                thread.join(30)
            loop.close()
            ingest.stop()
            box.close()
        return (
            count("SELECT coalesce(sum(stored), 0) FROM massgate.accounting"),
            count("SELECT coalesce(sum(duplicates), 0) FROM massgate.accounting"),
            count("SELECT coalesce(sum(unexplained), 0) FROM massgate.accounting"),
        )


def bench_ingest(
    *, records: int = 50_000, fault_records: int = 20_000, points: int = 10
) -> IngestFigures:
    with tempfile.TemporaryDirectory(prefix="massgate-bench-ingest-") as tmp:
        work = Path(tmp)
        pki = make_pki(work / "pki")
        broker = Mosquitto(pki, work, pki.server_cert, pki.server_key, persistent=True)
        broker.start()
        try:
            with LocalPostgres() as db:
                box = fill(work / "backlog.sqlite", records + 1, points)
                try:
                    ingest_per_s = _throughput(work, broker, db, box, records)
                    copy_per_s = _copy(db, box, records)
                finally:
                    box.close()
                stored, duplicates, unexplained = _faults(work, broker, db, fault_records, points)
        finally:
            broker.stop()
    return IngestFigures(
        records, points, ingest_per_s, copy_per_s, fault_records, stored, duplicates, unexplained
    )


def figures_for(args: argparse.Namespace) -> IngestFigures:
    return bench_ingest(
        records=args.ingest_records, fault_records=args.fault_records, points=args.readings
    )


def cmd_bench_ingest(args: argparse.Namespace) -> int:
    print(
        f"massgate bench ingest: agent telemetry records of {args.readings} readings; TLS "
        "Mosquitto (persistent) and PostgreSQL on loopback; massgate ingest run as a process"
    )
    try:
        f = figures_for(args)
    except (BrokerUnavailable, DatabaseUnavailable, BenchFailed) as exc:
        print(f"error: {exc}")
        return 2
    print(f"  {'':<52}{'records/s':>12}")
    print(f"  {f'ingest, {f.records} records waiting at the broker':<52}{f.ingest_per_s:>12.0f}")
    print(f"  {'plain psycopg COPY of the same rows':<52}{f.copy_per_s:>12.0f}")
    print(
        f"faults: {f.fault_records} records through a broker restart and a SIGKILL of the "
        f"ingest: {f.stored} stored, {f.duplicates} duplicates (counted, not stored), "
        f"{f.unexplained} unexplained gaps"
    )
    return 0 if f.unexplained == 0 and f.stored == f.fault_records else 1


def add_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("ingest")
    g.add_argument(
        "--ingest-records",
        type=int,
        default=50_000,
        help="ingest: records waiting at the broker for the throughput run (default 50000)",
    )
    g.add_argument(
        "--fault-records",
        type=int,
        default=20_000,
        help="ingest: records through the broker restart and the SIGKILL (default 20000)",
    )
