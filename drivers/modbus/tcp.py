"""Modbus TCP poller: one task per device, reads only, every failure folded into two errors."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Callable

import numpy as np
from pymodbus.client import AsyncModbusTcpClient
from pymodbus.exceptions import ModbusException
from pymodbus.pdu import ExceptionResponse

from massgate.agent.samples import Batch, Quality

from ..errors import FatalError, RetryableError
from . import codec
from .model import TcpDevice
from .planner import Request, plan

log = logging.getLogger(__name__)

# Modbus exception codes (the protocol's, not pymodbus's names)
_ILLEGAL_FUNCTION = 1
_ILLEGAL_ADDRESS = 2
_BUSY = 6
_EXCEPTION_NAMES = {
    1: "illegal function",
    2: "illegal data address",
    3: "illegal data value",
    4: "server device failure",
    5: "acknowledge",
    6: "server device busy",
    10: "gateway path unavailable",
    11: "gateway target failed to respond",
}


class TcpPoller:
    """Polls one Modbus TCP device at its interval and emits one Batch per poll."""

    def __init__(self, device: TcpDevice, *, emit: Callable[[Batch], None]) -> None:
        self.device = device
        self.emit = emit
        self.requests = plan(
            device.points, max_registers=device.max_request_registers, gap_fill=device.gap_fill
        )
        self.polls = 0
        self.failures = 0
        self.last_error: str | None = None
        self._client: AsyncModbusTcpClient | None = None

    @property
    def up(self) -> bool:
        return self.polls > 0 and self.last_error is None

    async def run(self, stop: asyncio.Event) -> None:
        """Poll until `stop` is set. Fatal errors propagate; retryable ones become BAD batches."""
        interval = self.device.poll_interval
        next_at = time.monotonic()
        try:
            while not stop.is_set():
                try:
                    batch = await self.poll_once()
                    if self.last_error is not None:
                        log.info("%s: reading again after: %s", self.device.name, self.last_error)
                    self.last_error = None
                except RetryableError as exc:
                    self.failures += 1
                    if str(exc) != self.last_error:
                        log.warning("%s (%s): %s", self.device.name, self.device.endpoint, exc)
                    self.last_error = str(exc)
                    batch = self._bad_batch(str(exc))
                    await self._close()
                self.polls += 1
                self.emit(batch)
                # Drift-free schedule; a late poll skips the slots it missed instead of bursting.
                next_at += interval
                now = time.monotonic()
                if next_at < now:
                    next_at = now + interval - ((now - next_at) % interval)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=next_at - now)
        finally:
            await self._close()

    async def poll_once(self) -> Batch:
        client = await self._connected()
        values: dict[str, float] = {}
        for request in self.requests:
            block = await self._read(client, request)
            for group in request.groups:
                raw = codec.decode(block, group.offsets, group.type, group.order)
                si = raw * group.factors + group.offsets_si
                for point, value in zip(group.points, si.tolist(), strict=True):
                    values[point.tag] = value
        quality = Quality.GOOD
        if any(math.isnan(v) or math.isinf(v) for v in values.values()):
            quality = Quality.UNCERTAIN
        return Batch(self.device.name, time.monotonic(), time.time(), values, quality)

    async def _connected(self) -> AsyncModbusTcpClient:
        if self._client is not None and self._client.connected:
            return self._client
        await self._close()
        # retries=0 and reconnect_delay=0: retry and reconnect policy belongs to us, not pymodbus.
        client = AsyncModbusTcpClient(
            self.device.host,
            port=self.device.port,
            timeout=self.device.timeout,
            retries=0,
            reconnect_delay=0,
        )
        try:
            connected = await client.connect()
        except (OSError, ModbusException) as exc:
            client.close()
            raise RetryableError(f"cannot connect: {exc}") from exc
        if not connected:
            client.close()
            raise RetryableError(
                f"cannot connect to {self.device.host}:{self.device.port} (refused or no route)"
            )
        self._client = client
        return client

    async def _read(self, client: AsyncModbusTcpClient, request: Request) -> np.ndarray:
        read = (
            client.read_holding_registers
            if request.table == "holding"
            else client.read_input_registers
        )
        try:
            reply = await read(request.start, count=request.count, device_id=self.device.unit_id)
        except ModbusException as exc:
            raise RetryableError(
                f"no valid reply to {request.table} {request.start}+{request.count}: {exc}"
            ) from exc
        if isinstance(reply, ExceptionResponse) or reply.isError():
            code = getattr(reply, "exception_code", 0)
            what = _EXCEPTION_NAMES.get(code, f"exception code {code}")
            span = f"{request.table} registers {request.start}..{request.start + request.count - 1}"
            if code in (_ILLEGAL_ADDRESS, _ILLEGAL_FUNCTION):
                names = ", ".join(p.tag for g in request.groups for p in g.points)
                raise FatalError(
                    f"{self.device.name}: device replied '{what}' for {span} ({names}); "
                    "check the register map in the configuration"
                )
            raise RetryableError(f"device replied '{what}' for {span}")
        registers = reply.registers
        if len(registers) < request.count:
            raise RetryableError(
                f"short reply: {len(registers)} of {request.count} registers from {request.start}"
            )
        return np.asarray(registers[: request.count], dtype=np.uint16)

    def _bad_batch(self, error: str) -> Batch:
        nan = float("nan")
        values = {p.tag: nan for p in self.device.points}
        return Batch(self.device.name, time.monotonic(), time.time(), values, Quality.BAD, error)

    async def _close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None
