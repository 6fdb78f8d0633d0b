"""Nothing lost: faults between the outbox and a real Mosquitto, each ending with a count of
what was committed against what a subscriber received, by sequence number."""

from __future__ import annotations

import asyncio
import json
import logging
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from massgate.agent.bench.pki import Pki
from massgate.agent.config import MqttConfig
from massgate.agent.core.records import Priority, Record
from massgate.agent.publish.publisher import Publisher
from massgate.agent.store.outbox import Outbox
from tests.conftest import (
    LOOPBACK,
    Broker,
    Subscriber,
    free_port,
    mqtt_config,
    publish_until,
    run_async,
)

SITE, GATEWAY = "s", "g"


def cycle_records(i: int, created: float) -> list[Record]:
    """What one agent cycle might commit: telemetry always, the rest now and then."""
    records = [
        Record("telemetry", {"points": {"ft101.flow": {"value": i, "quality": "good"}}}, created)
    ]
    if i % 5 == 0:
        records.append(Record("totals", {"streams": [], "i": i}, created))
    if i % 10 == 0:
        records.append(Record("balance", {"node": "tank", "i": i}, created))
    if i % 50 == 0:
        records.append(Record("alarm", {"node": "tank", "event": "raised", "i": i}, created))
    return records


def arrivals(subscriber: Subscriber) -> list[dict[str, Any]]:
    with subscriber.lock:
        return [m for t, m, _ in subscriber.messages if "seq" in m]


@pytest.fixture
def durable_broker(pki: Pki, tmp_path: Path) -> Iterator[Broker]:
    b = Broker(pki, tmp_path, pki.server_cert, pki.server_key, persistent=True)
    b.start()
    yield b
    b.stop()


@pytest.fixture
def durable_subscriber(durable_broker: Broker) -> Iterator[Subscriber]:
    s = Subscriber(durable_broker, durable=True)
    s.start()
    yield s
    s.stop()


@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
def test_broker_down_and_back_loses_nothing_and_keeps_order(
    durable_broker: Broker, durable_subscriber: Subscriber, tmp_path: Path, protocol: str
):
    outbox = Outbox(tmp_path / "state.sqlite", max_bytes=50_000_000, site=SITE, gateway=GATEWAY)
    publisher = Publisher(
        outbox,
        mqtt_config(durable_broker.port, ca=durable_broker.pki.ca, protocol=protocol),
        SITE,
        GATEWAY,
    )
    produced: dict[int, int] = {}  # seq -> priority
    outage: dict[str, int] = {}

    async def produce(cycles: int, start: int) -> None:
        for i in range(start, start + cycles):
            records = cycle_records(i, 1_800_000_000.0 + i)
            for seq, record in zip(outbox.put(records), records, strict=True):
                produced[seq] = int(record.priority)
            publisher.wake(max(r.priority for r in records))
            await asyncio.sleep(0.005)

    async def main() -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(publisher.run(stop))
        await produce(100, 0)
        await asyncio.to_thread(durable_broker.stop)
        outage["depth_before"] = outbox.depth()
        await produce(200, 100)
        outage["backlog"] = outbox.depth()
        await asyncio.to_thread(durable_broker.start)
        await produce(100, 300)
        for _ in range(400):
            if outbox.depth() == 0:
                break
            await asyncio.sleep(0.05)
        stop.set()
        await task

    run_async(main())
    assert outage["backlog"] >= 200, "the outage did not build a backlog"
    assert outbox.depth() == 0
    assert publisher.status.connects >= 2
    outbox.close()
    expected = set(produced)
    assert durable_subscriber.wait_for(
        lambda: {m["seq"] for m in arrivals(durable_subscriber)} >= expected, 15
    )
    got = arrivals(durable_subscriber)
    seqs = Counter(m["seq"] for m in got)
    duplicates = sum(n - 1 for n in seqs.values())
    print(
        f"broker restart ({protocol}): {len(expected)} committed, {len(seqs)} arrived, "
        f"{duplicates} duplicates"
    )
    assert set(seqs) == expected, "records were lost or invented"
    # First arrivals keep the order within each priority (a re-sent duplicate may come late).
    seen: set[int] = set()
    last: dict[int, int] = {}
    for m in got:
        if m["seq"] in seen:
            continue
        seen.add(m["seq"])
        priority = produced[m["seq"]]
        assert m["seq"] > last.get(priority, 0), f"order broken within priority {priority}"
        last[priority] = m["seq"]
    # A duplicate can only be a record in flight when the link broke.
    assert duplicates <= 20


