"""Commands from the broker (mqtt.commands), against a real Mosquitto: a request on
<prefix>/<site>/<gateway>/command/request is carried out by the gateway's handler and
answered on .../command/answer with its id (and, in MQTT 5, its correlation data); what is
not a request is refused in the answer and never reaches the handler; with commands off
nothing is subscribed to; a subscription the broker's ACL denies is said once and the
records go on."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import signal
import ssl
import subprocess
import threading
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from massgate.agent.core.records import Record, parse_utc
from massgate.agent.publish.commands import BURST, RATE, Commands
from massgate.agent.publish.publisher import Publisher
from massgate.agent.store.outbox import Outbox
from tests.agent.publish.test_payload_schemas import problems
from tests.conftest import (
    LOOPBACK,
    Broker,
    Subscriber,
    free_port,
    mqtt_config,
    run_async,
    start_agent,
    until_async,
)

REQUEST = "massgate/s/g/command/request"
ANSWER = "massgate/s/g/command/answer"


class Operator:
    """An MES or a form on the broker: publishes requests, collects the answers."""

    def __init__(self, broker: Broker) -> None:
        self.client = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5
        )
        self.client.tls_set_context(ssl.create_default_context(cafile=str(broker.pki.ca)))
        self.answers: list[tuple[dict[str, Any], bytes | None]] = []
        self.acks: dict[int, str] = {}  # mid -> the PUBACK's reason
        self.changed = threading.Condition()
        subscribed = threading.Event()
        self.client.on_connect = lambda c, u, f, rc, p: c.subscribe(ANSWER, qos=1)
        self.client.on_subscribe = lambda c, u, mid, rcs, p: subscribed.set()
        self.client.on_message = self._message
        self.client.on_publish = self._published
        self.client.connect(LOOPBACK, broker.port)
        self.client.loop_start()
        assert subscribed.wait(30), "the operator got no SUBACK"

    def _message(self, client: Any, userdata: Any, message: mqtt.MQTTMessage) -> None:
        correlation = getattr(message.properties, "CorrelationData", None)
        with self.changed:
            self.answers.append((json.loads(message.payload), correlation))
            self.changed.notify_all()

    def _published(self, client: Any, userdata: Any, mid: int, rc: Any, props: Any) -> None:
        with self.changed:
            self.acks[mid] = rc.getName()
            self.changed.notify_all()

    def send(
        self, payload: bytes, *, correlation: bytes | None = None, retain: bool = False
    ) -> str:
        """Publish a request; the reason code of its PUBACK."""
        properties = None
        if correlation is not None:
            properties = Properties(PacketTypes.PUBLISH)
            properties.CorrelationData = correlation
        info = self.client.publish(REQUEST, payload, qos=1, retain=retain, properties=properties)
        with self.changed:
            assert self.changed.wait_for(lambda: info.mid in self.acks, 30), "no PUBACK"
            return self.acks[info.mid]

    def answer(
        self, key: str | None = None, *, correlation: bytes | None = None
    ) -> tuple[dict[str, Any], bytes | None]:
        """The first answer naming request `key` (or carrying `correlation`)."""

        def found() -> tuple[dict[str, Any], bytes | None] | None:
            return next(
                (
                    a
                    for a in self.answers
                    if (a[1] == correlation if correlation is not None else a[0]["id"] == key)
                ),
                None,
            )

        with self.changed:
            assert self.changed.wait_for(lambda: found() is not None, 30), (key, self.answers)
            result = found()
            assert result is not None
            return result

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def _request(key: str, **fields: Any) -> bytes:
    return json.dumps({"id": key, "command": "enter", **fields}).encode()


def _publisher(
    broker: Broker, outbox: Outbox, commands: tuple[str, ...], **extra: Any
) -> Publisher:
    config = dataclasses.replace(
        mqtt_config(broker.port, ca=broker.pki.ca, **extra), commands=commands
    )
    return Publisher(outbox, config, "s", "g")


def _while_running(publisher: Publisher, body: Any) -> Any:
    """Run the publisher, wait for its subscription to be answered, run `body()` on a thread."""

    async def main() -> Any:
        stop = asyncio.Event()
        task = asyncio.create_task(publisher.run(stop))
        try:
            assert await until_async(
                lambda: (
                    publisher.status.connected
                    and (publisher.commands is None or publisher.commands.subscribed is not None)
                )
            ), publisher.status
            return await asyncio.to_thread(body)
        finally:
            stop.set()
            await task

    return run_async(main())


@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
def test_a_request_from_the_broker_is_carried_out_and_answered(broker: Broker, protocol: str):
    outbox = Outbox(":memory:", max_bytes=10_000_000, site="s", gateway="g")
    publisher = _publisher(broker, outbox, ("enter",), protocol=protocol)
    seen: list[dict[str, Any]] = []

    def handle(request: dict[str, Any]) -> dict[str, Any]:
        seen.append(request)
        return {"ok": True, "message": "entered"}

    assert publisher.commands is not None
    publisher.commands.handle = handle
    operator = Operator(broker)

    def body() -> None:
        # What an MES sends: the quantity with its unit, the time in ISO 8601.
        fields = {"stream": "tickets", "quantity": "12.34 t", "time": "2026-12-07T06:00:00Z"}
        assert operator.send(_request("WB-1", **fields, via="socket"), correlation=b"c1") == (
            "Success"
        )
        answer, correlation = operator.answer("WB-1")
        assert (answer["ok"], answer["message"]) == (True, "entered")
        # MQTT 5 carries the correlation data back; 3.1.1 has only the id to match by.
        assert correlation == (b"c1" if protocol == "5" else None)
        assert seen == [
            {"id": "WB-1", "command": "enter", "stream": "tickets", "kg": 12340.0,
             "time": parse_utc("2026-12-07T06:00:00Z"), "via": "mqtt"}
        ]  # fmt: skip

    try:
        _while_running(publisher, body)
        assert publisher.commands.subscribed is True
        assert (publisher.commands.taken, publisher.commands.refused) == (1, 0)
        status = json.loads(publisher.status_payload("online"))
        assert status["commands"]["topic"] == REQUEST
    finally:
        operator.close()
        outbox.close()


def test_what_is_not_a_request_is_refused_in_its_answer_and_never_carried_out(
    broker: Broker, caplog: pytest.LogCaptureFixture
):
    outbox = Outbox(":memory:", max_bytes=10_000_000, site="s", gateway="g")
    publisher = _publisher(broker, outbox, ("enter",))
    seen: list[dict[str, Any]] = []

    def handle(request: dict[str, Any]) -> dict[str, Any]:
        seen.append(request)
        if request.get("stream") == "boom":
            raise RuntimeError("a bug in the handler")
        return {"ok": True, "message": "entered"}

    assert publisher.commands is not None
    publisher.commands.handle = handle
    operator = Operator(broker)
    bad = [
        (b"not json", None, "a request is one JSON object"),
        (b"\xff\xfe\x00", None, "a request is one JSON object"),
        (b"[1, 2]", None, "a request is one JSON object"),
        (b"x" * 70_000, None, "at most 65536 bytes"),
        (json.dumps({"command": "enter"}).encode(), None, "id: give a name or id"),
        (json.dumps({"id": "a\nb", "command": "enter"}).encode(), "a\nb", "id:"),
        (_request("r1", command="batch"), "r1", "command 'batch' is not taken from the broker"),
        (_request("r2", command="reboot"), "r2", "command 'reboot' is not taken"),
        (_request("r3", quantity="12 furlongs"), "r3", "quantity:"),
        (_request("r4", quantity=12), "r4", 'quantity: a quantity with its unit, like "12.34 t"'),
        (_request("r5", quantity="1 t", kg=1000), "r5", "give quantity (with its unit) or kg"),
        (_request("r6", time="yesterday"), "r6", "time: 'yesterday' is not a time"),
        (_request("r7", stream="boom"), "r7", "the agent failed to carry out the command"),
    ]

    def body() -> None:
        for n, (payload, key, error) in enumerate(bad):
            assert operator.send(payload, correlation=b"%d" % n) == "Success"
            answer, _ = operator.answer(correlation=b"%d" % n)
            # The id is named back whenever there is one to name, even a wrong one.
            assert (answer["ok"], answer["id"]) == (False, key), answer
            assert error in answer["error"], (error, answer)
        # The link is still there for a good one.
        operator.send(_request("good"))
        assert operator.answer("good")[0]["ok"] is True

    try:
        with caplog.at_level(logging.WARNING, logger="massgate.agent.publish"):
            _while_running(publisher, body)
        # Only what was in order reached the handler: the one that failed, and the good one.
        assert [r["id"] for r in seen] == ["r7", "good"]
        assert publisher.commands.taken == 1
        assert publisher.commands.refused == len(bad)
        # A sender that keeps sending bad requests gets its answers, the journal a line.
        refusals = [r for r in caplog.records if "refused" in r.getMessage()]
        assert len(refusals) == 1, [r.getMessage() for r in refusals]
        assert any(r.exc_info for r in caplog.records), "the handler's bug is in the journal"
    finally:
        operator.close()
        outbox.close()


def test_a_retained_request_is_refused_not_carried_out_at_every_connection(broker: Broker):
    outbox = Outbox(":memory:", max_bytes=10_000_000, site="s", gateway="g")
    publisher = _publisher(broker, outbox, ("enter",))
    seen: list[dict[str, Any]] = []
    assert publisher.commands is not None
    publisher.commands.handle = lambda request: seen.append(request) or {"ok": True}
    operator = Operator(broker)
    try:
        # Left on the broker by a sender that set retain: handed to every new subscription.
        operator.send(_request("kept"), retain=True)
        answer, _ = _while_running(publisher, lambda: operator.answer("kept"))
        assert answer["ok"] is False
        assert "a retained request is not carried out" in answer["error"]
        assert seen == []
    finally:
        operator.send(b"", retain=True)  # cleared
        operator.close()
        outbox.close()


def test_without_mqtt_commands_nothing_is_subscribed_to(broker: Broker):
    outbox = Outbox(":memory:", max_bytes=10_000_000, site="s", gateway="g")
    publisher = _publisher(broker, outbox, ())
    assert publisher.commands is None
    operator = Operator(broker)
    try:
        # Mosquitto tells an MQTT 5 publisher when nobody took its message.
        reason = _while_running(publisher, lambda: operator.send(_request("r1")))
        assert reason == "No matching subscribers"
        assert "commands" not in json.loads(publisher.status_payload("online"))
    finally:
        operator.close()
        outbox.close()


DENY_COMMANDS = {
    "defaultACLAccess": {
        "publishClientSend": True,
        "publishClientReceive": True,
        "subscribe": True,
        "unsubscribe": True,
    },
    "clients": [],
    "groups": [{"groupname": "anonymous", "roles": [{"rolename": "no-commands"}]}],
    "roles": [
        {
            "rolename": "no-commands",
            "acls": [
                {
                    "acltype": "subscribePattern",
                    "topic": "massgate/+/+/command/#",
                    "priority": 0,
                    "allow": False,
                }
            ],
        }
    ],
    "anonymousGroup": "anonymous",
}


def _dynamic_security() -> Path:
    """Mosquitto's dynamic-security plugin, from the same package as the broker."""
    found = sorted(Path("/usr/lib").glob("*/mosquitto_dynamic_security.so"))
    found += sorted(Path("/usr/lib").glob("mosquitto_dynamic_security.so"))
    assert found, "mosquitto's dynamic-security plugin is not installed beside the broker"
    return found[0]


