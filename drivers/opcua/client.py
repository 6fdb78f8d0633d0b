"""OPC UA client: subscriptions (or polling), status codes as quality, reconnect by itself.

One task per server. A session lives until `stop` or until asyncua's supervisor reports the
connection lost (server restart, network cut, session timeout). Then the values go BAD, the
client is dropped, and a fresh one connects with capped exponential backoff and creates its
subscriptions again: data resumes without restarting the agent. asyncua's own
auto-reconnect is left off so that there is one reconnect policy, ours, and every loss is
seen as a BAD batch rather than a quiet gap.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from asyncua import ua
from asyncua.client.client import Client
from asyncua.common.node import Node
from asyncua.common.subscription import DataChangeNotif
from asyncua.crypto.security_policies import (
    SecurityPolicyAes128Sha256RsaOaep,
    SecurityPolicyAes256Sha256RsaPss,
    SecurityPolicyBasic256Sha256,
)
from asyncua.ua.status_codes import StatusCodes
from asyncua.ua.uaerrors import UaError, UaStatusCodeError
from cryptography import x509

from massgate.agent.core.samples import Batch, Quality

from ..base import Device, FatalError, Opened
from ..health import DeviceHealth
from .model import OpcUaDevice, UaPoint

log = logging.getLogger(__name__)

_FIRST_DELAY = 0.5  # s before the first reconnect; doubles up to device.reconnect_max
# A value the server keeps but cannot refresh is stale, not simply bad.
_STALE_CODES = {
    StatusCodes.UncertainLastUsableValue,
    StatusCodes.BadNoCommunication,
    StatusCodes.BadWaitingForInitialData,
    StatusCodes.BadOutOfService,
}
_LINK_ERRORS = (OSError, TimeoutError, ConnectionError, UaError)
_SIGN_IN_REFUSED = {
    StatusCodes.BadUserAccessDenied,
    StatusCodes.BadIdentityTokenRejected,
    StatusCodes.BadIdentityTokenInvalid,
}
_POLICY_CLASSES: dict[str, Any] = {
    "Basic256Sha256": SecurityPolicyBasic256Sha256,
    "Aes128_Sha256_RsaOaep": SecurityPolicyAes128Sha256RsaOaep,
    "Aes256_Sha256_RsaPss": SecurityPolicyAes256Sha256RsaPss,
}
# What a server answers when our application certificate is not (yet) in its trust list.
_CERTIFICATE_REFUSED = {
    StatusCodes.BadCertificateUntrusted,
    StatusCodes.BadSecurityChecksFailed,
    StatusCodes.BadCertificateInvalid,
    StatusCodes.BadCertificateUriInvalid,
    StatusCodes.BadCertificateUseNotAllowed,
}


def quality_of(status: ua.StatusCode | None) -> Quality:
    """OPC UA status code → sample quality."""
    if status is None or status.is_good():
        return Quality.GOOD
    if status.value in _STALE_CODES:
        return Quality.STALE
    if status.is_uncertain():
        return Quality.UNCERTAIN
    return Quality.BAD


@dataclass(slots=True)
class UaStats:
    sessions: int = 0
    losses: int = 0
    notifications: int = 0
    reads: int = 0


class OpcUaPoller:
    """Reads one OPC UA server's nodes and emits Batches, reconnecting for as long as it runs."""

    def __init__(self, device: OpcUaDevice, *, emit: Callable[[Batch], None]) -> None:
        self.device = device
        self.emit = emit
        self.stats = UaStats()
        self.health = DeviceHealth(device.name, device.url)
        interval = device.poll_interval if device.mode == "poll" else device.publishing_interval
        self.health.stall_after = 2 * max(interval, device.reconnect_max) + 2 * device.timeout
        self.connected = False
        self._by_node = {_canonical(p.node_id): p for p in device.points}
        self._last: dict[str, tuple[float, Quality, float]] = {}  # tag: SI, quality, mono
        # Points the server would not monitor (BadNodeIdUnknown after a PLC download, say):
        # BAD with the server's reason and tried again every reconnect_max, while the others
        # are read. A point is said once in the journal while it stays refused.
        self._refused: dict[str, tuple[UaPoint, Node, str]] = {}
        self._said_refused: set[str] = set()
        self._subscription: Any = None  # asyncua's Subscription of the current session

    @property
    def polls(self) -> int:
        return self.stats.notifications + self.stats.reads

    @property
    def up(self) -> bool:
        return self.connected and self.health.last_error is None

    @property
    def last_error(self) -> str | None:
        return self.health.last_error

    async def run(self, stop: asyncio.Event) -> None:
        delay = _FIRST_DELAY
        while not stop.is_set():
            try:
                await self._session(stop)
                delay = _FIRST_DELAY
            except FatalError:
                raise
            except _LINK_ERRORS as exc:
                self._lost(exc)
            except Exception as exc:  # asyncua raises more kinds than it documents
                # The cause is said once by the device's health (then summarized); the
                # traceback is detail for -v, not for the journal at every retry.
                log.debug("%s: OPC UA error", self.device.name, exc_info=True)
                self._lost(exc)
            if stop.is_set():
                break
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=delay)
            delay = min(delay * 2, self.device.reconnect_max)

    async def _session(self, stop: asyncio.Event) -> None:
        device = self.device
        client = Client(device.url, timeout=device.timeout, watchdog_intervall=1.0)
        lost = asyncio.Event()
        reason: list[Exception] = []

        async def on_lost(exc: Exception) -> None:
            reason.append(exc)
            lost.set()

        client.connection_lost_callback = on_lost
        await self._configure(client)
        await client.connect()
        try:
            self.stats.sessions += 1
            self.connected = True
            self.health.ok()
            nodes = [self._node(client, p) for p in device.points]
            if device.mode == "subscribe":
                await self._subscribe(client, nodes)
                await self._hold(stop, lost)
            else:
                await self._poll(client, nodes, stop, lost)
            if lost.is_set() and not stop.is_set():
                raise ConnectionError(f"session lost: {reason[0] if reason else 'no reason'}")
        finally:
            self.connected = False
            with contextlib.suppress(Exception):
                await asyncio.wait_for(client.disconnect(), timeout=device.timeout)

    async def _configure(self, client: Client) -> None:
        device = self.device
        security = device.security
        if security.policy != "None":
            if security.certificate is None or security.private_key is None:
                raise FatalError(f"{device.name}: policy {security.policy} needs a certificate")
            client.application_uri = _application_uri(security.certificate, client.application_uri)
            await client.set_security(
                _POLICY_CLASSES[security.policy],
                str(security.certificate),
                str(security.private_key),
                server_certificate=(
                    str(security.server_certificate) if security.server_certificate else None
                ),
                mode=getattr(ua.MessageSecurityMode, security.mode or "SignAndEncrypt"),
            )
        if device.username is not None:
            client.set_user(device.username)
            if device.password_file is not None:
                try:
                    password = device.password_file.read_text(encoding="utf-8").strip()
                except (OSError, UnicodeDecodeError) as exc:
                    raise FatalError(
                        f"{device.name}: cannot read password_file {device.password_file}: {exc}"
                    ) from exc
                client.set_password(password)

    def _node(self, client: Client, point: UaPoint) -> Node:
        try:
            return client.get_node(point.node_id)
        except (ValueError, UaError) as exc:
            raise FatalError(
                f"{self.device.name}: '{point.node_id}' ({point.tag}) is not a node id: {exc}"
            ) from exc

    async def _subscribe(self, client: Client, nodes: list[Node]) -> None:
        device = self.device
        subscription = await client.create_subscription(
            device.publishing_interval * 1000, _Handler(self)
        )
        if device.deadband is not None:
            results = await subscription.deadband_monitor(
                nodes, ua.Double(device.deadband), ua.UInt32(1), device.queue_size
            )
        else:
            results = await subscription.subscribe_data_change(
                nodes,
                queuesize=device.queue_size,
                sampling_interval=ua.Duration(device.sampling_interval * 1000),
            )
        handles = results if isinstance(results, list) else [results]
        self._subscription = subscription
        self._refused = {}
        for point, node, handle in zip(device.points, nodes, handles, strict=True):
            if isinstance(handle, ua.StatusCode) and not handle.is_good():
                self._refuse(point, node, handle.name)

    def _refuse(self, point: UaPoint, node: Node, why: str) -> None:
        self._refused[point.tag] = (point, node, why)
        if point.tag not in self._said_refused:
            self._said_refused.add(point.tag)
            log.error(
                "%s: the server refused to monitor %s (%s): %s; the point is BAD and tried "
                "again every %g s, the other points are read (check the node id)",
                self.device.name,
                point.tag,
                point.node_id,
                why,
                self.device.reconnect_max,
                extra={"device": self.device.name},
            )
        self.emit(
            Batch(
                self.device.name,
                time.monotonic(),
                time.time(),
                {point.tag: math.nan},
                Quality.BAD,
                f"{point.tag}: {why}",
            )
        )

    async def _retry_refused(self) -> None:
        """Ask again for the points the server refused; the ones it now takes are read."""
        pending = list(self._refused.values())
        self._refused = {}
        device = self.device
        for point, node, _ in pending:
            try:
                handle = await self._subscription.subscribe_data_change(
                    node,
                    queuesize=device.queue_size,
                    sampling_interval=ua.Duration(device.sampling_interval * 1000),
                )
            except UaStatusCodeError as exc:
                self._refuse(point, node, ua.StatusCode(exc.code).name)
                continue
            if isinstance(handle, ua.StatusCode) and not handle.is_good():
                self._refuse(point, node, handle.name)
            elif point.tag in self._said_refused:
                self._said_refused.discard(point.tag)
                log.info(
                    "%s: the server monitors %s again",
                    device.name,
                    point.tag,
                    extra={"device": device.name},
                )

    async def _hold(self, stop: asyncio.Event, lost: asyncio.Event) -> None:
        """Repeat unchanged values once per publishing interval while the session lives.

        A server reports by exception: a steady flow sends no notification. The totalizer
        would take that silence for a gap, so the last value is held and re-stamped for as
        long as the subscription is alive (asyncua's supervisor watches the session).
        """
        period = self.device.publishing_interval
        retry_at = time.monotonic() + self.device.reconnect_max
        while not (stop.is_set() or lost.is_set()):
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(_first(stop, lost), timeout=period)
            if stop.is_set() or lost.is_set():
                return
            self.health.beat()
            if self._refused and time.monotonic() >= retry_at:
                retry_at = time.monotonic() + self.device.reconnect_max
                await self._retry_refused()
            now = time.monotonic()
            held = {
                tag: value
                for tag, (value, quality, mono) in self._last.items()
                if now - mono >= period and quality is Quality.GOOD
            }
            if held:
                self.emit(Batch(self.device.name, now, time.time(), held, Quality.GOOD))

    async def _poll(
        self, client: Client, nodes: list[Node], stop: asyncio.Event, lost: asyncio.Event
    ) -> None:
        device = self.device
        next_at = time.monotonic()
        while not (stop.is_set() or lost.is_set()):
            values = await client.read_attributes(nodes)
            self.stats.reads += 1
            self.health.ok()
            mono, wall = time.monotonic(), time.time()
            batch: dict[str, float] = {}
            worst = Quality.GOOD
            errors = []
            for point, value in zip(device.points, values, strict=True):
                quality = quality_of(value.StatusCode)
                worst = max(worst, quality)
                if quality is Quality.BAD:
                    status = value.StatusCode
                    errors.append(f"{point.tag}: {status.name if status else 'bad'}")
                batch[point.tag] = _si(point, value.Value.Value if value.Value else None, quality)
            self.emit(Batch(device.name, mono, wall, batch, worst, "; ".join(errors) or None))
            next_at += device.poll_interval
            now = time.monotonic()
            if next_at < now:
                next_at = now + device.poll_interval
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(_first(stop, lost), timeout=next_at - now)

    def on_value(self, node: Node, value: Any, status: ua.StatusCode | None) -> None:
        point = self._by_node.get(node.nodeid.to_string())
        if point is None:
            return
        self.stats.notifications += 1
        self.health.ok()
        quality = quality_of(status)
        error = status.name if status is not None and quality is not Quality.GOOD else None
        mono = time.monotonic()
        si = _si(point, value, quality)
        self._last[point.tag] = (si, quality, mono)
        self.emit(Batch(self.device.name, mono, time.time(), {point.tag: si}, quality, error))

    def _lost(self, exc: BaseException) -> None:
        self.stats.losses += 1
        self._last.clear()
        message = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        secured = self.device.security.policy != "None"
        refused = isinstance(exc, UaStatusCodeError) and exc.code in _CERTIFICATE_REFUSED
        if secured and (refused or isinstance(exc, AssertionError)):
            # asyncua does not parse the server's error reply to OpenSecureChannel; what it
            # raises there means the server did not accept our certificate.
            message = (
                "the server rejected our certificate: trust it on the server (e.g. move it "
                "from its pki/rejected to pki/trusted folder), then it is used at the next try"
            )
        elif isinstance(exc, UaStatusCodeError) and exc.code in _SIGN_IN_REFUSED:
            # Retried (the server's user list may be fixed), but the cause is said plainly.
            who = f"user '{self.device.username}'" if self.device.username else "anonymous"
            message = (
                f"the server refused the sign-in as {who} ({type(exc).__name__}); "
                "check username and password_file"
            )
        self.health.fail(message)
        nan = float("nan")
        values = {p.tag: nan for p in self.device.points}
        self.emit(
            Batch(self.device.name, time.monotonic(), time.time(), values, Quality.BAD, message)
        )


