"""The broker link: one thread of ours that owns the paho client.

paho-mqtt runs on this thread (not paho's own loop thread, whose reconnect logic swallows
the reason a connection failed): every paho call happens here. It connects with capped,
jittered backoff across the configured brokers (TLS with the context `massgate check`
built, credentials read at every attempt) and says in one log line why a connection
failed. It runs paho's external-loop API (`loop_read`, `loop_write`, `loop_misc`) around
its own select(), which also watches a socket pair the asyncio side writes to when it hands
over messages, so a message waits for no timer. A fresh paho client is made for every
connection, so paho never re-sends on its own.

Two things keep this thread's CPU per message at or under paho's own loop thread, which is
what decides how fast a backlog drains: what paho queues is written once per turn of the
loop, after the read (not a TLS write per PUBACK, each waking the broker for one message),
and a PUBACK that is only a packet id and a reason code is decoded without paho's reason-code
and property objects (_Client). `massgate bench outbox` measures both against raw paho.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import random
import select
import socket
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

from ..config import BrokerEndpoint, MqttConfig
from ..core import preflight
from ..store.outbox import Message

log = logging.getLogger(__name__)

BACKOFF_MIN = 0.5
# Short enough that delivery resumes within seconds of a broker's return after an outage;
# the jitter still spreads a site's gateways over that time.
BACKOFF_MAX = 15.0
# A session that ends sooner than this after CONNACK was not a good one: a broker that
# accepts us and then drops us (an ACL, a duplicate client id from a cloned SD card, a
# quota) is backed off from like one that refuses, instead of reconnected to at once.
STABLE_SESSION = 10.0
SUMMARY_EVERY = 600.0  # s between summaries of a connection failure that keeps repeating
ACK_POST = 200  # PUBACKs reported to the asyncio side at once...
ACK_POST_DELAY = 0.02  # ... or after this many seconds
STATUS_SEQ = -1  # marks a message that is not from the outbox (status, goodbye, answers)
# MQTT 5: the largest packet the broker may send us (a command; PUBACKs are a few bytes). A
# larger command is dropped by the broker, not read into this gateway's memory; one of up to
# this size is read and refused with an answer when it is over commands' own limit.
MAX_PACKET_IN = 256 * 1024
NOT_SENT = "not sent"  # paho did not take the message: taken again at once, not refused


def tls_context(config: MqttConfig) -> ssl.SSLContext:
    """The context `massgate check` built from the same files (agent/core/preflight.py)."""
    return preflight.tls_context(
        ca_file=config.ca_file, client_cert=config.client_cert, client_key=config.client_key
    )


def read_password(config: MqttConfig) -> str | None:
    """The broker password from its file or environment variable; never logged.

    Read at every connection attempt, so a corrected file takes effect without a restart.
    Raises ValueError saying what is missing (but not the secret).
    """
    return preflight.read_secret(file=config.password_file, env=config.password_env, where="mqtt")


def describe_failure(endpoint: BrokerEndpoint, exc: BaseException) -> str:
    """One line a plant engineer can act on."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return (
            f"{endpoint}: TLS: the broker's certificate was rejected: "
            f"{exc.verify_message or exc.reason} (check mqtt.ca_file and the broker's host name)"
        )
    if isinstance(exc, ssl.SSLError):
        return f"{endpoint}: TLS handshake failed: {exc.reason or exc}"
    if isinstance(exc, ConnectionRefusedError):
        return f"{endpoint}: connection refused (is the broker running and listening there?)"
    if isinstance(exc, TimeoutError | socket.timeout):
        return f"{endpoint}: no answer (timed out)"
    if isinstance(exc, socket.gaierror):
        return f"{endpoint}: cannot resolve host name: {exc.strerror}"
    return f"{endpoint}: {exc}"


def _watched(client: mqtt.Client, userdata: Any, sock: Any) -> None:
    """Nothing to do: _pump asks paho at every turn whether it wants to write."""


