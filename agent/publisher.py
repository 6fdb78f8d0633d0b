"""MQTT publisher: TLS, QoS 1, a window in flight, records deleted only on PUBACK.

paho-mqtt runs on one thread of ours (not paho's own loop thread, whose reconnect logic
swallows the reason a connection failed): every paho call happens on that thread, which
connects with capped, jittered backoff across the configured brokers and says in one log
line why a connection failed. The asyncio side owns the outbox and the window.

The outbox is the only copy that matters. A fresh paho client is made for every connection,
so paho never re-sends on its own; after a disconnect the window is cleared and the records
are taken again from the outbox. A PUBACK lost with the link means a duplicate, never a gap
(at-least-once); consumers drop duplicates by (epoch, seq).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import queue
import random
import socket
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.reasoncodes import ReasonCode

from .config import BrokerEndpoint, MqttConfig
from .outbox import Message, Outbox
from .records import topic, utc

log = logging.getLogger(__name__)

BACKOFF_MIN = 0.5
BACKOFF_MAX = 60.0


def tls_context(config: MqttConfig) -> ssl.SSLContext:
    """Server certificate and host name verified; TLS 1.2 at least."""
    ca = str(config.ca_file) if config.ca_file else None
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=ca)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if config.client_cert is not None and config.client_key is not None:
        context.load_cert_chain(str(config.client_cert), str(config.client_key))
    return context


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


@dataclass
class _Outgoing:
    generation: int
    message: Message


@dataclass
class _Events:
    """What the link thread reports back, delivered on the asyncio loop."""

    on_connected: Callable[[int, str], None]
    on_disconnected: Callable[[int, str | None], None]
    on_ack: Callable[[int, int, bool], None]


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
        self.outgoing: queue.SimpleQueue[_Outgoing | None] = queue.SimpleQueue()
        self.stopping = threading.Event()
        self.generation = 0
        self.context = tls_context(config) if any(b.tls for b in config.brokers) else None
        self._password = self._read_password()
        self._goodbye: bytes | None = None

    def _read_password(self) -> str | None:
        if self.config.password_file is None:
            return None
        return self.config.password_file.read_text(encoding="utf-8").strip()

    def _post(self, fn: Callable[..., None], *args: Any) -> None:
        with contextlib.suppress(RuntimeError):  # the loop closed as this thread finished
            self.loop.call_soon_threadsafe(fn, *args)

    def stop(self, goodbye: bytes | None = None) -> None:
        self._goodbye = goodbye
        self.stopping.set()
        self.outgoing.put(None)

    def run(self) -> None:
        backoff = BACKOFF_MIN
        brokers = list(self.config.brokers)
        index = 0
        last_reason: str | None = None
        while not self.stopping.is_set():
            endpoint = brokers[index % len(brokers)]
            index += 1
            self.generation += 1
            reason = self._session(endpoint, self.generation)
            if self.stopping.is_set():
                break
            if reason is None:  # it was connected: start the backoff afresh
                backoff = BACKOFF_MIN
                last_reason = None
                continue
            self._post(self.events.on_disconnected, -1, reason)
            if reason != last_reason:
                log.error("MQTT: %s; retrying with backoff", reason)
            else:
                log.debug("MQTT: %s", reason)
            last_reason = reason
            # Capped exponential backoff with full jitter: a site's gateways that lost the
            # broker together do not all come back in the same second.
            self.stopping.wait(random.uniform(backoff / 2, backoff))
            backoff = min(backoff * 2, BACKOFF_MAX)

    def _client(self, generation: int) -> mqtt.Client:
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
            client.username_pw_set(self.config.username, self._password)
        client.max_inflight_messages_set(self.config.in_flight)
        client.max_queued_messages_set(0)
        return client

    def _session(self, endpoint: BrokerEndpoint, generation: int) -> str | None:
        """One connection, start to end. Returns why it failed, or None after a good session."""
        client = self._client(generation)
        if endpoint.tls:
            assert self.context is not None
            client.tls_set_context(self.context)
        mids: dict[int, int] = {}
        state: dict[str, Any] = {"connack": None, "gone": None}

        def on_connect(c: mqtt.Client, u: Any, f: Any, rc: ReasonCode, p: Any) -> None:
            state["connack"] = rc

        def on_disconnect(c: mqtt.Client, u: Any, f: Any, rc: ReasonCode, p: Any) -> None:
            state["gone"] = rc

        def on_publish(c: mqtt.Client, u: Any, mid: int, rc: ReasonCode, p: Any) -> None:
            seq = mids.pop(mid, None)
            if seq is not None and seq >= 0:
                self._post(self.events.on_ack, generation, seq, not rc.is_failure)

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
            if client.loop(0.05) != mqtt.MQTT_ERR_SUCCESS and state["connack"] is None:
                return f"{endpoint}: connection closed before CONNACK"
        connack = state["connack"]
        if connack is None or connack.is_failure:
            client.disconnect()
            why = connack.getName() if connack is not None else state["gone"]
            return f"{endpoint}: the broker refused the connection: {why}"

        log.info("MQTT: connected to %s", endpoint)
        client.publish(self.status_topic, self.birth, qos=1, retain=True)
        self._post(self.events.on_connected, generation, str(endpoint))
        reason: str | None = None
        while state["gone"] is None:
            if self.stopping.is_set():
                self._say_goodbye(client, mids)
                break
            self._send_waiting(client, generation, mids)
            rc = client.loop(0.02)
            if rc != mqtt.MQTT_ERR_SUCCESS:
                reason = f"{endpoint}: connection lost ({mqtt.error_string(rc)})"
                break
        if state["gone"] is not None and reason is None and not self.stopping.is_set():
            reason = f"{endpoint}: disconnected by the broker ({state['gone']})"
        self._post(self.events.on_disconnected, generation, reason)
        if reason is not None:
            log.warning("MQTT: %s", reason)
        return None  # it was connected: reconnect soon, not after a long backoff

    def _send_waiting(self, client: mqtt.Client, generation: int, mids: dict[int, int]) -> None:
        while True:
            try:
                item = self.outgoing.get_nowait()
            except queue.Empty:
                return
            if item is None or item.generation != generation:
                continue  # handed over for a connection that is gone; it is still in the outbox
            info = client.publish(item.message.topic, item.message.payload, qos=1)
            if info.rc != mqtt.MQTT_ERR_SUCCESS:
                # Not sent; drop from the window so it is taken again from the outbox.
                self._post(self.events.on_ack, generation, item.message.seq, False)
                continue
            mids[info.mid] = item.message.seq

    def _say_goodbye(self, client: mqtt.Client, mids: dict[int, int]) -> None:
        """Wait briefly for PUBACKs still owed, publish 'offline' retained, disconnect."""
        deadline = time.monotonic() + 2.0
        if self._goodbye is not None:
            info = client.publish(self.status_topic, self._goodbye, qos=1, retain=True)
            mids[info.mid] = -1
        while mids and time.monotonic() < deadline:
            if client.loop(0.02) != mqtt.MQTT_ERR_SUCCESS:
                break
        client.disconnect()
        client.loop(0.1)


@dataclass
class Publisher:
    """Moves records from the outbox to the broker; deletes them when PUBACKed."""

    outbox: Outbox
    config: MqttConfig
    site: str
    gateway: str
    status: LinkStatus = field(default_factory=LinkStatus)
    _wake: asyncio.Event = field(default_factory=asyncio.Event)
    _in_flight: set[int] = field(default_factory=set)
    _acks: list[int] = field(default_factory=list)
    _generation: int = 0

    @property
    def status_topic(self) -> str:
        return topic(self.config.topic_prefix, self.site, self.gateway, "status")

    def wake(self) -> None:
        """New records were committed."""
        self._wake.set()

    def _status_payload(self, state: str, **extra: Any) -> bytes:
        body = {"schema": 1, "site": self.site, "gateway": self.gateway, "status": state}
        body.update(extra)
        body["time"] = utc(time.time())
        return json.dumps(body, separators=(",", ":")).encode()

    async def run(self, stop: asyncio.Event, *, drain_timeout: float = 5.0) -> None:
        loop = asyncio.get_running_loop()
        link = BrokerLink(
            self.config,
            status_topic=self.status_topic,
            birth=self._status_payload("online"),
            will=self._status_payload("offline", reason="connection lost"),
            events=_Events(self._connected, self._disconnected, self._acked),
            loop=loop,
        )
        self._link = link
        link.start()
        try:
            while not stop.is_set():
                self._fill_window(link)
                self._wake.clear()
                stop_task = asyncio.ensure_future(stop.wait())
                wake_task = asyncio.ensure_future(self._wake.wait())
                await asyncio.wait(
                    {stop_task, wake_task}, timeout=0.5, return_when="FIRST_COMPLETED"
                )
                stop_task.cancel()
                wake_task.cancel()
            # Drain what is already committed, within the graceful timeout.
            deadline = loop.time() + drain_timeout
            while self.status.connected and loop.time() < deadline:
                self._fill_window(link)
                if not self._in_flight:
                    break
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), timeout=0.1)
        finally:
            link.stop(goodbye=self._status_payload("offline", reason="stopped"))
            await asyncio.to_thread(link.join, 10.0)

    def _fill_window(self, link: BrokerLink) -> None:
        if self._acks:
            # One transaction for all PUBACKs that came in since the last pass.
            self.outbox.ack(self._acks)
            self.status.acked += len(self._acks)
            self._acks.clear()
        if not self.status.connected:
            return
        room = self.config.in_flight - len(self._in_flight)
        if room <= 0:
            return
        for message in self.outbox.take(room, exclude=self._in_flight):
            self._in_flight.add(message.seq)
            link.outgoing.put(_Outgoing(self._generation, message))
            self.status.published += 1
            self.status.last_publish = time.time()

    # Events from the link thread, run on the asyncio loop in the order they happened.

    def _connected(self, generation: int, broker: str) -> None:
        self._generation = generation
        self._in_flight.clear()
        self.status.connected = True
        self.status.broker = broker
        self.status.last_error = None
        self.status.connects += 1
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

    def _acked(self, generation: int, seq: int, ok: bool) -> None:
        if generation != self._generation:
            return
        self._in_flight.discard(seq)
        if ok:
            self._acks.append(seq)
        else:
            log.error("MQTT: the broker refused record %d; it stays in the outbox", seq)
        self._wake.set()