@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
def test_a_subscription_the_acl_denies_is_said_and_the_records_go_on(
    pki, tmp_path: Path, caplog: pytest.LogCaptureFixture, protocol: str
):
    # Every record may go; the command topic may not be subscribed to. (Mosquitto's acl_file
    # checks reads only at delivery and grants every subscription: its dynamic-security
    # plugin is what answers SUBACK with "Not authorized".)
    plugin = _dynamic_security()
    (tmp_path / "dynsec.json").write_text(json.dumps(DENY_COMMANDS))
    options = (f"plugin {plugin}", f"plugin_opt_config_file {tmp_path / 'dynsec.json'}")
    broker = Broker(pki, tmp_path, pki.server_cert, pki.server_key, extra=options)
    broker.start()
    outbox = Outbox(":memory:", max_bytes=10_000_000, site="s", gateway="g")
    outbox.put([Record("totals", {"i": i}, 1_800_000_000.0) for i in range(5)])
    publisher = _publisher(broker, outbox, ("enter",), protocol=protocol)
    try:
        with caplog.at_level(logging.INFO, logger="massgate.agent.publish"):
            _while_running(publisher, lambda: None)

            async def drained() -> None:
                stop = asyncio.Event()
                task = asyncio.create_task(publisher.run(stop))
                commands = publisher.commands
                assert commands is not None
                assert await until_async(
                    lambda: (
                        outbox.depth() == 0
                        and publisher.status.connects == 2
                        and commands.subscribed is False
                    )  # None again until the SUBACK
                )
                stop.set()
                await task

            run_async(drained())  # a second connection: refused again, not said again
        assert publisher.commands is not None
        assert publisher.commands.subscribed is False
        refusal = "Not authorized" if protocol == "5" else "Unspecified error"
        assert publisher.commands.broker_refusal == refusal
        said = [
            r.getMessage() for r in caplog.records if "refused our subscription" in r.getMessage()
        ]
        assert len(said) == 1, said
        assert REQUEST in said[0]
        assert refusal in said[0]
        assert outbox.depth() == 0  # the records went regardless
        status = json.loads(publisher.status_payload("online"))
        assert status["commands"]["subscribed"] is False
    finally:
        outbox.close()
        broker.stop()


