"""`massgate ingest run`: from the broker into PostgreSQL, acknowledged only once stored.

paho runs its own loop thread (here, unlike the gateway, nothing is lost by its reconnect
logic: the session is the broker's), with the bulk receive path of receive.py: a backlog is
read in large pieces and handed over a read at a time. It connects with MQTT 5, clean start
off and a session expiry, so the broker keeps what arrives while the ingest is away; it
acknowledges manually (paho's `manual_ack`), and asks for at most `receive maximum`
unacknowledged messages.

This thread takes what arrived in batches, writes each batch in one transaction, and only
then sends the PUBACKs. A crash between the two re-delivers the batch, which is then counted
as duplicates, never lost. A PUBACK is sent only on the connection the message came on: after
a reconnect the broker sends again what was not acknowledged, under packet ids that may
since mean other messages.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
from dataclasses import dataclass
from typing import Any, NamedTuple

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

from ..core import preflight
from ..publish.link import describe_failure
from . import receive
from .config import IngestConfig
from .store import Incoming, Parsed, Store, Written, read

log = logging.getLogger(__name__)

WAIT_FIRST = 0.5  # s to wait for the first message of a batch (the stop is seen as often)
WAIT_MORE = 0.05  # s to wait for more once one is in
DB_RETRY_MIN = 0.5  # s before a failed database write is tried again; doubles
DB_RETRY_MAX = 30.0


class _Arrived(NamedTuple):  # a tuple: made for every message, in paho's thread
    generation: int
    mid: int
    qos: int
    item: Parsed  # read as it arrived, while this thread writes the batch before


@dataclass
class Counts(Written):
    """What the ingest has done since it started: the batches' sums, and its own."""

    batches: int = 0
    acked: int = 0
    connects: int = 0
    db_errors: int = 0
    last_error: str | None = None

    def add(self, w: Written) -> None:
        self.batches += 1
        self.merge(w)