def test_full_outbox_during_an_outage_drops_exactly_the_lowest_priority_oldest(
    broker: Broker, subscriber: Subscriber, tmp_path: Path
):
    outbox = Outbox(tmp_path / "state.sqlite", max_bytes=150_000, site=SITE, gateway=GATEWAY)
    produced: dict[int, Priority] = {}
    for i in range(2000):  # the outage: nothing is sent while these are committed
        records = cycle_records(i, 1_800_000_000.0 + i)
        for seq, record in zip(outbox.put(records), records, strict=True):
            produced[seq] = record.priority
    dropped = outbox.dropped()
    assert dropped.get("telemetry", 0) > 0, "the bound was never hit"
    publisher = Publisher(outbox, mqtt_config(broker.port, ca=broker.pki.ca), SITE, GATEWAY)

    publish_until(publisher, lambda: outbox.depth() == 0, limit=20)
    outbox.close()
    assert subscriber.wait_for(
        lambda: (
            len({m["seq"] for m in arrivals(subscriber)}) >= len(produced) - sum(dropped.values())
        )
    )
    arrived = {m["seq"] for m in arrivals(subscriber)}
    assert arrived <= set(produced)
    lost = {seq: produced[seq] for seq in set(produced) - arrived}
    by_priority = Counter(p.name.lower() for p in lost.values())
    print(
        f"outbox bound: {len(produced)} committed, {len(arrived)} arrived, "
        f"dropped {dict(by_priority)}"
    )
    # Exactly what the outbox counted, and nothing of a priority above the lowest dropped.
    assert dict(by_priority) == dropped
    assert "alarm" not in dropped
    assert "balance" not in dropped
    # Oldest first within a priority: what was dropped is older than everything kept.
    for priority in set(lost.values()):
        kept = [s for s, p in produced.items() if p == priority and s in arrived]
        gone = [s for s, p in lost.items() if p == priority]
        assert not kept or max(gone) < min(kept)
    # The status topic carries the same counts (retained, so the subscriber has the last).
    statuses = [m for t, m, _ in subscriber.messages if t.endswith("/status") and m.get("outbox")]
    assert statuses, "no health message on the status topic"
    assert statuses[-1]["outbox"]["dropped"] == dropped


def test_fail_over_to_the_next_broker(broker: Broker, subscriber: Subscriber):
    dead = free_port()  # nothing listens here
    outbox = Outbox(":memory:", max_bytes=10_000_000, site=SITE, gateway=GATEWAY)
    seqs = outbox.put([Record("alarm", {"i": i}, 1_800_000_000.0) for i in range(5)])
    publisher = Publisher(outbox, mqtt_config(dead, broker.port, ca=broker.pki.ca), SITE, GATEWAY)

    publish_until(publisher, lambda: outbox.depth() == 0, limit=10)
    assert outbox.depth() == 0
    assert publisher.status.broker == f"mqtts://{LOOPBACK}:{broker.port}"
    assert subscriber.wait_for(lambda: {m["seq"] for m in arrivals(subscriber)} == set(seqs))
    outbox.close()


