"""`massgate ingest` against a real Mosquitto and a real PostgreSQL: stored before it is
acknowledged, once, and every sequence number accounted for."""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import subprocess
import sys
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import psycopg
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from massgate.agent.core.records import Record
from massgate.agent.core.yamlsource import ConfigError
from massgate.agent.ingest import config as ingest_config
from massgate.agent.ingest.consumer import Ingest
from massgate.agent.ingest.store import Incoming, Store
from massgate.agent.publish.publisher import Publisher
from massgate.agent.store.outbox import Outbox
from tests.conftest import Broker, mqtt_config, publish_until, until

EPOCH = "0123456789abcdef"


def write_config(tmp_path: Path, broker: Broker, database: str, **take: Any) -> Path:
    path = tmp_path / "ingest.yaml"
    lines = [
        "mqtt:",
        f"  brokers: [mqtts://127.0.0.1:{broker.port}]",
        f"  ca_file: {broker.pki.ca}",
        f"  client_id: ingest-{tmp_path.name[-20:]}",
        "database:",
        f"  url: {database}",
    ]
    if take:
        lines += ["take:", *(f"  {k}: {json.dumps(v)}" for k, v in take.items())]
    path.write_text("\n".join(lines) + "\n")
    return path


def count(database: str, sql: str = "SELECT count(*) FROM massgate.records") -> int:
    try:
        with psycopg.connect(database) as conn:
            row = conn.execute(sql).fetchone()
    except psycopg.errors.UndefinedTable:
        return 0  # not made yet
    return int(row[0]) if row else 0


class Running:
    """An Ingest on a thread of the test, stopped at the end."""

    def __init__(self, path: Path) -> None:
        self.ingest = Ingest(ingest_config.load(path))
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.ingest.run, args=(self.stop,), name="ingest")

    def __enter__(self) -> Ingest:
        self.thread.start()
        # Subscribed, not only connected: a record published before the SUBACK would go to
        # no session at all.
        assert self.ingest.subscribed.wait(30), self.ingest.counts.last_error
        return self.ingest

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(30)
        assert not self.thread.is_alive()


def records(n: int) -> list[Record]:
    kinds = ("telemetry", "totals", "alarm", "balance")
    return [Record(kinds[i % 4], {"i": i}, 1_800_000_000.0 + i) for i in range(n)]


