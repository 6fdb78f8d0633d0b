"""The ingest's MQTT client: paho, with a receive path for a backlog of QoS 1 records.

paho reads a packet at a time: one byte of command, the length a byte at a time, then the
body, each a read of the TLS socket, and one select() per packet; then it builds a message,
a Properties object and a topic match per PUBLISH. For a gateway's week offline, delivered
at once, that is where the ingest's time went (profiled: paho's thread near a full core at
5 k records/s, the database far from it).

Here one read takes whatever the socket has (up to READ_SIZE) and every whole packet in it is
handled in turn: a QoS 1 PUBLISH (all the ingest subscribes to) goes straight to `deliver`,
and every other packet (CONNACK, SUBACK, PINGRESP, DISCONNECT, a PUBLISH with a topic alias)
is handed to paho's own handler as paho would have read it. A packet that is not whole yet
waits for the next read. Acknowledgements for a stored batch go out as one write
(`ack_all`), not one write and one wake-up per record.

Both use paho internals (`_packet_read`, `_in_packet`, `_packet_handle`, `_packet_queue`);
when those are not as expected, paho's own path is used and the ingest is only slower.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import MQTTErrorCode
from paho.mqtt.exception import MalformedPacket

log = logging.getLogger(__name__)

READ_SIZE = 256 * 1024
PUBLISH, PUBACK = 0x30, 0x40
MAX_PACKET = 268_435_455  # the largest remaining length MQTT can encode

Deliver = Callable[[list[tuple[str, int, bytes]]], None]  # (topic, packet id, payload)s


def _fresh_in_packet() -> Any:  # paho's _InPacket
    return {
        "command": 0,
        "have_remaining": 0,
        "remaining_count": [],
        "remaining_mult": 1,
        "remaining_length": 0,
        "packet": bytearray(b""),
        "to_process": 0,
        "pos": 0,
    }


def _varint(buf: bytearray | bytes, pos: int) -> tuple[int, int] | None:
    """MQTT's variable byte integer at `pos`: (value, position after it); None when it is not
    all in `buf` yet. Raises ValueError for one longer than four bytes."""
    value, shift = 0, 0
    for i in range(4):
        if pos + i >= len(buf):
            return None
        byte = buf[pos + i]
        value += (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos + i + 1
        shift += 7
    raise ValueError("a length longer than four bytes")


class Client(mqtt.Client):
    """paho's Client with the bulk receive path; `deliver` gets every QoS 1 PUBLISH."""

    def __init__(self, *args: Any, deliver: Deliver, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._deliver = deliver
        self._pending = bytearray()
        self._pending_sock: Any = None
        # paho as it was read for this: the fields and methods the fast path uses.
        self._fast = all(
            hasattr(self, a) for a in ("_in_packet", "_packet_handle", "_sock", "_msgtime_mutex")
        ) and isinstance(getattr(self, "_in_packet", None), dict)

    def _packet_read(self) -> MQTTErrorCode:
        if not self._fast or self._in_packet.get("command", 0) != 0:
            # paho is midway through a packet of its own reading: it finishes it.
            return super()._packet_read()
        if self._pending_sock is not self._sock:  # a new connection: nothing carried over
            self._pending = bytearray()
            self._pending_sock = self._sock
        try:
            data = self._sock_recv(READ_SIZE)
        except BlockingIOError:
            return MQTTErrorCode.MQTT_ERR_AGAIN
        except OSError as err:
            log.debug("ingest: failed to receive on socket: %s", err)
            return MQTTErrorCode.MQTT_ERR_CONN_LOST
        if not data:
            return MQTTErrorCode.MQTT_ERR_CONN_LOST
        buf = self._pending
        buf += data
        # A TLS read gives one record (16 kB) at most: read on while the socket has more,
        # so that one pass of paho's loop (a select, a pending check) takes a backlog's
        # worth, not a record's. An error or the end shows at the next read.
        while len(data) and len(buf) < READ_SIZE:
            try:
                data = self._sock_recv(READ_SIZE - len(buf))
            except OSError:  # BlockingIOError too: nothing more now
                break
            buf += data
        taken: list[tuple[str, int, bytes]] = []
        try:
            pos, rc = self._handle_all(buf, taken)
        except Exception:
            # Never paho's thread ended by what came in (which would stop the ingest
            # receiving without a word): said, and the connection dropped; the broker sends
            # again whatever was not acknowledged.
            log.exception("ingest: handling what the broker sent failed; reconnecting")
            pos, rc = len(buf), MQTTErrorCode.MQTT_ERR_PROTOCOL
        finally:
            self._flush(taken)
        del buf[:pos]
        with self._msgtime_mutex:
            self._last_bytes_received = mqtt.time_func()
        return rc

    def _handle_all(
        self, buf: bytearray, taken: list[tuple[str, int, bytes]]
    ) -> tuple[int, MQTTErrorCode]:
        """Handle every whole packet in `buf`; returns where the unhandled rest begins."""
        pos, end_of_data = 0, len(buf)
        v5 = self._protocol == mqtt.MQTTv5
        while pos + 2 <= end_of_data:
            try:
                found = _varint(buf, pos + 1)
            except ValueError:
                return pos, MQTTErrorCode.MQTT_ERR_PROTOCOL
            if found is None:
                break
            length, body = found
            end = body + length
            if end > end_of_data:
                break
            command = buf[pos]
            # PUBLISH at QoS 1 (any dup and retain flag) is ours; the rest is paho's.
            if command & 0xF6 != PUBLISH | 0x02 or not self._publish(buf, body, end, v5, taken):
                # What was taken goes first, on the connection it came on: paho's handling
                # of this packet (a DISCONNECT) may end that connection.
                self._flush(taken)
                rc = self._paho(command, buf, body, end, length)
                if rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
                    return end, rc
            pos = end
        return pos, MQTTErrorCode.MQTT_ERR_SUCCESS

    def _flush(self, taken: list[tuple[str, int, bytes]]) -> None:
        if taken:
            self._deliver(taken[:])
            taken.clear()

    def _publish(
        self, buf: bytearray, body: int, end: int, v5: bool, taken: list[tuple[str, int, bytes]]
    ) -> bool:
        """Take a QoS 1 PUBLISH; False when it needs paho (a topic alias, or not UTF-8)."""
        if body + 2 > end:
            return False
        topic_length = (buf[body] << 8) | buf[body + 1]
        p = body + 2 + topic_length
        if topic_length == 0 or p + 2 > end:
            return False
        try:
            topic = buf[body + 2 : p].decode("utf-8")
        except UnicodeDecodeError:
            return False
        mid = (buf[p] << 8) | buf[p + 1]
        p += 2
        if v5:
            try:
                found = _varint(buf, p)
            except ValueError:
                return False
            if found is None:
                return False
            properties, p = found
            p += properties
            if p > end:
                return False
        taken.append((topic, mid, bytes(buf[p:end])))
        return True

    def _paho(
        self, command: int, buf: bytearray, body: int, end: int, length: int
    ) -> MQTTErrorCode:
        """Hand one whole packet to paho's handler, as its own reading would have."""
        packet = _fresh_in_packet()
        packet.update(
            command=command,
            have_remaining=1,
            remaining_length=length,
            packet=bytearray(buf[body:end]),
        )
        self._in_packet = packet
        try:
            rc: MQTTErrorCode = self._packet_handle()
        except MalformedPacket as exc:
            log.debug("ingest: malformed packet: %s", exc)
            rc = MQTTErrorCode.MQTT_ERR_PROTOCOL
        finally:
            self._in_packet = _fresh_in_packet()
        return rc

    def ack_all(self, mids: Iterable[int]) -> None:
        """Acknowledge QoS 1 messages with one write: a PUBACK each, without reason code or
        properties (MQTT 5 allows that for success), queued as one buffer."""
        mids = list(mids)
        if not mids:
            return
        if not self._fast:
            for mid in mids:
                self.ack(mid, 1)
            return
        packets = bytearray()
        for mid in mids:
            packets += bytes((PUBACK, 2, mid >> 8, mid & 0xFF))
        self._packet_queue(PUBACK, packets, 0, 0)
