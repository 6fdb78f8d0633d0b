"""MQTT publisher: TLS, QoS 1, a window in flight, records deleted only on PUBACK.

paho-mqtt runs on one thread of ours (not paho's own loop thread, whose reconnect logic
swallows the reason a connection failed): every paho call happens on that thread, which
connects with capped, jittered backoff across the configured brokers and says in one log
line why a connection failed. It runs paho's external-loop API (`loop_read`, `loop_write`,
`loop_misc`) around its own select(), which also watches a socket pair the asyncio side
writes to when it hands over messages, so a message waits for no timer.

The outbox is the only copy that matters. A fresh paho client is made for every connection,
so paho never re-sends on its own; after a disconnect the window is cleared and the records
are taken again from the outbox. A PUBACK lost with the link means a duplicate, never a gap
(at-least-once); consumers drop duplicates by (epoch, seq).

Throughput comes from batching on both sides of the thread boundary: messages are taken
from the outbox a thousand at a time and handed over in lists, ahead of the window (paho
holds the window of QoS 1 messages in flight and queues the rest, as when it is used
alone, so a PUBACK releases the next message without a round trip through asyncio),
PUBACKs come back in lists,
and acknowledged records are deleted in one transaction every quarter second (without a
disk sync: an acknowledgement lost to a power cut costs a duplicate, never a record).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import os
import queue
import random
import select
import socket
import ssl
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.reasoncodes import ReasonCode

from ..config import BrokerEndpoint, MqttConfig
from ..core import preflight
from ..core.records import topic, utc
from ..store.outbox import Message, Outbox

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
REFUSED_RETRY_FIRST = 5.0  # s before a record the broker refused is sent again; doubles
REFUSED_RETRY_MAX = 60.0  # a fixed ACL is noticed within a minute
REFUSED_LOG_EVERY = 60.0  # s: one log line per refusal reason at most this often
PREFETCH = 1000  # messages taken from the outbox at once
AHEAD = 500  # messages handed to the paho thread beyond the window, so it never waits for us
ACK_POST = 200  # PUBACKs reported to the asyncio side at once...
ACK_POST_DELAY = 0.02  # ... or after this many seconds
ACK_FLUSH = 0.25  # s between deletions of acknowledged records
ACK_BATCH = 2000  # ... or sooner when this many are waiting
STATUS_SEQ = -1  # marks a message that is not from the outbox (status, goodbye)
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
    if config.password_env is not None:
        value = os.environ.get(config.password_env)
        if value is None:
            raise ValueError(
                f"mqtt.password_env: the environment variable {config.password_env} is not set"
            )
        return value
    if config.password_file is not None:
        path = preflight.credential_path(config.password_file)
        if path is None:
            raise ValueError(
                f"mqtt.password_file names {preflight.CREDENTIALS}, which systemd sets only "
                "for a service with LoadCredential="
            )
        try:
            return path.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ValueError(f"mqtt.password_file: cannot read {path}: {exc.strerror}") from None
    return None


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


class _Client(mqtt.Client):
    """paho 2.x leaves the TLS socket open when the handshake fails, so a gateway retrying
    against a broker with a wrong certificate would leak a descriptor per attempt. Same
    steps as paho's own method (our context always checks the host name), closing on error.
    """

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


@dataclass
class LinkStatus:
    connected: bool = False
    broker: str | None = None
    last_error: str | None = None
    last_publish: float | None = None
    connects: int = 0
    published: int = 0
    acked: int = 0
    window: int = 0  # messages in flight allowed on this connection
    refused: dict[str, int] = field(default_factory=dict)  # PUBACK failure reason: count


@dataclass(frozen=True, slots=True)
class _Outgoing:
    generation: int
    message: Message
    retain: bool = False


@dataclass
class _Events:
    """What the link thread reports back, delivered on the asyncio loop."""

    on_connected: Callable[[int, str, int], None]
    on_disconnected: Callable[[int, str | None], None]
    on_acks: Callable[[int, list[tuple[int, str | None]]], None]  # seq, failure reason


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
    ) -> None:
        super().__init__(name="massgate-mqtt", daemon=True)
        self.config = config
        self.status_topic = status_topic
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
                    f"{STABLE_SESSION:g} s of connecting (an ACL that denies our topics, "
                    "another gateway with the same client id, a quota?)"
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

        client.on_connect = on_connect
        client.on_disconnect = on_disconnect
        client.on_publish = on_publish
        try:
            client.connect(endpoint.host, endpoint.port, keepalive=round(self.config.keepalive))
        except (OSError, ssl.SSLError) as exc:
            return describe_failure(endpoint, exc)

        deadline = time.monotonic() + max(self.config.keepalive, 10.0)
        while state["connack"] is None and state["gone"] is None:
            if self.stopping.is_set() or time.monotonic() > deadline:
                client.disconnect()
                return f"{endpoint}: no CONNACK from the broker"
            if self._pump(client, 0.05) != mqtt.MQTT_ERR_SUCCESS and state["connack"] is None:
                hint = self._certificate_hint(endpoint)
                return f"{endpoint}: connection closed before CONNACK{hint}"
        connack = state["connack"]
        if connack is None or connack.is_failure:
            client.disconnect()
            why = connack.getName() if connack is not None else state["gone"]
            hint = self._certificate_hint(endpoint) if why == "Unspecified error" else ""
            return f"{endpoint}: the broker refused the connection: {why}{hint}"

        receive_maximum = state["receive_maximum"]
        if receive_maximum is not None and receive_maximum < window:
            # paho cannot narrow its window on a live connection: reconnect with it narrowed.
            self._receive_maximum[str(endpoint)] = receive_maximum
            client.disconnect()
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
                info = client.publish(message.topic, message.payload, qos=1, retain=item.retain)
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
        client.disconnect()
        self._pump(client, 0.1)


@dataclass
class Publisher:
    """Moves records from the outbox to the broker; deletes them when PUBACKed."""

    outbox: Outbox
    config: MqttConfig
    site: str
    gateway: str
    drain_rate: float = 0.0  # messages/s; 0 is no limit
    status: LinkStatus = field(default_factory=LinkStatus)
    health: Callable[[], dict[str, Any]] | None = None  # extra fields for the status topic
    _wake: asyncio.Event = field(default_factory=asyncio.Event)
    _in_flight: set[int] = field(default_factory=set)  # handed to paho, not acknowledged
    _acked: list[int] = field(default_factory=list)  # acknowledged, not yet deleted
    _acked_set: set[int] = field(default_factory=set)
    _acked_since: float = 0.0
    _buffer: deque[Message] = field(default_factory=deque)
    _stale: bool = True  # the buffer must be taken afresh (from the head of the outbox)
    _cursor: tuple[int, int] | None = None  # (priority, seq) of the last message taken
    _evictions: int = 0
    _generation: int = 0
    _tokens: float = 0.0
    _tokens_at: float = 0.0
    _next_status: float = 0.0
    _link: BrokerLink | None = None
    # Records the broker refused (PUBACK with a failure reason): seq -> (when to send again,
    # how long the wait was). They stay in the outbox; nothing is deleted without success.
    _refused: dict[int, tuple[float, float]] = field(default_factory=dict)
    _refused_said: dict[str, float] = field(default_factory=dict)  # reason -> logged at
    _dropped_seen: dict[str, int] | None = None
    skip_drain: bool = False  # stop without draining the outbox (a reload)

    def stalled(self, now: float, limit: float) -> str | None:
        """What is wrong with the MQTT thread, if anything (`now` is monotonic)."""
        link = self._link
        if link is None or link.stopping.is_set():
            return None
        if not link.is_alive():
            return "the MQTT thread has ended"
        if self.status.connected and now - link.beat > limit:
            return f"the MQTT thread has not turned its loop for {now - link.beat:.0f} s"
        return None

    @property
    def status_topic(self) -> str:
        return topic(self.config.topic_prefix, self.site, self.gateway, "status")

    def wake(self, priority: int = 0) -> None:
        """New records of up to `priority` were committed."""
        # Records that rank after the last one taken are found by continuing from it; only
        # a higher priority has to jump the queue.
        if self._cursor is None or priority > self._cursor[0]:
            self._stale = True
        self._wake.set()

    def status_payload(self, state: str, **extra: Any) -> bytes:
        body: dict[str, Any] = {
            "schema": 1,
            "kind": "status",
            "site": self.site,
            "gateway": self.gateway,
            "status": state,
            "time": utc(time.time()),
        }
        if state == "online":
            body["outbox"] = {
                "depth": self.outbox.depth(),
                "bytes": self.outbox.size(),
                "oldest_age_s": _round(self.outbox.oldest_age()),
                "dropped": self.outbox.dropped(),
                "last_seq": self.outbox.last_seq(),
                "epoch": self.outbox.epoch,
            }
            body["link"] = {
                "broker": self.status.broker,
                "connects": self.status.connects,
                "published": self.status.published,
                "acked": self.status.acked,
                "refused": dict(self.status.refused),
            }
            if self.health is not None:
                body.update(self.health())
        body.update(extra)
        return json.dumps(body, separators=(",", ":"), allow_nan=False).encode()

    async def run(self, stop: asyncio.Event, *, drain_timeout: float = 5.0) -> None:
        loop = asyncio.get_running_loop()
        link = BrokerLink(
            self.config,
            status_topic=self.status_topic,
            birth=self.status_payload("online"),
            will=self.status_payload("offline", reason="connection lost"),
            events=_Events(self._connected, self._disconnected, self._acks_in),
            loop=loop,
        )
        self._link = link
        self._tokens_at = loop.time()
        link.start()
        try:
            while not stop.is_set():
                delay = self._pass(link, loop.time())
                self._wake.clear()
                stop_task = asyncio.ensure_future(stop.wait())
                wake_task = asyncio.ensure_future(self._wake.wait())
                await asyncio.wait(
                    {stop_task, wake_task}, timeout=delay, return_when="FIRST_COMPLETED"
                )
                stop_task.cancel()
                wake_task.cancel()
            # Drain what is already committed, within the graceful timeout (not on a reload).
            deadline = loop.time() + (0.0 if self.skip_drain else drain_timeout)
            while self.status.connected and loop.time() < deadline:
                delay = self._pass(link, loop.time())
                if (
                    not self._in_flight
                    and not self._buffer
                    and self.outbox.depth() == len(self._acked)
                ):
                    break
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), timeout=min(delay, 0.1))
        finally:
            link.stop(goodbye=self.status_payload("offline", reason="stopped"))
            await asyncio.to_thread(link.join, 10.0)
            link.close()
            self._flush_acks()

    def _pass(self, link: BrokerLink, now: float) -> float:
        """Delete what was acknowledged, fill the window; returns how long to wait at most."""
        if self._acked and (len(self._acked) >= ACK_BATCH or now - self._acked_since >= ACK_FLUSH):
            self._flush_acks()
        wait = 0.5
        if self._acked:
            wait = min(wait, max(ACK_FLUSH - (now - self._acked_since), 0.01))
        if not self.status.connected:
            return wait
        if self._refused:
            due = [seq for seq, (at, _) in self._refused.items() if at <= now]
            if due:
                for seq in due:
                    self._refused[seq] = (math.inf, self._refused[seq][1])  # may go again
                self._stale = True
            waiting = [at for at, _ in self._refused.values() if at > now and at != math.inf]
            if waiting:
                wait = min(wait, max(min(waiting) - now, 0.01))
        dropped = self.outbox.dropped()
        if dropped != self._dropped_seen:
            # Drop counts are news for the consumer: the status goes out now, not at the
            # next status_interval.
            self._dropped_seen = dict(dropped)
            self._next_status = 0.0
        if now >= self._next_status:
            self._publish_status(link, now)
        room = self.status.window + AHEAD - len(self._in_flight)
        if self.drain_rate > 0:
            # Token bucket: a burst of one window, then drain_rate messages a second.
            self._tokens = min(
                self._tokens + (now - self._tokens_at) * self.drain_rate, self.status.window
            )
            self._tokens_at = now
            if self._tokens < 1:
                return min(wait, (1 - self._tokens) / self.drain_rate)
            room = min(room, int(self._tokens))
        if room <= 0:
            return wait
        if self.outbox.evictions != self._evictions:
            self._evictions = self.outbox.evictions
            self._stale = True  # what was taken may have been dropped since
        if self._stale or not self._buffer:
            self._refill()
        batch: list[_Outgoing] = []
        while self._buffer and len(batch) < room:
            message = self._buffer.popleft()
            self._in_flight.add(message.seq)
            batch.append(_Outgoing(self._generation, message))
        if batch:
            link.send(batch)
            self.status.published += len(batch)
            self.status.last_publish = time.time()
            self._tokens -= len(batch)
        return wait

    def _refill(self) -> None:
        # Refused records wait for their own retry time; the others go on meanwhile.
        waiting = {seq for seq, (at, _) in self._refused.items() if at != math.inf}
        exclude = self._in_flight | self._acked_set | waiting
        if self._stale or self._cursor is None:
            taken = self.outbox.take(PREFETCH, exclude=exclude)
        else:
            # Continuing from the cursor still skips what is in flight or acknowledged: a
            # retake for a higher priority can move the cursor past records of lower priority
            # that were already handed over.
            taken = self.outbox.take(PREFETCH, after=self._cursor, exclude=exclude)
        self._buffer = deque(taken)
        if taken:
            self._cursor = (taken[-1].priority, taken[-1].seq)
        self._stale = False

    def _flush_acks(self) -> None:
        if not self._acked:
            return
        # One transaction for all PUBACKs of the last quarter second.
        self.outbox.ack(self._acked)
        self.status.acked += len(self._acked)
        self._acked.clear()
        self._acked_set.clear()

    def _publish_status(self, link: BrokerLink, now: float) -> None:
        self._next_status = now + self.config.status_interval
        payload = self.status_payload("online")
        link.birth = payload
        link.send(
            [
                _Outgoing(
                    self._generation,
                    Message(STATUS_SEQ, 0, self.status_topic, payload),
                    retain=True,
                )
            ]
        )

    # Events from the link thread, run on the asyncio loop in the order they happened.

    def _connected(self, generation: int, broker: str, window: int) -> None:
        self._generation = generation
        self._in_flight.clear()
        self._buffer.clear()
        self._stale = True
        self.status.connected = True
        self.status.broker = broker
        self.status.last_error = None
        self.status.connects += 1
        self.status.window = window
        self._next_status = 0.0  # the birth message may be old: a fresh one at once
        self._wake.set()

    def _disconnected(self, generation: int, reason: str | None) -> None:
        if generation == -1:  # a connection attempt failed
            self.status.last_error = reason
            return
        if generation != self._generation:
            return
        self.status.connected = False
        self.status.last_error = reason
        # Whatever was in flight is still in the outbox and goes again on the next connection.
        self._in_flight.clear()
        self._buffer.clear()

    def _acks_in(self, generation: int, acks: list[tuple[int, str | None]]) -> None:
        if generation != self._generation:
            return
        now = asyncio.get_running_loop().time()
        for seq, refusal in acks:
            self._in_flight.discard(seq)
            if refusal == NOT_SENT:
                self._stale = True
                continue
            if refusal is None:
                if not self._acked:
                    self._acked_since = now
                self._acked.append(seq)
                self._acked_set.add(seq)
                self._refused.pop(seq, None)
                continue
            # The broker said no ("Not authorized", "Quota exceeded", "Payload format
            # invalid"): the record stays in the outbox and goes again after its own backoff,
            # while the records behind it go on.
            _, last_wait = self._refused.get(seq, (0.0, 0.0))
            delay = min(max(last_wait * 2, REFUSED_RETRY_FIRST), REFUSED_RETRY_MAX)
            self._refused[seq] = (now + delay, delay)
            self.status.refused[refusal] = self.status.refused.get(refusal, 0) + 1
            self._next_status = 0.0
            if now - self._refused_said.get(refusal, -math.inf) >= REFUSED_LOG_EVERY:
                self._refused_said[refusal] = now
                log.error(
                    "MQTT: the broker refused a record (%s; %d so far); refused records stay "
                    "in the outbox and are sent again with backoff",
                    refusal,
                    self.status.refused[refusal],
                )
        self._wake.set()


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)