def test_more_requests_than_the_rate_are_refused_not_queued():
    commands = Commands(("enter",), handle=lambda request: {"ok": True, "message": "done"})
    taken = [commands.answer(_request(f"r{i}"), False, 100.0)["ok"] for i in range(BURST + 5)]
    assert taken == [True] * BURST + [False] * 5
    refused = commands.answer(_request("late"), False, 100.0)
    assert "send it again later" in refused["error"]
    # A second later, RATE more go.
    again = [commands.answer(_request(f"s{i}"), False, 101.0)["ok"] for i in range(int(RATE) + 1)]
    assert again == [True] * int(RATE) + [False]
    assert (commands.taken, commands.refused) == (BURST + RATE, 7)
    # A reload is between two gateways: refused, said so.
    commands.handle = None
    assert "reloading" in commands.answer(_request("x"), False, 200.0)["error"]


def _agent_config(tmp_path: Path, broker: Broker) -> Path:
    path = tmp_path / "agent.yaml"
    # The meter answers nothing (nobody listens there): the lorries' tickets are what moves.
    path.write_text(
        f"""\
gateway: {{site: s, id: g, state_dir: {tmp_path / "state"}}}
devices:
  - {{name: ft101, protocol: modbus_tcp, host: 127.0.0.1, port: {free_port()}, profile: coriolis}}
streams:
  - {{name: feed_a, mass_flow: ft101.mass_flow, accuracy: 0.1 %}}
manual_streams:
  - {{name: tickets, accuracy: 0.2 %, description: weighbridge WB-1}}
nodes:
  - name: yard
    inputs: [tickets]
    outputs: [feed_a]
    window: {{batch: command}}
    tolerance: {{relative: 0.5 %}}
    persistence: 1 h
mqtt:
  brokers: [mqtts://127.0.0.1:{broker.port}]
  ca_file: {broker.pki.ca}
  commands: [enter, batch]
"""
    )
    return path