class Ingest:
    """Subscribe, store, acknowledge; `run(stop)` until `stop` is set."""

    def __init__(self, config: IngestConfig) -> None:
        self.config = config
        self.counts = Counts()
        self.connected = threading.Event()
        self.subscribed = threading.Event()  # the broker took our filters (SUBACK)
        # What arrived, a list per read of the socket (one message, from paho's own path).
        self._arrived: queue.SimpleQueue[list[_Arrived]] = queue.SimpleQueue()
        self._generation = 0
        self._client: Any = None
        self._stopping = False

    # paho's thread

    def _on_connect(self, client: Any, u: Any, flags: Any, rc: Any, props: Any) -> None:
        if rc.is_failure:
            self.counts.last_error = f"the broker refused the connection: {rc.getName()}"
            log.error("ingest: %s", self.counts.last_error)
            return
        self._generation += 1
        self.counts.connects += 1
        resumed = bool(getattr(flags, "session_present", False))
        log.info("ingest: connected (%s session)", "resumed the" if resumed else "started a new")
        client.subscribe([(t, SubscribeOptions(qos=1)) for t in self.config.topics()])
        self.connected.set()

    def _on_subscribe(self, client: Any, u: Any, mid: int, codes: Any, props: Any) -> None:
        refused = [c.getName() for c in codes if c.is_failure]
        if refused:
            # An ACL that denies our filters: said, and the records wait at the broker.
            self.counts.last_error = f"the broker refused the subscription: {', '.join(refused)}"
            log.error("ingest: %s", self.counts.last_error)
            return
        log.info("ingest: subscribed to %s", ", ".join(self.config.topics()))
        self.subscribed.set()

    def _on_disconnect(self, client: Any, u: Any, flags: Any, rc: Any, props: Any) -> None:
        self.connected.clear()
        self.subscribed.clear()
        self._generation += 1  # what arrived on that connection is not acknowledged now
        if self._stopping:
            log.info("ingest: disconnected; the broker keeps the session")
        else:
            log.warning("ingest: disconnected from the broker (%s); reconnecting", rc)

    def _on_connect_fail(self, client: Any, u: Any) -> None:
        log.error("ingest: could not connect to the broker; retrying with backoff")

    def _deliver(self, messages: list[tuple[str, int, bytes]]) -> None:
        """The QoS 1 PUBLISHes of one read, from the bulk receive path (receive.py)."""
        g, new = self._generation, tuple.__new__  # the tuples made without their Python __new__
        prefix = self.config.mqtt.topic_prefix
        self._arrived.put(
            [
                new(_Arrived, (g, mid, 1, read(new(Incoming, (t, p)), prefix)))
                for t, mid, p in messages
            ]
        )

    def _on_message(self, client: Any, u: Any, message: Any) -> None:
        self._arrived.put(
            [
                _Arrived(
                    self._generation,
                    message.mid,
                    message.qos,
                    read(
                        Incoming(message.topic, bytes(message.payload)),
                        self.config.mqtt.topic_prefix,
                    ),
                )
            ]
        )

    # ours

    def publish_site(self, site: str, subtopic: str, body: dict[str, Any]) -> None:
        """Publish a site result (ingest.site) at QoS 1 on <prefix>/<site>/site/<subtopic>.
        paho queues it while the broker is away; the database has it in any case."""
        client = self._client
        if client is None:
            return
        topic = f"{self.config.mqtt.topic_prefix}/{site}/site/{subtopic}"
        client.publish(topic, json.dumps(body, allow_nan=False).encode(), qos=1)

    def _connect(self) -> Any:
        config = self.config.mqtt
        client = receive.Client(
            deliver=self._deliver,
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=config.client_id,
            protocol=mqtt.MQTTv5,
            manual_ack=True,
        )
        if any(b.tls for b in config.brokers):
            client.tls_set_context(
                preflight.tls_context(
                    ca_file=config.ca_file,
                    client_cert=config.client_cert,
                    client_key=config.client_key,
                )
            )
        if config.username is not None:
            client.username_pw_set(
                config.username,
                preflight.read_secret(
                    file=config.password_file, env=config.password_env, where="mqtt"
                ),
            )
        client.reconnect_delay_set(1, 15)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_connect_fail = self._on_connect_fail
        client.on_message = self._on_message
        client.on_subscribe = self._on_subscribe
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        props.SessionExpiryInterval = int(self.config.session_expiry)
        # Never more unacknowledged than two batches: the broker holds the rest.
        props.ReceiveMaximum = min(2 * self.config.batch, 65535)
        endpoint = config.brokers[0]
        where: dict[str, Any] = {
            "host": endpoint.host,
            "port": endpoint.port,
            "keepalive": round(config.keepalive),
            "clean_start": False,
            "properties": props,
        }
        try:
            client.connect(**where)
        except OSError as exc:
            # paho's own loop retries; the first attempt is said here.
            log.error("ingest: %s; retrying", describe_failure(endpoint, exc))
            client.connect_async(**where)
        client.loop_start()
        return client

    def _open_store(self, stop: threading.Event) -> Store | None:
        wait = DB_RETRY_MIN
        while not stop.is_set():
            try:
                store = Store(
                    self.config.database.url,
                    password=self.config.database.password(),
                    prefix=self.config.mqtt.topic_prefix,
                )
                log.info("ingest: database %s ready", self.config.database.shown)
                return store
            except Exception as exc:  # psycopg's errors, a missing password: said, retried
                self._db_failed(f"cannot open {self.config.database.shown}: {exc}")
            stop.wait(wait)
            wait = min(wait * 2, DB_RETRY_MAX)
        return None

    def _db_failed(self, why: str) -> None:
        self.counts.db_errors += 1
        if why != self.counts.last_error:
            log.error("ingest: %s; retrying", why.strip())
        self.counts.last_error = why

    def _take(self, stop: threading.Event) -> list[_Arrived]:
        """What has arrived, up to about a batch (a read's worth over it at most)."""
        batch: list[_Arrived] = []
        try:
            batch += self._arrived.get(timeout=WAIT_FIRST)
        except queue.Empty:
            return batch
        deadline = time.monotonic() + WAIT_MORE
        while len(batch) < self.config.batch:
            try:
                left = deadline - time.monotonic()
                batch += self._arrived.get(timeout=left) if left > 0 else self._arrived.get_nowait()
            except queue.Empty:
                break
        return batch

    def run(self, stop: threading.Event) -> None:
        """Until `stop` is set: store what arrives, then acknowledge it."""
        store = self._open_store(stop)
        if store is None:
            return
        try:
            self._client = client = self._connect()
        except BaseException:
            store.close()
            raise
        try:
            while not stop.is_set():
                batch = self._take(stop)
                if batch:
                    store = self._store(store, batch, stop)
                    if store is None:
                        return
        finally:
            self._stopping = True
            client.disconnect()
            client.loop_stop()
            if store is not None:
                store.close()
            c = self.counts
            log.info(
                "ingest: stopped; %d records stored, %d duplicates, %d statuses, %d rejected; "
                "%d acknowledged",
                c.stored,
                c.duplicates,
                c.statuses,
                c.rejected,
                c.acked,
            )

    def _store(self, store: Store, batch: list[_Arrived], stop: threading.Event) -> Store | None:
        """Write the batch (retrying through database outages), then acknowledge it."""
        wait = DB_RETRY_MIN
        while True:
            try:
                written = store.write_read([a.item for a in batch])
                break
            except Exception as exc:  # the database went away, or refused: nothing is acked
                self._db_failed(f"writing {len(batch)} records failed: {exc}")
                store.close()
                if stop.wait(wait):
                    return None
                wait = min(wait * 2, DB_RETRY_MAX)
                reopened = self._open_store(stop)
                if reopened is None:
                    return None
                store = reopened
        self.counts.add(written)
        if written.rejected:
            log.warning(
                "ingest: %d messages were not records (%s); kept in massgate.rejects",
                written.rejected,
                ", ".join(sorted(written.reasons)),
            )
        generation = self._generation
        mids = [a.mid for a in batch if a.generation == generation and a.qos == 1]
        self._client.ack_all(mids)  # one write for the batch
        for arrived in batch:
            if arrived.generation == generation and arrived.qos > 1:
                self._client.ack(arrived.mid, arrived.qos)
        self.counts.acked += len(mids) + sum(
            a.generation == generation and a.qos > 1 for a in batch
        )
        return store
