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
and acknowledged records are handed to the outbox, which deletes them with its next commit
(without a disk sync of their own: an acknowledgement lost to a power cut costs a
duplicate, never a record).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from ..config import MqttConfig
from ..core.records import command_topics, topic, utc
from ..core.requests import once_durable
from ..store.outbox import Message, Outbox
from ..store.writer import Writer
from .commands import Commands
from .link import NOT_SENT, STATUS_SEQ, BrokerLink, _Events, _Outgoing
from .status import LinkStatus, status_payload

log = logging.getLogger(__name__)
T = TypeVar("T")

REFUSED_RETRY_FIRST = 5.0  # s before a record the broker refused is sent again; doubles
REFUSED_RETRY_MAX = 60.0  # a fixed ACL is noticed within a minute
REFUSED_LOG_EVERY = 60.0  # s: one log line per refusal reason at most this often
PREFETCH = 1000  # messages taken from the outbox at once
AHEAD = 500  # messages handed to the paho thread beyond the window, so it never waits for us


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
    # The outbox's writer thread (store/writer.py), which the agent's publisher hands every
    # call on the outbox to; None runs them here (benches and tests without a pipeline).
    writer: Writer | None = None
    _loop: asyncio.AbstractEventLoop | None = None
    # Commands from the broker (mqtt.commands), None when the file names none; its handler
    # is the gateway's, set by the pipeline.
    commands: Commands | None = None
    _answering: set[asyncio.Future[None]] = field(default_factory=set)  # answers to be sent

    def __post_init__(self) -> None:
        # Records become sendable when a sync has made them durable, not when put.
        self.outbox.on_durable = self._durable
        if self.config.commands:
            self.commands = Commands(self.config.commands)

    def _durable(self, priority: int) -> None:
        # Called where the outbox commits: the writer thread, so the wake hops to the loop.
        if self._loop is not None and self.writer is not None:
            self._loop.call_soon_threadsafe(self.wake, priority)
        else:
            self.wake(priority)

    async def _call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        if self.writer is None:
            return fn(*args, **kwargs)
        return await self.writer.call(fn, *args, **kwargs)

    def _submit(self, fn: Callable[..., object], *args: Any) -> None:
        if self.writer is None:
            fn(*args)
        else:
            self.writer.submit(fn, *args)

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

    @property
    def command_topics(self) -> tuple[str, str]:
        """Where commands are taken from, and where they are answered."""
        return command_topics(self.config.topic_prefix, self.site, self.gateway)

    def wake(self, priority: int = 0) -> None:
        """New records of up to `priority` were committed."""
        # Records that rank after the last one taken are found by continuing from it; only
        # a higher priority has to jump the queue.
        if self._cursor is None or priority > self._cursor[0]:
            self._stale = True
        self._wake.set()

    def status_payload(self, state: str, **extra: Any) -> bytes:
        if state == "online" and self.commands is not None:
            # A sender waiting for answers can see why none come (a refused subscription).
            extra = {"commands": self.commands.summary(self.command_topics[0]), **extra}
        return status_payload(
            state,
            site=self.site,
            gateway=self.gateway,
            outbox=self.outbox,
            link=self.status,
            health=self.health,
            **extra,
        )

    async def run(self, stop: asyncio.Event, *, drain_timeout: float = 5.0) -> None:
        loop = asyncio.get_running_loop()
        self._loop = loop
        link = BrokerLink(
            self.config,
            status_topic=self.status_topic,
            birth=self.status_payload("online"),
            will=self.status_payload("offline", reason="connection lost"),
            events=_Events(
                self._connected,
                self._disconnected,
                self._acks_in,
                on_subscribed=self._subscribed,
                on_command=self._command,
            ),
            loop=loop,
            command_topic=self.command_topics[0] if self.commands is not None else None,
        )
        self._link = link
        self._tokens_at = loop.time()
        link.start()
        try:
            while not stop.is_set():
                delay = await self._pass(link, loop.time())
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
                delay = await self._pass(link, loop.time())
                if not self._in_flight and not self._buffer and self.outbox.depth() == 0:
                    break
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), timeout=min(delay, 0.1))
        finally:
            for task in self._answering:
                task.cancel()  # the records are taken; only the answers are not sent
            await asyncio.gather(*self._answering, return_exceptions=True)
            link.stop(goodbye=self.status_payload("offline", reason="stopped"))
            await asyncio.to_thread(link.join, 10.0)
            link.close()

    async def _pass(self, link: BrokerLink, now: float) -> float:
        """Let the outbox delete what was acknowledged, fill the window; returns how long to
        wait at most."""
        self._submit(self.outbox.flush)  # deletions due go (on the writer thread)
        wait = 0.25 if self.outbox.acked_waiting() else 0.5
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
            await self._refill()
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

    async def _refill(self) -> None:
        # Refused records wait for their own retry time; the others go on meanwhile.
        waiting = {seq for seq, (at, _) in self._refused.items() if at != math.inf}
        exclude = self._in_flight | waiting
        # Consumed before the take: whatever makes the buffer stale while the writer thread
        # reads (a reconnect, a record not sent, a record of higher priority) is seen after.
        fresh, self._stale = self._stale or self._cursor is None, False
        if fresh:
            taken = await self._call(self.outbox.take, PREFETCH, exclude=exclude)
        else:
            # Continuing from the cursor still skips what is in flight or acknowledged: a
            # retake for a higher priority can move the cursor past records of lower priority
            # that were already handed over.
            taken = await self._call(
                self.outbox.take, PREFETCH, after=self._cursor, exclude=exclude
            )
        if self._stale:
            return  # taken again at the next pass
        self._buffer = deque(taken)
        if taken:
            self._cursor = (taken[-1].priority, taken[-1].seq)

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
        if self.commands is not None:
            self.commands.subscribed = None  # asked again on every connection
        self._wake.set()

    def _subscribed(self, generation: int, refusal: str | None) -> None:
        commands = self.commands
        if commands is None or generation != self._generation:
            return
        request = self.command_topics[0]
        if refusal is None:
            if commands.subscribed is not True and commands.broker_refusal is not None:
                log.warning("MQTT: the broker now takes our subscription to %s", request)
            elif commands.taken + commands.refused == 0 and commands.subscribed is None:
                log.info("MQTT: commands (%s) taken from %s", ", ".join(commands.allowed), request)
        elif refusal != commands.broker_refusal:
            # Said once per reason, not at every reconnect; the records go on regardless.
            log.error(
                "MQTT: the broker refused our subscription to %s (%s): no command is taken "
                "from the broker; its ACL must let this client read that topic",
                request,
                refusal,
            )
        commands.subscribed = refusal is None
        commands.broker_refusal = refusal
        self._next_status = 0.0  # whoever waits for answers sees at once whether any come

    def _command(
        self, generation: int, payload: bytes, retained: bool, correlation: bytes | None
    ) -> None:
        """A request from the command topic: carried out or refused, and answered."""
        link, commands = self._link, self.commands
        if commands is None or link is None:
            return
        assert self._loop is not None
        answer = commands.answer(payload, retained, self._loop.time())
        # Taken now, answered once on the disk (asked before anything else can run).
        committed = commands.committed if answer.get("ok") is True else None
        waiter = committed() if committed is not None else None
        task = asyncio.ensure_future(self._answer(link, generation, answer, waiter, correlation))
        self._answering.add(task)
        task.add_done_callback(self._answering.discard)

    async def _answer(
        self,
        link: BrokerLink,
        generation: int,
        answer: dict[str, Any],
        committed: Awaitable[str | None] | None,
        correlation: bytes | None,
    ) -> None:
        answer = await once_durable(answer, committed)
        answer["time"] = utc(time.time())
        body = json.dumps(answer, separators=(",", ":"), allow_nan=False, default=str).encode()
        # Not a record: an answer goes on the connection its request came by, or not at all
        # (what the command did is in the records, which the outbox keeps).
        message = Message(STATUS_SEQ, 0, self.command_topics[1], body)
        link.send([_Outgoing(generation, message, correlation=correlation)])

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
        acked = []
        for seq, refusal in acks:
            self._in_flight.discard(seq)
            if refusal == NOT_SENT:
                self._stale = True
                continue
            if refusal is None:
                acked.append(seq)
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
        if acked:
            self._submit(self.outbox.ack, acked)
            self.status.acked += len(acked)
        self._wake.set()