def test_a_gateway_s_records_are_stored_once_and_every_number_is_accounted_for(
    broker: Broker, database: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    # Every record takes the bulk receive path (agent/ingest/receive.py), none paho's own.
    by_paho: list[int] = []
    original = mqtt.Client._handle_publish

    def spy(self: mqtt.Client) -> Any:
        by_paho.append(1)
        return original(self)

    monkeypatch.setattr(mqtt.Client, "_handle_publish", spy)
    with Running(write_config(tmp_path, broker, database)) as ingest:
        outbox = Outbox(":memory:", max_bytes=50_000_000, site="north", gateway="skid-1")
        seqs = outbox.put(records(400))
        payloads = [(m.topic, m.payload) for m in outbox.take(400)]
        publisher = Publisher(outbox, mqtt_config(broker.port, ca=broker.pki.ca), "north", "skid-1")
        publish_until(publisher, lambda: outbox.depth() == 0, limit=30)
        assert outbox.depth() == 0
        assert until(lambda: count(database) == 400)
        # The gateway sends them all again (a PUBACK lost with the link): duplicates.
        again = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        again.tls_set(ca_certs=str(broker.pki.ca))
        again.connect("127.0.0.1", broker.port)
        again.loop_start()
        infos = [again.publish(topic, payload, qos=1) for topic, payload in payloads]
        for info in infos:
            info.wait_for_publish(30)
        again.disconnect()
        again.loop_stop()
        assert until(lambda: ingest.counts.duplicates == 400)
        outbox.close()
    assert count(database) == 400
    with psycopg.connect(database) as conn:
        stored = [r[0] for r in conn.execute("SELECT seq FROM massgate.records ORDER BY seq")]
        assert stored == seqs
        row = conn.execute(
            "SELECT received, duplicates, stored, missing, unexplained "
            "FROM massgate.accounting WHERE site = 'north' AND gateway = 'skid-1'"
        ).fetchone()
        assert row == (800, 400, 400, 0, 0)
        status = conn.execute(
            "SELECT last_seq, depth FROM massgate.gateway_status WHERE gateway = 'skid-1'"
        ).fetchone()
        assert status is not None
        events = conn.execute("SELECT count(*) FROM massgate.mass_balance_events").fetchone()
        assert events == (100,)
    assert by_paho == []


def drain_killing(
    broker: Broker, database: str, gateway: str, victim: subprocess.Popen[bytes], n: int
) -> None:
    """A gateway drains n records to the broker while `victim` (an ingest process) is
    SIGKILLed once 300 are stored; returns when the broker has every one and the victim is
    gone."""
    outbox = Outbox(":memory:", max_bytes=200_000_000, site="north", gateway=gateway)
    outbox.put(records(n))
    # At most 2,000 a second: the kill at 300 stored comes while most are still to come.
    config = mqtt_config(broker.port, ca=broker.pki.ca)
    publisher = Publisher(outbox, config, "north", gateway, drain_rate=2000)
    killed = threading.Event()

    def kill_midway() -> None:
        if until(lambda: count(database) >= 300, limit=60):
            victim.send_signal(signal.SIGKILL)
        killed.set()

    killer = threading.Thread(target=kill_midway)
    killer.start()
    publish_until(publisher, lambda: outbox.depth() == 0, limit=60)
    killer.join(70)
    assert killed.is_set()
    assert victim.wait(10) == -signal.SIGKILL
    assert outbox.depth() == 0  # the broker took every one
    outbox.close()


def test_ingest_killed_midway_loses_nothing(broker: Broker, database: str, tmp_path: Path):
    """SIGKILL between a write and its PUBACKs: the broker sends again what was not
    acknowledged, and the database keeps one copy of each."""
    path = write_config(tmp_path, broker, database)
    command = [sys.executable, "-m", "massgate.agent.commands.cli", "ingest", "run", str(path)]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}

    logs = tmp_path / "ingest.log"

    def start() -> subprocess.Popen[bytes]:
        with logs.open("ab") as log:  # the child keeps its own copy of the descriptor
            return subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)

    first = start()
    try:
        # The session exists once the broker took the subscription.
        assert until(lambda: logs.exists() and "ingest: subscribed" in logs.read_text())
        n = 3000
        drain_killing(broker, database, "skid-2", first, n)
        assert count(database) < n  # the kill came midway
        second = start()
        try:
            assert until(lambda: count(database) == n, limit=90), count(database)
        finally:
            second.send_signal(signal.SIGTERM)
            assert second.wait(30) == 0, logs.read_text()
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    with psycopg.connect(database) as conn:
        row = conn.execute(
            "SELECT stored, missing, unexplained FROM massgate.accounting WHERE gateway = 'skid-2'"
        ).fetchone()
    assert row == (n, 0, 0)