def test_an_entry_from_the_broker_is_answered_once_committed_and_recorded_once(
    broker: Broker, subscriber: Subscriber, tmp_path: Path
):
    config = _agent_config(tmp_path, broker)
    log = tmp_path / "agent.log"
    operator = Operator(broker)

    def taking_commands(after: int) -> bool:
        statuses = subscriber.records("status")[after:]
        return any((s.get("commands") or {}).get("subscribed") for s in statuses)

    def exchange(key: str, **request: Any) -> dict[str, Any]:
        operator.send(json.dumps({"id": key, **request}).encode())
        answer, _ = operator.answer(key)
        operator.answers.remove((answer, None))  # the next answer to the same id is new
        return answer

    def stop(agent: subprocess.Popen[bytes]) -> None:
        agent.send_signal(signal.SIGTERM)
        assert agent.wait(timeout=30) == 0, log.read_text()

    ticket = {"command": "enter", "stream": "tickets", "quantity": "12.34 t", "by": "mes"}
    start = {"command": "batch", "node": "yard", "action": "start", "batch": "B1", "by": "mes"}
    end = {"command": "batch", "node": "yard", "action": "end", "by": "mes"}
    try:
        agent = start_agent(config, log)
        try:
            assert subscriber.wait_for(lambda: taking_commands(0), 60), log.read_text()
            assert exchange("b1", **start)["ok"] is True
            first = exchange("t1", **ticket, ticket="WB-0001")
            assert first["ok"] is True, first
            assert first["entry"]["via"] == "mqtt"
            assert "warning" not in first
        finally:
            # Killed the moment the answer is in: what was answered is committed already.
            agent.send_signal(signal.SIGKILL)
            agent.wait(timeout=30)
        seen = len(subscriber.records("status"))
        agent = start_agent(config, log)
        try:
            assert subscriber.wait_for(lambda: taking_commands(seen), 60), log.read_text()
            # The sender lost the answer and sends it again: answered, not entered twice; the
            # id is known after the kill, and the ticket too, under another id.
            again = exchange("t1", **ticket, ticket="WB-0001")
            assert (again["ok"], again.get("repeat")) == (True, True), again
            assert "was carried out at" in again["message"]
            refused = exchange("t2", **ticket, ticket="WB-0001")
            assert refused["ok"] is False
            assert "ticket WB-0001 of tickets was entered" in refused["error"]
            # A second ticket, then the batch's end.
            assert exchange("t3", **ticket, ticket="WB-0002")["ok"] is True
            assert exchange("b2", **end)["ok"] is True
            assert subscriber.wait_for(lambda: subscriber.records("balance"), 60), log.read_text()
        finally:
            stop(agent)
    finally:
        operator.close()

    def entries() -> list[dict[str, Any]]:  # a re-send after the kill is the same record
        return list({(e["epoch"], e["seq"]): e for e in subscriber.records("entry")}.values())

    assert subscriber.wait_for(lambda: len(entries()) >= 2, 30)
    assert sorted(e["ticket"] for e in entries()) == ["WB-0001", "WB-0002"]
    assert {(e["via"], e["by"], e["quantity_kg"]) for e in entries()} == {("mqtt", "mes", 12340.0)}
    for entry in entries():
        assert problems("entry", entry) == []
    # The batch started and ended from the broker, resumed across the restart, says by whom.
    # (Inconclusive: its meter never answered.)
    (balance,) = subscriber.records("balance")
    assert (balance["batch"], balance["started_by"], balance["ended_by"]) == ("B1", "mes", "mes")