class _Handler:
    """asyncua's subscription callback, forwarding to the poller."""

    def __init__(self, poller: OpcUaPoller) -> None:
        self.poller = poller

    def datachange_notification(self, node: Node, val: Any, data: DataChangeNotif) -> None:
        self.poller.on_value(node, val, data.monitored_item.Value.StatusCode)

    def status_change_notification(self, status: ua.StatusChangeNotification) -> None:
        # The session supervisor reports the loss itself; this only leaves a trace.
        code = status.Status
        log.info("%s: subscription status %s", self.poller.device.name, getattr(code, "name", code))


def _canonical(node_id: str) -> str:
    """The form asyncua prints a node id in, so that notifications find their point."""
    try:
        return str(ua.NodeId.from_string(node_id).to_string())
    except (ValueError, UaError):
        return node_id  # reported as a FatalError when the session starts


def _si(point: UaPoint, value: Any, quality: Quality) -> float:
    if quality is Quality.BAD or value is None:
        return math.nan
    try:
        result = float(value) * point.factor + point.offset
    except (TypeError, ValueError, OverflowError):
        return math.nan
    return result if math.isfinite(result) else math.nan  # ±inf is no reading


async def _first(*events: asyncio.Event) -> None:
    """Wait until any of the events is set."""
    waiters = [asyncio.ensure_future(e.wait()) for e in events]
    try:
        await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()
        await asyncio.gather(*waiters, return_exceptions=True)


def _application_uri(certificate: Path, default: str) -> str:
    """The client's application URI must match its certificate's: take it from there."""
    data = certificate.read_bytes()  # a small file, once per session
    try:
        cert = x509.load_der_x509_certificate(data)
    except ValueError:
        cert = x509.load_pem_x509_certificate(data)
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        return default
    uris = san.value.get_values_for_type(x509.UniformResourceIdentifier)
    return uris[0] if uris else default


def open_pollers(devices: Sequence[Device], *, emit: Callable[[Batch], None]) -> Opened:
    """The registry's entry (drivers/__init__.py): one session per device, each closed by its
    own poller."""
    return Opened([OpcUaPoller(d, emit=emit) for d in devices if isinstance(d, OpcUaDevice)])