def _disconnect(client: mqtt.Client) -> None:
    """DISCONNECT queued and written now (paho leaves the writing to our loop)."""
    client.disconnect()
    client.loop_write()


_PUBACK_OK = ReasonCode(PacketTypes.PUBACK)  # "Success"
_NO_PROPERTIES = Properties(PacketTypes.PUBACK)  # type: ignore[no-untyped-call]
_PUBACK_REASONS: dict[int, ReasonCode] = {}


def _puback_reason(code: int) -> ReasonCode | None:
    """The one shared reason code for a PUBACK's `code`; None for a code MQTT 5 does not
    have (paho's own decoding then says the packet is malformed)."""
    found = _PUBACK_REASONS.get(code)
    if found is None:
        try:
            found = ReasonCode(PacketTypes.PUBACK, identifier=code)
        except Exception:
            return None
        _PUBACK_REASONS[code] = found
    return found


class _Client(mqtt.Client):
    """paho's client, with a leaner PUBACK and a TLS handshake that cannot leak a socket.

    paho 2.x leaves the TLS socket open when the handshake fails, so a gateway retrying
    against a broker with a wrong certificate would leak a descriptor per attempt. Same
    steps as paho's own method (our context always checks the host name), closing on error.
    """

    def _handle_pubackcomp(self, cmd: Literal["PUBACK", "PUBCOMP"]) -> MQTTErrorCode:
        # paho builds two reason codes (each a copy of a table of forty names) and a property
        # set for every PUBACK: a quarter of its CPU per message in a drain. A PUBACK that is
        # a packet id and at most a reason code (what Mosquitto sends: "Success", or "No
        # matching subscribers" when nobody listens) takes the same steps here with shared
        # ones. Anything else (properties, PUBCOMP, a malformed packet) is paho's, and so is
        # every PUBACK of a paho whose insides have moved.
        try:
            packet, waiting, lock, v5 = (
                self._in_packet["packet"],
                self._out_messages,
                self._out_message_mutex,
                self._protocol == mqtt.MQTTv5,
            )
        except (AttributeError, KeyError):
            return super()._handle_pubackcomp(cmd)
        size = len(packet) if cmd == "PUBACK" else 0
        if size == 2:
            reason: ReasonCode | None = _PUBACK_OK
        elif v5 and (size == 3 or (size == 4 and packet[3] == 0)):
            reason = _puback_reason(packet[2])
        else:
            reason = None
        if reason is None:
            return super()._handle_pubackcomp(cmd)
        mid = int.from_bytes(packet[:2], "big")
        with lock:
            if mid in waiting:
                return self._do_on_publish(mid, reason, _NO_PROPERTIES)
        return MQTTErrorCode.MQTT_ERR_SUCCESS

    def _ssl_wrap_socket(self, tcp_sock: socket.socket) -> ssl.SSLSocket:
        assert self._ssl_context is not None
        assert self._ssl_context.check_hostname
        ssl_sock = self._ssl_context.wrap_socket(
            tcp_sock, server_hostname=self._host, do_handshake_on_connect=False
        )
        try:
            ssl_sock.settimeout(self._connect_timeout)
            ssl_sock.do_handshake()
        except BaseException:
            ssl_sock.close()
            raise
        return ssl_sock


@dataclass(frozen=True, slots=True)
class _Outgoing:
    generation: int
    message: Message
    retain: bool = False
    correlation: bytes | None = None  # MQTT 5: an answer carries its request's correlation data


def _ignore(*_: Any) -> None:
    """No command topic: nothing to report."""


@dataclass
class _Events:
    """What the link thread reports back, delivered on the asyncio loop."""

    on_connected: Callable[[int, str, int], None]
    on_disconnected: Callable[[int, str | None], None]
    on_acks: Callable[[int, list[tuple[int, str | None]]], None]  # seq, failure reason
    # The broker's SUBACK for the command topic: None when taken, else its reason code.
    on_subscribed: Callable[[int, str | None], None] = _ignore
    # A message on the command topic: payload, its retain flag, its correlation data.
    on_command: Callable[[int, bytes, bool, bytes | None], None] = _ignore