def test_two_ingests_share_the_load_and_a_killed_one_loses_nothing(
    broker: Broker, database: str, tmp_path: Path
):
    """Two ingest processes on one MQTT shared subscription ($share/ingest/...), one SIGKILLed
    midway and started again (its session, with what was in flight to it, waits at the
    broker): every record stored, none twice."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    paths = []
    for name in ("a", "b"):
        folder = tmp_path / name
        folder.mkdir()
        paths.append(write_config(folder, broker, database, shared="ingest"))
    logs = [path.parent / "ingest.log" for path in paths]

    def start(path: Path) -> subprocess.Popen[bytes]:
        command = [sys.executable, "-m", "massgate.agent.commands.cli", "ingest", "run", str(path)]
        with (path.parent / "ingest.log").open("ab") as log:
            return subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)

    def said(log: Path) -> str:
        return log.read_text() if log.exists() else ""

    def sessions() -> int:
        """Subscriptions the broker took (SUBACK), over both processes and their restarts."""
        return sum(said(log).count("ingest: subscribed") for log in logs)

    running = [start(paths[0]), start(paths[1])]
    try:
        assert until(lambda: sessions() == 2)
        n = 3000
        drain_killing(broker, database, "skid-5", running[0], n)
        running[0] = start(paths[0])
        assert until(lambda: sessions() == 3)  # it resumed its session
        assert until(lambda: count(database) == n, limit=90), count(database)
    finally:
        for process in running:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        codes = [process.wait(30) for process in running]
    assert codes == [0, 0], said(logs[0]) + said(logs[1])
    with psycopg.connect(database) as conn:
        (stored,) = conn.execute(
            "SELECT count(*) FROM massgate.records WHERE gateway = 'skid-5'"
        ).fetchone() or (0,)
        (received,) = conn.execute(
            "SELECT received FROM massgate.arrivals WHERE gateway = 'skid-5'"
        ).fetchone() or (0,)
    assert stored == n
    assert received >= n
    # Shared: the one never killed took a part of the records, not all of them (as it would
    # with a subscription of its own).
    (acked,) = re.findall(r"(\d+) acknowledged", said(logs[1]))
    assert 0 < int(acked) < n


def test_what_is_not_a_record_is_kept_with_its_reason(
    broker: Broker, database: str, tmp_path: Path
):
    with Running(write_config(tmp_path, broker, database)):
        client = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        client.tls_set(ca_certs=str(broker.pki.ca))
        client.connect("127.0.0.1", broker.port)
        client.loop_start()
        bad = [
            ("massgate/north/skid-3/telemetry", b"\xff\xfe not json"),
            ("massgate/north/skid-3/telemetry", b'{"epoch": "0123456789abcdef"}'),
            ("massgate/north/skid-3/totals", b'{"epoch": "nope", "seq": 1}'),
            ("massgate/north/skid-3/totals", b'{"epoch": "0123456789abcdef", "seq": 1e400}'),
            (
                "massgate/north/skid-3/alarm",
                b'{"site": "south", "epoch": "0123456789abcdef", "seq": 1}',
            ),
            (
                "massgate/north/skid-3/alarm",
                b'{"epoch": "0123456789abcdef", "seq": 2, "x": "\\u0000"}',
            ),
            ("massgate/north/skid-3/alarm", b"[1, 2]"),
        ]
        for topic, payload in bad:
            client.publish(topic, payload, qos=1).wait_for_publish(30)
        client.publish(
            "massgate/north/skid-3/alarm",
            json.dumps({"epoch": EPOCH, "seq": 3, "kind": "alarm"}).encode(),
            qos=1,
        ).wait_for_publish(30)
        client.disconnect()
        client.loop_stop()
        assert until(lambda: count(database, "SELECT count(*) FROM massgate.rejects") == len(bad))
        assert until(lambda: count(database) == 1)
    with psycopg.connect(database) as conn:
        reasons = [r[0] for r in conn.execute("SELECT reason FROM massgate.rejects ORDER BY id")]
    assert reasons[0].startswith("not JSON")
    assert reasons[1].startswith("no sequence number")
    assert reasons[2].startswith("no epoch")
    assert reasons[3].startswith("no sequence number")
    assert "the payload 'south'" in reasons[4]
    assert "NUL" in reasons[5]
    assert "not a JSON object" in reasons[6]


def _record(seq: int, gateway: str = "skid-4") -> Incoming:
    body = {
        "schema": 1,
        "kind": "telemetry",
        "site": "north",
        "gateway": gateway,
        "epoch": EPOCH,
        "seq": seq,
    }
    return Incoming(f"massgate/north/{gateway}/telemetry", json.dumps(body).encode())


def _status(depth: int, last_seq: int, dropped: int = 0) -> Incoming:
    body = {
        "schema": 1,
        "kind": "status",
        "site": "north",
        "gateway": "skid-4",
        "status": "online",
        "outbox": {
            "depth": depth,
            "dropped": {"telemetry": dropped},
            "last_seq": last_seq,
            "epoch": EPOCH,
        },
    }
    return Incoming("massgate/north/skid-4/status", json.dumps(body).encode())


@pytest.mark.parametrize(
    ("depth", "dropped", "unexplained"), [(4, 0, 0), (2, 0, 2), (2, 1, 1), (0, 4, 0)]
)
def test_a_gap_is_explained_by_the_gateway_s_outbox_or_its_drops(
    database: str, depth: int, dropped: int, unexplained: int
):
    """1-5 and 8-10 arrived; 6, 7, 11 and 12 are missing (the status says 12 were made)."""
    store = Store(database, password=None, prefix="massgate")
    try:
        store.write([_record(s) for s in (1, 2, 3, 4, 5, 8, 9, 10)])
        store.write([_status(depth, 12, dropped)])
        (row,) = store.accounting()
    finally:
        store.close()
    assert (row["stored"], row["last_seq"], row["missing"]) == (8, 12, 4)
    assert (row["pending"], row["dropped"], row["unexplained"]) == (depth, dropped, unexplained)


def test_the_schema_is_made_once_and_a_newer_one_is_refused(database: str):
    Store(database, password=None, prefix="massgate").close()
    Store(database, password=None, prefix="massgate").close()  # already there: nothing to do
    with psycopg.connect(database, autocommit=True) as conn:
        conn.execute("UPDATE massgate.meta SET value = '99' WHERE key = 'version'")
    with pytest.raises(RuntimeError, match="version 99, newer than"):
        Store(database, password=None, prefix="massgate")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("mqtt: {brokers: [mqtts://b:8883]}\ndatabase: {url: postgresql://h/db}\n", "client_id"),
        (
            "mqtt: {brokers: [mqtts://b:8883], client_id: i}\ndatabase: {url: 'postgresql://u:pw@h/db'}\n",
            "holds a password",
        ),
        (
            "mqtt: {brokers: [mqtts://b:8883], client_id: i}\ndatabase: {url: mysql://h/db}\n",
            "PostgreSQL URL",
        ),
        (
            "mqtt: {brokers: [mqtts://b:8883], client_id: i, protocol: '3.1.1'}\ndatabase: {url: postgresql://h/db}\n",
            "needs MQTT 5",
        ),
        ("mqtt: {brokers: [mqtts://b:8883], client_id: i}\n", "database"),
        (
            "mqtt: {brokers: [mqtts://b:8883, mqtts://c:8883], client_id: i}\n"
            "database: {url: postgresql://h/db}\n",
            "one broker",
        ),
        (
            "mqtt: {brokers: [mqtts://b:8883], client_id: i}\ndatabase: {url: postgresql://h/db}\n"
            "take: {sites: [a/b]}\n",
            "may contain only",
        ),
        (
            "mqtt: {brokers: [mqtts://b:8883], client_id: i}\ndatabase: {url: postgresql://h/db}\n"
            "take: {sharde: x}\n",
            "sharde",
        ),
        (  # commands are the agent's: the ingest takes none
            "mqtt: {brokers: [mqtts://b:8883], client_id: i, commands: [enter]}\n"
            "database: {url: postgresql://h/db}\n",
            "mqtt.commands: unknown key 'commands'",
        ),
    ],
)
def test_a_bad_ingest_configuration_is_said_with_its_line(tmp_path: Path, text: str, expected: str):
    path = tmp_path / "ingest.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as raised:
        ingest_config.load(path)
    said = "\n".join(str(p) for p in raised.value.problems)
    assert expected in said
    assert str(path) in said


def test_what_postgresql_would_refuse_is_kept_with_the_reason_and_the_rest_is_stored(
    database: str,
):
    """JSON that Python reads and jsonb does not: NaN, a lone surrogate (refused before the
    database), a number beyond a double (PostgreSQL refuses it; the batch is written again a
    message at a time, so that one message does not hold up the others for ever)."""
    head = '"schema": 1, "kind": "telemetry", "epoch": "0123456789abcdef"'
    payloads = [
        f'{{{head}, "seq": 1}}',
        f'{{{head}, "seq": 2, "x": NaN}}',
        f'{{{head}, "seq": 3, "x": "\\ud800"}}',
        f'{{{head}, "seq": 4, "x": 1e400}}',
        f'{{{head}, "seq": 5, "created": "2026-12-06T10:00:00"}}',
    ]
    topic = "massgate/north/skid-6/telemetry"
    store = Store(database, password=None, prefix="massgate")
    try:
        written = store.write([Incoming(topic, p.encode()) for p in payloads])
        reasons = [
            r[0] for r in store.conn.execute("SELECT reason FROM massgate.rejects ORDER BY id")
        ]
        seqs = [r[0] for r in store.conn.execute("SELECT seq FROM massgate.records ORDER BY seq")]
        (created,) = store.conn.execute(
            "SELECT created FROM massgate.records WHERE seq = 5"
        ).fetchone() or (None,)
    finally:
        store.close()
    assert (written.stored, written.rejected) == (2, 3)
    assert seqs == [1, 5]
    assert reasons[0] == "not JSON: NaN is not a JSON number"
    assert "lone surrogate" in reasons[1]
    assert reasons[2].startswith("PostgreSQL refused it")
    assert created == datetime(2026, 12, 6, 10, tzinfo=UTC)  # no offset: UTC, as the agent's


def test_a_record_that_breaks_a_constraint_a_dba_added_is_kept_with_the_reason(database: str):
    """The README's TimescaleDB recipe makes `created` NOT NULL: a record without a valid time
    then breaks it, and goes to rejects with PostgreSQL's words; the rest of its batch is
    stored, and the batch is not tried for ever."""
    head = '"schema": 1, "kind": "telemetry", "epoch": "0123456789abcdef"'
    store = Store(database, password=None, prefix="massgate")
    try:
        store.conn.execute("ALTER TABLE massgate.records ALTER COLUMN created SET NOT NULL")
        written = store.write(
            [
                Incoming(
                    "massgate/north/skid-7/telemetry",
                    f'{{{head}, "seq": {seq}{created}}}'.encode(),
                )
                for seq, created in ((1, ', "created": "2026-12-06T10:00:00Z"'), (2, ""))
            ]
        )
        (reason,) = store.conn.execute("SELECT reason FROM massgate.rejects").fetchone() or ("",)
    finally:
        store.close()
    assert (written.stored, written.rejected) == (1, 1)
    assert reason.startswith("PostgreSQL refused it")
    assert "created" in reason


def test_what_copy_s_text_format_would_read_otherwise_is_stored_as_it_came(database: str):
    """The rows go to COPY as text made by the ingest: a backslash, a tab, a newline or a CR
    in a name or in the JSON (between its tokens, or escaped in a string) must arrive as
    they were, not end a field or a row. Seen to fail with the escaping left out."""
    site, gateway = "north\\east", "skid\t4"
    payload = (
        f'{{\t"schema": 1,\r\n "kind": "telemetry", "epoch": "{EPOCH}", "seq": 1,\n'
        '"note": "a\\\\b \\t \\n \\\\N \\"q\\"", "end": "\\\\"}'
    )
    store = Store(database, password=None, prefix="massgate")
    try:
        written = store.write([Incoming(f"massgate/{site}/{gateway}/telemetry", payload.encode())])
        row = store.conn.execute("SELECT site, gateway, payload FROM massgate.records").fetchone()
    finally:
        store.close()
    assert written.stored == 1
    assert row == (site, gateway, json.loads(payload))


def test_a_batch_with_duplicates_stores_the_rest_and_counts_them(database: str):
    """Most batches go in with one COPY; one holding records already stored goes again the
    way that counts them. Seen to fail with that way counting every record as stored."""
    store = Store(database, password=None, prefix="massgate")
    try:
        first = store.write([_record(s) for s in (1, 2, 3)])
        second = store.write([_record(s) for s in (2, 3, 4, 5)])
        seqs = [r[0] for r in store.conn.execute("SELECT seq FROM massgate.records ORDER BY 1")]
        (row,) = store.accounting()
    finally:
        store.close()
    assert (first.stored, first.duplicates, second.stored, second.duplicates) == (3, 0, 2, 2)
    assert seqs == [1, 2, 3, 4, 5]
    assert (row["received"], row["duplicates"], row["stored"], row["missing"]) == (7, 2, 5, 0)


def test_a_nul_in_a_topic_is_kept_in_rejects_not_a_failing_batch(database: str):
    """PostgreSQL's text holds no NUL; a topic with one (Mosquitto refuses them; another
    broker might not) is refused with the reason, shown with U+FFFD, the payload kept."""
    store = Store(database, password=None, prefix="massgate")
    try:
        written = store.write(
            [Incoming("massgate/north/skid\x004/telemetry", _record(1).payload), _record(2)]
        )
        rejects = store.conn.execute(
            "SELECT topic, reason, payload FROM massgate.rejects"
        ).fetchall()
    finally:
        store.close()
    assert (written.stored, written.rejected) == (1, 1)
    assert rejects == [
        (
            "massgate/north/skid\ufffd4/telemetry",
            "the topic holds a NUL character",
            _record(1).payload,
        )
    ]


def test_a_database_in_another_encoding_takes_what_it_can_hold_and_refuses_the_rest(
    postgres: Any,
):
    """The ingest speaks UTF-8 to the database whatever its encoding: in a LATIN1 database
    'é' arrives as 'é', and '€' (which LATIN1 cannot hold) is refused with PostgreSQL's
    words instead of stored as something else."""
    name = f"t_latin1_{os.getpid()}_{threading.get_ident() % 100000}"
    with psycopg.connect(postgres.url("postgres"), autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name} ENCODING 'LATIN1' TEMPLATE template0")
    body = json.loads(_record(1).payload)
    store = Store(postgres.url(name), password=None, prefix="massgate")
    try:
        written = store.write(
            [
                Incoming(
                    _record(1).topic,
                    json.dumps({**body, "tag": "débit"}, ensure_ascii=False).encode(),
                ),
                Incoming(
                    _record(2).topic,
                    json.dumps({**body, "seq": 2, "unit": "€/t"}, ensure_ascii=False).encode(),
                ),
            ]
        )
        stored = store.conn.execute("SELECT payload->>'tag' FROM massgate.records").fetchall()
        (reason,) = store.conn.execute("SELECT reason FROM massgate.rejects").fetchone() or ("",)
    finally:
        store.close()
    assert (written.stored, written.rejected) == (1, 1)
    assert stored == [("débit",)]
    assert reason.startswith("PostgreSQL refused it")


def test_a_database_of_the_first_schema_is_migrated_and_keeps_its_records(database: str):
    from massgate.agent.ingest.schema import MIGRATIONS, VERSION

    with psycopg.connect(database, autocommit=True) as conn:
        conn.execute("CREATE SCHEMA massgate")
        conn.execute("CREATE TABLE massgate.meta (key text PRIMARY KEY, value text NOT NULL)")
        conn.execute(MIGRATIONS[1])
        conn.execute("INSERT INTO massgate.meta VALUES ('version', '1')")
    store = Store(database, password=None, prefix="massgate")
    try:
        store.write([_record(1)])
    finally:
        store.close()
    store = Store(database, password=None, prefix="massgate")  # and again: nothing to do
    store.close()
    with psycopg.connect(database) as conn:
        (version,) = conn.execute(
            "SELECT value FROM massgate.meta WHERE key = 'version'"
        ).fetchone() or ("",)
        (stored,) = conn.execute("SELECT count(*) FROM massgate.records").fetchone() or (0,)
    assert (int(version), stored) == (VERSION, 1)


def test_each_kind_reads_as_a_typed_view(database: str):
    envelope = {"schema": 1, "site": "north", "gateway": "skid-7", "epoch": EPOCH}
    bodies = [
        {"kind": "telemetry", "seq": 1, "created": "2026-12-06T10:00:00.000000Z",
         "points": {"pump.flow": {"value": 1.5, "quality": "good"},
                    "pump.temp": {"value": None, "quality": "bad"}}},
        {"kind": "hourly", "seq": 2, "stream": "feed", "hour_start": "2026-12-06T09:00:00.000000Z",
         "hour_end": "2026-12-06T10:00:00.000000Z", "quantity_kg": 1200.5},
        {"kind": "alarm", "seq": 3, "node": "tank", "event": "raised",
         "balance": {"status": "alarm", "imbalance_kg": -42.0}},
    ]  # fmt: skip
    store = Store(database, password=None, prefix="massgate")
    try:
        store.write(
            [
                Incoming(
                    f"massgate/north/skid-7/{b['kind']}", json.dumps({**envelope, **b}).encode()
                )
                for b in bodies
            ]
        )
        points = store.conn.execute(
            "SELECT tag, value, quality FROM massgate.telemetry_points ORDER BY tag"
        ).fetchall()
        hourly = store.conn.execute("SELECT stream, quantity_kg FROM massgate.hourly").fetchall()
        alarms = store.conn.execute(
            "SELECT node, event, balance_status, imbalance_kg FROM massgate.alarms"
        ).fetchall()
    finally:
        store.close()
    assert points == [("pump.flow", 1.5, "good"), ("pump.temp", None, "bad")]
    assert hourly == [("feed", 1200.5)]
    assert alarms == [("tank", "raised", "alarm", -42.0)]


def test_an_ingest_started_before_its_broker_says_so_and_connects_when_it_comes(
    pki, database: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
):
    from massgate.agent.bench.localbroker import free_port

    caplog.set_level(logging.INFO, logger="massgate.agent.ingest")
    later = Broker(pki, tmp_path, pki.server_cert, pki.server_key, port=free_port())
    running = Running(write_config(tmp_path, later, database))
    running.thread.start()
    try:
        assert until(lambda: "connection refused" in caplog.text, limit=30), caplog.text
        later.start()
        assert running.ingest.subscribed.wait(60), caplog.text
    finally:
        running.__exit__()
        later.stop()


def test_a_corrected_window_is_one_mass_balance_event_at_its_latest_revision(database: str):
    envelope = {"schema": 1, "site": "north", "gateway": "skid-7", "epoch": EPOCH}
    batch = {"window_start": "2026-12-06T06:00:00.000000Z", "window_end": "2026-12-06T08:00:00Z"}
    later = {"window_start": "2026-12-06T08:00:00.000000Z", "window_end": "2026-12-06T10:00:00Z"}
    bodies = [
        {"seq": 1, "node": "yard", **batch, "in_kg": 0.0, "status": "warning", "revision": 0},
        {"seq": 2, "node": "yard", **later, "in_kg": 5.0, "status": "ok", "revision": 0},
        # A ticket entered late, twice: the window judged again each time.
        {"seq": 3, "node": "yard", **batch, "in_kg": 900.0, "status": "ok", "revision": 1},
        {"seq": 4, "node": "yard", **batch, "in_kg": 1800.0, "status": "ok", "revision": 2},
        # Another node's window of the same times is its own.
        {"seq": 5, "node": "dock", **batch, "in_kg": 7.0, "status": "ok"},
        # What no agent wrote: stored, shown, and no failing cast.
        {"seq": 6, "node": "odd", **batch, "in_kg": 1.0, "status": "ok", "revision": "x"},
    ]  # fmt: skip
    store = Store(database, password=None, prefix="massgate")
    try:
        store.write(
            [
                Incoming("massgate/north/skid-7/balance", json.dumps({**envelope, **b}).encode())
                for b in bodies
            ]
        )
        events = store.conn.execute(
            "SELECT node, window_end, in_kg, status, seq, revision "
            "FROM massgate.mass_balance_events ORDER BY node, window_end"
        ).fetchall()
        kept = store.conn.execute(
            "SELECT count(*) FROM massgate.records WHERE kind = 'balance'"
        ).fetchone()
    finally:
        store.close()
    ends = [datetime.fromisoformat(w["window_end"]) for w in (batch, later)]
    assert events == [
        ("dock", ends[0], 7.0, "ok", 5, 0),
        ("odd", ends[0], 1.0, "ok", 6, 0),
        ("yard", ends[0], 1800.0, "ok", 4, 2),
        ("yard", ends[1], 5.0, "ok", 2, 0),
    ]
    assert kept == (6,)  # every revision is kept in records
