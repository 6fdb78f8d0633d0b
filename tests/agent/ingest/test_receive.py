"""The ingest's bulk receive path (agent/ingest/receive.py) on byte streams made here: every
whole packet handled once and in order however the stream is cut into reads, PUBLISHes with
or without properties taken, and what is not a QoS 1 PUBLISH handed to paho."""

from __future__ import annotations

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode

from massgate.agent.ingest import receive


def varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def publish(topic: str, mid: int, payload: bytes, properties: bytes = b"") -> bytes:
    name = topic.encode()
    body = len(name).to_bytes(2, "big") + name + mid.to_bytes(2, "big")
    body += varint(len(properties)) + properties + payload
    return bytes((0x32,)) + varint(len(body)) + body


PINGRESP = bytes((0xD0, 0x00))
# Message expiry (0x02, four bytes) and a user property (0x26, two strings).
PROPERTIES = b"\x02\x00\x00\x00\x3c" + b"\x26\x00\x01k\x00\x01v"
MESSAGES = [
    ("massgate/north/skid-1/telemetry", 1, b"{}"),
    ("massgate/north/skid-1/totals", 2, b"x" * 300),  # a length of two bytes
    ("massgate/north/skid-2/alarm", 65535, b""),
    ("massgate/north/skid-2/hourly", 7, b"y" * 20000),  # longer than a TLS record
]
STREAM = (
    publish(*MESSAGES[0])
    + PINGRESP
    + publish(*MESSAGES[1], properties=PROPERTIES)
    + publish(*MESSAGES[2])
    + publish(*MESSAGES[3])
)


def client(taken: list[tuple[str, int, bytes]]) -> receive.Client:
    return receive.Client(
        deliver=taken.extend,
        callback_api_version=CallbackAPIVersion.VERSION2,
        protocol=mqtt.MQTTv5,
        manual_ack=True,
    )


@pytest.mark.parametrize("cut", [*range(0, 40), *range(40, len(STREAM), 997), len(STREAM)])
def test_every_whole_packet_is_handled_once_and_in_order_however_the_reads_fall(cut: int):
    taken: list[tuple[str, int, bytes]] = []
    c = client(taken)
    pending = bytearray(STREAM[:cut])
    batch: list[tuple[str, int, bytes]] = []
    pos, rc = c._handle_all(pending, batch)
    c._flush(batch)
    assert rc == MQTTErrorCode.MQTT_ERR_SUCCESS
    rest = bytearray(pending[pos:] + STREAM[cut:])
    pos, rc = c._handle_all(rest, batch)
    c._flush(batch)
    assert rc == MQTTErrorCode.MQTT_ERR_SUCCESS
    assert pos == len(rest)  # nothing left over
    assert taken == MESSAGES


def test_what_is_not_a_qos_1_publish_goes_to_paho(monkeypatch: pytest.MonkeyPatch):
    handled: list[int] = []
    taken: list[tuple[str, int, bytes]] = []
    c = client(taken)
    original = mqtt.Client._packet_handle

    def spy(self: mqtt.Client) -> MQTTErrorCode:
        handled.append(self._in_packet["command"])
        return original(self)  # type: ignore[no-any-return]

    monkeypatch.setattr(mqtt.Client, "_packet_handle", spy)
    qos0 = bytes((0x30,)) + STREAM[1:]  # the first PUBLISH at QoS 0
    stream = qos0[: len(publish(*MESSAGES[0]))] + PINGRESP
    pos, rc = c._handle_all(bytearray(stream), taken)
    assert (pos, rc) == (len(stream), MQTTErrorCode.MQTT_ERR_SUCCESS)
    assert handled == [0x30, 0xD0]  # paho's: the QoS 0 PUBLISH and the PINGRESP
    assert taken == []


def test_a_length_of_five_bytes_is_a_protocol_error():
    c = client([])
    pos, rc = c._handle_all(bytearray(b"\x32\xff\xff\xff\xff\x01"), [])
    assert (pos, rc) == (0, MQTTErrorCode.MQTT_ERR_PROTOCOL)


def test_a_batch_is_acknowledged_in_one_write():
    c = client([])
    c.ack_all([1, 2, 65535])
    (packet,) = c._out_packet
    assert packet["packet"] == b"\x40\x02\x00\x01" + b"\x40\x02\x00\x02" + b"\x40\x02\xff\xff"


class Reads:
    """A socket whose reads return the stream a piece at a time, `None` meaning 'nothing
    more now' (a non-blocking read that would block)."""

    def __init__(self, pieces: list[bytes | None]) -> None:
        self.pieces = pieces

    def recv(self, size: int) -> bytes:
        piece = self.pieces.pop(0) if self.pieces else None
        if piece is None:
            raise BlockingIOError
        assert len(piece) <= size
        return piece

    def close(self) -> None:
        pass


@pytest.mark.parametrize("size", [1, 7, 1000, 16384])
def test_a_packet_cut_between_reads_waits_for_its_rest(size: int):
    taken: list[tuple[str, int, bytes]] = []
    c = client(taken)
    pieces: list[bytes | None] = []
    for i in range(0, len(STREAM), size):
        pieces += [STREAM[i : i + size], None]
    c._sock = Reads(pieces)  # type: ignore[assignment]
    for _ in range(len(pieces)):
        assert c._packet_read() in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_AGAIN)
    assert taken == MESSAGES


def test_a_failure_in_handling_drops_the_connection_and_keeps_what_was_taken(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
):
    """A handler that raises (a bug, a callback) must not end paho's thread, which would
    stop the ingest without a word: the error is logged and the connection dropped (the
    broker sends again what was not acknowledged); what was taken before it is delivered."""
    taken: list[tuple[str, int, bytes]] = []
    c = client(taken)

    def fails(self: mqtt.Client) -> MQTTErrorCode:
        raise RuntimeError("a bug")

    monkeypatch.setattr(mqtt.Client, "_packet_handle", fails)
    c._sock = Reads([publish(*MESSAGES[0]) + PINGRESP])  # type: ignore[assignment]
    assert c._packet_read() == MQTTErrorCode.MQTT_ERR_PROTOCOL
    assert taken == MESSAGES[:1]
    assert "handling what the broker sent failed" in caplog.text