class _Said:
    """A reason that repeats is logged once, then summarized every SUMMARY_EVERY seconds."""

    def __init__(self) -> None:
        self.reason: str | None = None
        self.repeats = 0
        self.summary_at = 0.0

    def say(self, reason: str, *, extra: dict[str, str]) -> None:
        now = time.monotonic()
        if reason != self.reason:
            if self.repeats:
                self._summary(extra)
            self.reason, self.repeats, self.summary_at = reason, 0, now + SUMMARY_EVERY
            log.error("MQTT: %s; retrying with backoff", reason, extra=extra)
            return
        self.repeats += 1
        if now >= self.summary_at:
            self._summary(extra)
            self.summary_at = now + SUMMARY_EVERY

    def _summary(self, extra: dict[str, str]) -> None:
        log.warning("MQTT: %d more times since: %s", self.repeats, self.reason, extra=extra)
        self.repeats = 0

    def clear(self) -> None:
        self.reason, self.repeats = None, 0


class BrokerLink(threading.Thread):
    """The paho thread: connect, publish what it is given, report PUBACKs."""

    def __init__(
        self,
        config: MqttConfig,
        *,
        status_topic: str,
        birth: bytes,
        will: bytes,
        events: _Events,
        loop: asyncio.AbstractEventLoop,
        command_topic: str | None = None,
    ) -> None:
        super().__init__(name="massgate-mqtt", daemon=True)
        self.config = config
        self.status_topic = status_topic
        self.command_topic = command_topic  # subscribed to at every connection; None: none
        self.birth = birth
        self.will = will
        self.events = events
        self.loop = loop
        self.outgoing: queue.SimpleQueue[list[_Outgoing] | None] = queue.SimpleQueue()
        self.stopping = threading.Event()
        self.generation = 0
        self.session_seconds = 0.0  # how long the last session lasted after CONNACK
        self.session_end: str | None = None  # why it ended, when the broker ended it
        self.session_gone: str | None = None  # the reason code of the broker's DISCONNECT
        self.context = tls_context(config) if any(b.tls for b in config.brokers) else None
        self._goodbye: bytes | None = None
        self._receive_maximum: dict[str, int] = {}  # what each broker said in CONNACK
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self.beat = time.monotonic()  # the last turn of the select loop (the watchdog's)
        self._wake_w.setblocking(False)

    def _post(self, fn: Callable[..., None], *args: Any) -> None:
        with contextlib.suppress(RuntimeError):  # the loop closed as this thread finished
            self.loop.call_soon_threadsafe(fn, *args)

    def send(self, items: list[_Outgoing]) -> None:
        """Hand messages to the thread (from the asyncio side) and wake its select()."""
        self.outgoing.put(items)
        self._nudge()

    def _nudge(self) -> None:
        with contextlib.suppress(BlockingIOError, OSError):  # a full pipe is awake already
            self._wake_w.send(b"\0")

    def stop(self, goodbye: bytes | None = None) -> None:
        self._goodbye = goodbye
        self.stopping.set()
        self.outgoing.put(None)
        self._nudge()

    def close(self) -> None:
        self._wake_r.close()
        self._wake_w.close()

    def run(self) -> None:
        backoff = BACKOFF_MIN
        brokers = list(self.config.brokers)
        index = 0
        said = _Said()
        while not self.stopping.is_set():
            endpoint = brokers[index % len(brokers)]
            self.generation += 1
            self.session_seconds = 0.0
            self.session_end = None
            self.session_gone = None
            try:
                reason = self._session(endpoint, self.generation)
            except Exception as exc:  # a bug here must not end publishing for good
                log.exception("MQTT: unexpected error in the connection to %s", endpoint)
                reason = f"{endpoint}: unexpected error: {exc!r}"
            if self.stopping.is_set():
                break
            if reason is None and self.session_seconds >= STABLE_SESSION:
                # A good session: start the backoff afresh, same broker.
                backoff = BACKOFF_MIN
                if self.session_end is not None:
                    log.warning("MQTT: %s", self.session_end, extra={"broker": str(endpoint)})
                said.clear()
                continue
            if reason is None:
                # One wording whatever paho saw of the close, so that it is said once.
                said_by_broker = f" ({self.session_gone})" if self.session_gone else ""
                reason = (
                    f"{endpoint}: the broker ended the session{said_by_broker} within "
                    f"{STABLE_SESSION:g} s of connecting (the broker restarting, an ACL that "
                    "denies our topics, another gateway with the same client id, a quota?)"
                )
            else:
                index += 1  # fail over to the next broker in the list
                self._post(self.events.on_disconnected, -1, reason)
            said.say(reason, extra={"broker": str(endpoint)})
            # Capped exponential backoff with full jitter: a site's gateways that lost the
            # broker together do not all come back in the same second. The whole list is
            # tried before the wait grows; a broker that drops us at once is waited for.
            if self.session_seconds > 0 or index % len(brokers) == 0:
                self.stopping.wait(random.uniform(backoff / 2, backoff))
                backoff = min(backoff * 2, BACKOFF_MAX)

    def _client(self) -> mqtt.Client:
        v5 = self.config.protocol == "5"
        client = _Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=self.config.client_id,
            protocol=mqtt.MQTTv5 if v5 else mqtt.MQTTv311,
            clean_session=None if v5 else True,
            reconnect_on_failure=False,
        )
        client.will_set(self.status_topic, self.will, qos=1, retain=True)
        if self.config.username is not None:
            client.username_pw_set(self.config.username, read_password(self.config))
        # paho keeps the window in flight (set per session) and queues what was handed over
        # beyond it.
        client.max_queued_messages_set(0)
        # paho writes every packet the moment it is queued unless an external loop says it
        # watches the socket for writing; ours does (_pump writes whatever is queued after
        # each read). Without this, each PUBACK read sent the next PUBLISH at once, one TLS
        # record and one wake-up of the broker per message: 1.5 times the CPU per message of
        # paho's own loop thread, which writes a read's worth of them together.
        client.on_socket_register_write = _watched
        client.on_socket_unregister_write = _watched
        return client

    def _session(self, endpoint: BrokerEndpoint, generation: int) -> str | None:
        """One connection, start to end. Returns why it failed, or None after a good session."""
        try:
            client = self._client()
        except ValueError as exc:
            return str(exc)
        if endpoint.tls:
            assert self.context is not None
            client.tls_set_context(self.context)
        mids: dict[int, int] = {}
        acks: list[tuple[int, str | None]] = []
        v5 = self.config.protocol == "5"
        window = min(self.config.in_flight, self._receive_maximum.get(str(endpoint), 65535))
        client.max_inflight_messages_set(window)
        state: dict[str, Any] = {"connack": None, "gone": None, "receive_maximum": None}

        def on_connect(c: mqtt.Client, u: Any, f: Any, rc: ReasonCode, props: Any) -> None:
            state["connack"] = rc
            # MQTT 5: never more in flight than the broker says it can receive.
            receive_maximum = getattr(props, "ReceiveMaximum", None)
            if receive_maximum:
                state["receive_maximum"] = int(receive_maximum)

        def on_disconnect(c: mqtt.Client, u: Any, f: Any, rc: ReasonCode, p: Any) -> None:
            state["gone"] = rc

        def on_publish(c: mqtt.Client, u: Any, mid: int, rc: ReasonCode, p: Any) -> None:
            seq = mids.pop(mid, None)
            if seq is not None and seq != STATUS_SEQ:
                acks.append((seq, rc.getName() if rc.is_failure else None))

        def on_subscribe(c: mqtt.Client, u: Any, mid: int, codes: list[ReasonCode], p: Any) -> None:
            refused = next((rc.getName() for rc in codes if rc.is_failure), None)
            self._post(self.events.on_subscribed, generation, refused)

        def on_message(c: mqtt.Client, u: Any, message: mqtt.MQTTMessage) -> None:
            # paho acknowledges a QoS 1 message when this returns: the command is then the
            # agent's to carry out or refuse, and its answer says which.
            if message.topic != self.command_topic:
                return  # nothing else is subscribed to; a broker's stray message is no command
            props = message.properties if v5 else None
            correlation = getattr(props, "CorrelationData", None) if props is not None else None
            self._post(
                self.events.on_command,
                generation,
                bytes(message.payload),
                bool(message.retain),
                bytes(correlation) if correlation is not None else None,
            )

        client.on_connect = on_connect
        client.on_disconnect = on_disconnect
        client.on_publish = on_publish
        connect_properties = None
        if self.command_topic is not None:
            client.on_subscribe = on_subscribe
            client.on_message = on_message
            if v5:
                connect_properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
                connect_properties.MaximumPacketSize = MAX_PACKET_IN
        try:
            client.connect(
                endpoint.host,
                endpoint.port,
                keepalive=round(self.config.keepalive),
                properties=connect_properties,
            )
        except (OSError, ssl.SSLError) as exc:
            return describe_failure(endpoint, exc)

        deadline = time.monotonic() + max(self.config.keepalive, 10.0)
        while state["connack"] is None and state["gone"] is None:
            if self.stopping.is_set() or time.monotonic() > deadline:
                _disconnect(client)
                return f"{endpoint}: no CONNACK from the broker"
            if self._pump(client, 0.05) != mqtt.MQTT_ERR_SUCCESS and state["connack"] is None:
                hint = self._certificate_hint(endpoint)
                return f"{endpoint}: connection closed before CONNACK{hint}"
        connack = state["connack"]
        if connack is None or connack.is_failure:
            _disconnect(client)
            why = connack.getName() if connack is not None else state["gone"]
            hint = self._certificate_hint(endpoint) if why == "Unspecified error" else ""
            return f"{endpoint}: the broker refused the connection: {why}{hint}"

        receive_maximum = state["receive_maximum"]
        if receive_maximum is not None and receive_maximum < window:
            # paho cannot narrow its window on a live connection: reconnect with it narrowed.
            self._receive_maximum[str(endpoint)] = receive_maximum
            _disconnect(client)
            return (
                f"{endpoint}: the broker takes {receive_maximum} messages in flight, fewer than "
                f"mqtt.in_flight ({self.config.in_flight}); reconnecting with {receive_maximum}"
            )
        log.info("MQTT: connected to %s", endpoint)
        connected_at = time.monotonic()
        # The birth is the last health message the asyncio side made (the outbox is not this
        # thread's to read); a fresh one follows at once.
        mids[client.publish(self.status_topic, self.birth, qos=1, retain=True).mid] = STATUS_SEQ
        self._post(self.events.on_connected, generation, str(endpoint), window)
        if self.command_topic is not None:
            # Subscribe only: commands come from whoever the broker's ACL lets write there.
            # Every connection is a clean session, so this is asked again each time.
            if v5:
                client.subscribe(self.command_topic, options=SubscribeOptions(qos=1))
            else:
                client.subscribe(self.command_topic, qos=1)
        reason: str | None = None
        acks_since = 0.0
        while state["gone"] is None:
            if self.stopping.is_set():
                self._say_goodbye(client, generation, mids, acks)
                break
            self._send_waiting(client, generation, mids, acks)
            rc = self._pump(client, ACK_POST_DELAY if acks else 1.0)
            if acks:
                # PUBACKs go back in batches: waking the asyncio side for each one would
                # keep both threads fighting over the GIL.
                now = time.monotonic()
                acks_since = acks_since or now
                if len(acks) >= ACK_POST or now - acks_since >= ACK_POST_DELAY:
                    self._post(self.events.on_acks, generation, acks[:])
                    acks.clear()
                    acks_since = 0.0
            if rc != mqtt.MQTT_ERR_SUCCESS:
                reason = f"{endpoint}: connection lost ({mqtt.error_string(rc)})"
                break
        if acks:  # PUBACKs that came in before the end of the connection count
            self._post(self.events.on_acks, generation, acks[:])
            acks.clear()
        if state["gone"] is not None and reason is None and not self.stopping.is_set():
            reason = f"{endpoint}: disconnected by the broker ({state['gone']})"
        self._post(self.events.on_disconnected, generation, reason)
        # It was connected: run() decides by how long whether to reconnect soon or back off,
        # and says why it ended.
        self.session_seconds = time.monotonic() - connected_at
        self.session_end = reason
        self.session_gone = str(state["gone"]) if state["gone"] is not None else None
        return None

    def _certificate_hint(self, endpoint: BrokerEndpoint) -> str:
        # Mosquitto with require_certificate ends a session without a client certificate
        # this way, unexplained (a closed socket or an unspecified CONNACK).
        if endpoint.tls and self.config.client_cert is None:
            return " (if the broker requires client certificates: set mqtt.client_cert/client_key)"
        return ""

    def _pump(self, client: mqtt.Client, timeout: float) -> MQTTErrorCode:
        """One round of paho's external loop: wait for the socket or a nudge, read, write."""
        self.beat = time.monotonic()
        sock = client.socket()
        if sock is None:
            return mqtt.MQTT_ERR_NO_CONN
        # Bytes already decrypted inside the TLS layer do not wake select().
        pending = sock.pending() if isinstance(sock, ssl.SSLSocket) else 0
        writing = [sock] if client.want_write() else []
        try:
            readable, writable, _ = select.select(
                [sock, self._wake_r], writing, [], 0.0 if pending else timeout
            )
        except (OSError, ValueError):
            return mqtt.MQTT_ERR_CONN_LOST
        if self._wake_r in readable:
            with contextlib.suppress(BlockingIOError):
                self._wake_r.recv(4096)
        if sock in readable or pending:
            rc = client.loop_read()
            if rc != mqtt.MQTT_ERR_SUCCESS:
                return rc
        if writable or client.want_write():
            rc = client.loop_write()
            if rc != mqtt.MQTT_ERR_SUCCESS:
                return rc
        return client.loop_misc()

    def _send_waiting(
        self,
        client: mqtt.Client,
        generation: int,
        mids: dict[int, int],
        acks: list[tuple[int, str | None]],
    ) -> None:
        while True:
            try:
                items = self.outgoing.get_nowait()
            except queue.Empty:
                return
            if items is None:
                continue
            for item in items:
                if item.generation != generation:
                    continue  # handed over for a connection that is gone; still in the outbox
                message = item.message
                properties = None
                if item.correlation is not None and self.config.protocol == "5":
                    properties = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
                    properties.CorrelationData = item.correlation
                info = client.publish(
                    message.topic,
                    message.payload,
                    qos=1,
                    retain=item.retain,
                    properties=properties,
                )
                if info.rc != mqtt.MQTT_ERR_SUCCESS:
                    # Not sent; out of the window so that it is taken again from the outbox.
                    if message.seq != STATUS_SEQ:
                        acks.append((message.seq, NOT_SENT))
                    continue
                mids[info.mid] = message.seq

    def _say_goodbye(
        self,
        client: mqtt.Client,
        generation: int,
        mids: dict[int, int],
        acks: list[tuple[int, str | None]],
    ) -> None:
        """Wait briefly for PUBACKs still owed, publish 'offline' retained, disconnect."""
        deadline = time.monotonic() + 2.0
        if self._goodbye is not None:
            info = client.publish(self.status_topic, self._goodbye, qos=1, retain=True)
            mids[info.mid] = STATUS_SEQ
        while mids and time.monotonic() < deadline:
            if self._pump(client, 0.05) != mqtt.MQTT_ERR_SUCCESS:
                break
        if acks:
            self._post(self.events.on_acks, generation, acks[:])
            acks.clear()
        _disconnect(client)