def _refused(broker: Broker, config: MqttConfig, caplog: pytest.LogCaptureFixture) -> str:
    """Run a publisher against a broker that refuses it; returns its last error."""
    caplog.set_level(logging.DEBUG, logger="massgate.agent.publish")
    outbox = Outbox(":memory:", max_bytes=10_000_000, site=SITE, gateway=GATEWAY)
    outbox.put([Record("alarm", {"i": 1}, 1_800_000_000.0)])
    publisher = Publisher(outbox, config, SITE, GATEWAY)

    def refused_three_times() -> bool:
        link = getattr(publisher, "_link", None)
        return link is not None and link.generation >= 3

    publish_until(publisher, refused_three_times, limit=15)
    assert publisher._link.generation >= 3, "it did not retry"
    assert not publisher.status.connected
    assert outbox.depth() == 1  # nothing lost
    outbox.close()
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    # One clear line, not one per attempt.
    assert len(errors) == 1, [r.getMessage() for r in errors]
    return errors[0].getMessage()


@pytest.mark.parametrize(
    ("cert", "reason"),
    [
        ("expired", "certificate has expired"),
        ("misnamed", "IP address mismatch"),
    ],
)
def test_a_bad_broker_certificate_is_refused_with_the_reason(
    pki: Pki, tmp_path: Path, caplog: pytest.LogCaptureFixture, cert: str, reason: str
):
    b = Broker(pki, tmp_path, getattr(pki, f"{cert}_cert"), getattr(pki, f"{cert}_key"))
    b.start()
    try:
        message = _refused(b, mqtt_config(b.port, ca=pki.ca), caplog)
    finally:
        b.stop()
    assert "certificate was rejected" in message
    assert reason in message


def test_bad_credentials_are_refused_with_the_reason_and_never_logged(
    pki: Pki, tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
):
    import subprocess

    passwords = tmp_path / "passwords"
    passwords.write_text("")
    subprocess.run(["mosquitto_passwd", "-b", str(passwords), "gw", "right-secret"], check=True)
    b = Broker(
        pki, tmp_path, pki.server_cert, pki.server_key, extra=(f"password_file {passwords}",)
    )
    b.start()
    monkeypatch.setenv("MG_TEST_PASSWORD", "wrong-secret")
    try:
        message = _refused(
            b,
            mqtt_config(b.port, ca=pki.ca, username="gw", password_env="MG_TEST_PASSWORD"),
            caplog,
        )
    finally:
        b.stop()
    assert "refused the connection" in message
    assert "Bad user name or password" in message or "Not authorized" in message
    assert "secret" not in caplog.text


def test_a_missing_password_variable_is_said_not_crashed(
    broker: Broker, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.delenv("MG_TEST_NOT_SET", raising=False)
    message = _refused(
        broker,
        mqtt_config(broker.port, ca=broker.pki.ca, username="gw", password_env="MG_TEST_NOT_SET"),
        caplog,
    )
    assert "MG_TEST_NOT_SET is not set" in message


def test_status_topic_carries_health_and_a_retained_goodbye(broker: Broker, subscriber: Subscriber):
    outbox = Outbox(":memory:", max_bytes=10_000_000, site=SITE, gateway=GATEWAY)
    outbox.put([Record("totals", {"i": 1}, 1_800_000_000.0)])
    publisher = Publisher(outbox, mqtt_config(broker.port, ca=broker.pki.ca), SITE, GATEWAY)

    publish_until(publisher, lambda: outbox.depth() == 0, limit=10)
    outbox.close()
    assert subscriber.wait_for(
        lambda: any(m.get("status") == "offline" for m in subscriber.records("status"))
    )
    statuses = subscriber.records("status")
    online = [m for m in statuses if m["status"] == "online"]
    assert online
    assert {"depth", "bytes", "dropped", "last_seq", "epoch", "oldest_age_s"} <= set(
        online[0]["outbox"]
    )
    assert statuses[-1] == {**statuses[-1], "status": "offline", "reason": "stopped"}
    json.dumps(statuses)  # plain JSON
