"""The publisher against a real Mosquitto: delivery on PUBACK, and a refused certificate."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from massgate.agent.config import MqttConfig
from massgate.agent.core.records import Record
from massgate.agent.publish.publisher import Publisher
from massgate.agent.store.outbox import Outbox
from tests.conftest import Broker, Subscriber, mqtt_config, publish_until, until


def _mqtt(broker: Broker, ca: Path) -> MqttConfig:
    return mqtt_config(broker.port, ca=ca, in_flight=5)


def test_records_are_deleted_only_after_puback(broker: Broker, subscriber: Subscriber):
    outbox = Outbox(":memory:", max_bytes=10_000_000, site="s", gateway="g")
    seqs = outbox.put([Record("totals", {"i": i}, 1_800_000_000.0) for i in range(50)])
    publisher = Publisher(outbox, _mqtt(broker, broker.pki.ca), "s", "g")

    publish_until(publisher, lambda: outbox.depth() == 0, limit=10)
    assert outbox.depth() == 0
    assert subscriber.wait_for(lambda: len(subscriber.records("totals")) == 50)
    assert sorted(m["seq"] for m in subscriber.records("totals")) == seqs
    outbox.close()


def test_a_broker_certificate_from_another_ca_is_refused(
    stranger_broker: Broker, caplog: pytest.LogCaptureFixture
):
    caplog.set_level(logging.ERROR, logger="massgate.agent.publish")
    outbox = Outbox(":memory:", max_bytes=10_000_000, site="s", gateway="g")
    outbox.put([Record("alarm", {"i": 1}, 1_800_000_000.0)])
    publisher = Publisher(outbox, _mqtt(stranger_broker, stranger_broker.pki.ca), "s", "g")

    publish_until(publisher, lambda: bool(publisher.status.last_error), limit=10)
    assert not publisher.status.connected
    error = publisher.status.last_error or ""
    assert "certificate was rejected" in error
    assert "unable to get local issuer" in error
    assert "certificate was rejected" in caplog.text  # one clear log line
    assert outbox.depth() == 1  # nothing lost
    outbox.close()


def test_nothing_is_deleted_while_the_broker_does_not_acknowledge(broker: Broker):
    """The broker stopped (SIGSTOP) with messages in flight: they were sent, but no PUBACK
    came, so the outbox keeps every one; when the broker goes on, they are deleted."""
    import asyncio
    import os
    import signal

    from tests.conftest import run_async

    outbox = Outbox(":memory:", max_bytes=10_000_000, site="s", gateway="g")
    publisher = Publisher(outbox, _mqtt(broker, broker.pki.ca), "s", "g")
    assert broker.process is not None
    count = 20

    # The publisher's passes (each lets the outbox delete what was acknowledged),
    # counted; after each one the condition the test waits for is looked at, so the test
    # waits on the publisher's own progress, not for a guessed time.
    passes = [0]
    real_pass = publisher._pass
    waiting: list[tuple[object, asyncio.Event]] = []

    async def counted(link, now):
        passes[0] += 1
        delay = await real_pass(link, now)
        for condition, event in waiting:
            if condition():
                event.set()
        return delay

    publisher._pass = counted

    async def until(condition, limit: float = 30.0) -> None:
        event = asyncio.Event()
        waiting.append((condition, event))
        try:
            await asyncio.wait_for(event.wait(), limit)
        finally:
            waiting.remove((condition, event))

    async def main() -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(publisher.run(stop))
        try:
            await until(lambda: publisher.status.connected)
            os.kill(broker.process.pid, signal.SIGSTOP)
            seqs = outbox.put([Record("totals", {"i": i}, 1_800_000_000.0) for i in range(count)])
            publisher.wake(1)
            await until(lambda: publisher.status.published >= count)  # handed to paho
            # Four more passes (each at most 0.5 s apart): a delete on send, or one at the
            # next ack flush, would have happened by now.
            seen = passes[0]
            await until(lambda: passes[0] >= seen + 4)
            assert outbox.depth() == count
            assert publisher.status.acked == 0
            assert sorted(m.seq for m in outbox.take(100)) == seqs
            os.kill(broker.process.pid, signal.SIGCONT)
            await until(lambda: outbox.depth() == 0)
        finally:
            os.kill(broker.process.pid, signal.SIGCONT)
            stop.set()
            await asyncio.wait_for(task, 30)

    try:
        run_async(asyncio.wait_for(main(), 60))
    finally:
        outbox.close()


@pytest.mark.parametrize(("protocol", "listening"), [("5", True), ("5", False), ("3.1.1", True)])
def test_every_plain_puback_takes_the_short_path_and_deletes_its_record(
    broker: Broker,
    request: pytest.FixtureRequest,
    monkeypatch: pytest.MonkeyPatch,
    protocol: str,
    listening: bool,
):
    """The link decodes a PUBACK of a packet id and a reason code itself (link.py, _Client):
    with the paho installed, paho's own decoder is never asked, with a subscriber ("Success")
    or without ("No matching subscribers", MQTT 5), and every record is still deleted on its
    PUBACK. A paho whose insides moved takes its own way, and this test says so."""
    import paho.mqtt._packet as packet

    subscriber = request.getfixturevalue("subscriber") if listening else None
    decoded = []
    real = packet.decode_puback
    monkeypatch.setattr(packet, "decode_puback", lambda *a: decoded.append(a) or real(*a))
    outbox = Outbox(":memory:", max_bytes=10_000_000, site="s", gateway="g")
    seqs = outbox.put([Record("totals", {"i": i}, 1_800_000_000.0) for i in range(200)])
    config = mqtt_config(broker.port, ca=broker.pki.ca, in_flight=5, protocol=protocol)
    publisher = Publisher(outbox, config, "s", "g")

    publish_until(publisher, lambda: outbox.depth() == 0, limit=20)
    assert outbox.depth() == 0
    assert publisher.status.acked == 200
    if subscriber is not None:
        assert subscriber.wait_for(lambda: len(subscriber.records("totals")) == 200)
        assert sorted(m["seq"] for m in subscriber.records("totals")) == seqs
    assert decoded == []
    outbox.close()


def test_a_stop_ends_with_a_disconnect_so_the_broker_keeps_the_goodbye(pki, tmp_path: Path):
    """paho leaves writing to the link's loop; a stop still writes DISCONNECT, so Mosquitto
    ends the session as asked and does not publish the will ("connection lost") over the
    retained goodbye."""
    b = Broker(pki, tmp_path, pki.server_cert, pki.server_key, extra=("log_type notice",))
    b.start()
    try:
        outbox = Outbox(":memory:", max_bytes=10_000_000, site="s", gateway="g")
        outbox.put([Record("totals", {"i": 1}, 1_800_000_000.0)])
        config = mqtt_config(b.port, ca=pki.ca)
        publish_until(Publisher(outbox, config, "s", "g"), lambda: outbox.depth() == 0)
        assert outbox.depth() == 0
        outbox.close()
        assert b.log_path is not None
        log = b.log_path

        def ended() -> list[str]:
            return [
                line
                for line in log.read_text(errors="replace").splitlines()
                if config.client_id in line and ("disconnected" in line or "closed" in line)
            ]

        # Mosquitto logs the end of the session once it has seen it.
        assert until(lambda: bool(ended()), limit=10), "Mosquitto logged no end of the session"
    finally:
        b.stop()
    assert "disconnected" in ended()[0], ended()
