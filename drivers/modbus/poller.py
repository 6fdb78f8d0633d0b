"""Poll one Modbus device on its bus: schedule, retries, degradation, quality.

Every poll ends as one Batch: GOOD values, or BAD NaNs with the reason, so the totalizer
knows when data stopped instead of guessing. A slave that stops answering is *degraded*:
asked once every `degraded_interval` without retries, so that its timeouts cannot eat the
line time of the slaves beside it. Its first good reply brings it back to its own rate.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from massgate.agent.core.samples import Batch, Quality

from ..base import Device, FatalError, Opened, RetryableError, meter_alarms
from ..health import DeviceHealth
from . import codec
from .bus import Bus, ExceptionReply, Garbled, NoReply
from .model import ModbusDevice
from .planner import Request, plan

log = logging.getLogger(__name__)

_CONFIG_EXCEPTIONS = {1, 2}  # illegal function, illegal data address: retrying cannot help
_BACKOFF_FIRST = 0.05  # s before the first retry; doubles per retry


@dataclass(slots=True)
class DeviceStats:
    polls: int = 0
    good: int = 0
    failed: int = 0
    retries: int = 0
    timeouts: int = 0
    garbled: int = 0
    exceptions: int = 0


class DevicePoller:
    """Polls one device at its interval and emits one Batch per poll."""

    def __init__(self, device: ModbusDevice, bus: Bus, *, emit: Callable[[Batch], None]) -> None:
        self.device = device
        self.bus = bus
        self.emit = emit
        self.requests = plan(
            device.points, max_registers=device.max_request_registers, gap_fill=device.gap_fill
        )
        self.alarm_flags = [(p.tag, p.alarm) for p in device.points if p.alarm is not None]
        self.stats = DeviceStats()
        self.health = DeviceHealth(device.name, device.endpoint)
        slowest = max(device.poll_interval, device.degraded_interval)
        self.health.stall_after = 2 * slowest + device.timeout * (1 + device.retries) + 1.0
        self.degraded = False
        self._failures_in_a_row = 0
        self._digest = b""
        self._unchanged_since = 0.0

    @property
    def polls(self) -> int:
        return self.stats.polls

    @property
    def up(self) -> bool:
        return self.health.up

    @property
    def interval(self) -> float:
        if self.degraded:
            return max(self.device.degraded_interval, self.device.poll_interval)
        return self.device.poll_interval

    async def run(self, stop: asyncio.Event) -> None:
        """Poll until `stop` is set. FatalError propagates; everything else is a BAD batch."""
        next_at = time.monotonic()
        while not stop.is_set():
            self.emit(await self.poll())
            interval = self.interval
            # Drift-free schedule; a late poll skips the slots it missed instead of bursting.
            next_at += interval
            now = time.monotonic()
            if next_at < now:
                next_at = now + interval - ((now - next_at) % interval)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=next_at - now)

    async def poll(self) -> Batch:
        """One poll with its retries (none while degraded)."""
        self.stats.polls += 1
        attempts = 1 if self.degraded else 1 + self.device.retries
        error: RetryableError | None = None
        for attempt in range(attempts):
            if attempt:
                self.stats.retries += 1
                await asyncio.sleep(min(_BACKOFF_FIRST * 2 ** (attempt - 1), self.interval / 2))
            try:
                batch = await self.poll_once()
            except ExceptionReply as exc:
                self.stats.exceptions += 1
                # At start-up an illegal function or address is the register map's mistake.
                # From a device that has answered this read before (a firmware update, a mode
                # change) it is a device fault: degraded and retried, never given up on.
                if exc.code in _CONFIG_EXCEPTIONS and self.stats.good == 0:
                    raise self._config_error(exc) from exc
                error = exc
            except RetryableError as exc:
                if isinstance(exc, NoReply):
                    self.stats.timeouts += 1
                elif isinstance(exc, Garbled):
                    self.stats.garbled += 1
                error = exc
            else:
                self._recovered()
                self.stats.good += 1
                return batch
        assert error is not None
        self._failed(error)
        nan = float("nan")
        values = {p.tag: nan for p in self.device.points}
        return Batch(
            self.device.name, time.monotonic(), time.time(), values, Quality.BAD, str(error)
        )

    async def poll_once(self) -> Batch:
        """Read every request of the device while holding its line; no retry."""
        blocks: list[np.ndarray] = []
        async with self.bus.session():
            for request in self.requests:
                blocks.append(
                    await self.bus.read(
                        self.device.unit_id,
                        request.table,
                        request.start,
                        request.count,
                        reply_timeout=self.device.timeout,
                    )
                )
        mono, wall = time.monotonic(), time.time()
        values: dict[str, float] = {}
        for request, block in zip(self.requests, blocks, strict=True):
            self._decode(request, block, values)
        quality = Quality.GOOD
        error = None
        # A float register can hold ±inf or NaN (a meter's "no value", a failed sensor): such
        # a point is a bad sample, NaN, and the rest of the reply stands.
        unusable = [tag for tag, v in values.items() if not math.isfinite(v)]
        if unusable:
            quality = Quality.UNCERTAIN
            error = ", ".join(f"{tag} read {values[tag]}" for tag in unusable)
            for tag in unusable:
                values[tag] = math.nan
        quality, error, alarms = meter_alarms(self.alarm_flags, values, quality, error)
        if self._is_stale(blocks, mono):
            quality = Quality.STALE
        return Batch(self.device.name, mono, wall, values, quality, error, alarms)

    @staticmethod
    def _decode(request: Request, block: np.ndarray, values: dict[str, float]) -> None:
        for group in request.groups:
            if group.bits is not None:
                raw = codec.decode_bits(block, group.offsets, group.bits)
            else:
                raw = codec.decode(block, group.offsets, group.type, group.order)
            si = raw * group.factors + group.offsets_si
            for point, value in zip(group.points, si.tolist(), strict=True):
                values[point.tag] = value

    def _is_stale(self, blocks: list[np.ndarray], mono: float) -> bool:
        if self.device.stale_after is None:
            return False
        digest = hashlib.blake2b(b"".join(b.tobytes() for b in blocks), digest_size=16).digest()
        if digest != self._digest:
            self._digest = digest
            self._unchanged_since = mono
            return False
        return mono - self._unchanged_since >= self.device.stale_after

    def _recovered(self) -> None:
        self.health.ok()
        if self.degraded:
            log.info(
                "%s: back to a poll every %g s",
                self.device.name,
                self.device.poll_interval,
                extra={"device": self.device.name},
            )
        self.degraded = False
        self._failures_in_a_row = 0

    def _failed(self, error: RetryableError) -> None:
        self.stats.failed += 1
        self._failures_in_a_row += 1
        self.health.fail(str(error))
        if not self.degraded and self._failures_in_a_row >= self.device.degrade_after:
            self.degraded = True
            log.warning(
                "%s: %d polls failed in a row; degraded to one try every %g s so that the "
                "other devices on %s keep their rate",
                self.device.name,
                self._failures_in_a_row,
                self.interval,
                self.device.link,
                extra={"device": self.device.name},
            )

    def _config_error(self, exc: ExceptionReply) -> FatalError:
        names = ", ".join(
            p.tag for r in self.requests if r.span == exc.span for g in r.groups for p in g.points
        )
        return FatalError(
            f"{self.device.name} ({self.device.endpoint}): device replied '{exc.what}' for "
            f"{exc.span} ({names}); check the register map in the configuration"
        )


def pollers_for(
    devices: tuple[ModbusDevice, ...], *, emit: Callable[[Batch], None]
) -> list[DevicePoller]:
    """One poller per device; devices on the same line or endpoint share one Bus."""
    buses: dict[str, Bus] = {}
    return [DevicePoller(d, buses.setdefault(d.link.key, Bus(d.link)), emit=emit) for d in devices]


async def close_buses(pollers: list[DevicePoller]) -> None:
    for bus in {id(p.bus): p.bus for p in pollers}.values():
        await bus.close()


def open_pollers(devices: Sequence[Device], *, emit: Callable[[Batch], None]) -> Opened:
    """The registry's entry (drivers/__init__.py): pollers, and the buses closed after them."""
    pollers = pollers_for(tuple(d for d in devices if isinstance(d, ModbusDevice)), emit=emit)
    return Opened(list(pollers), functools.partial(close_buses, pollers))
