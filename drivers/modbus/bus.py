"""One physical medium: an RS-485 line or one TCP endpoint, its client, and its lock.

A Modbus line carries one request at a time: the master asks, one slave answers, the line is
quiet for 3.5 characters, and only then may the next request go out. Every device on a line
reads through the same Bus, so its lock is the line. Devices on different buses (different
TCP endpoints, different serial ports) poll concurrently.

Reads only: the bus offers function codes 1 to 4 and nothing else. massgate never writes to
a device.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import serial
from pymodbus.client import AsyncModbusSerialClient, AsyncModbusTcpClient
from pymodbus.exceptions import ModbusException
from pymodbus.framer import FramerType

from ..base import RetryableError
from .model import BIT_TABLES, SerialLink, TcpLink

log = logging.getLogger(__name__)

EXCEPTION_NAMES = {
    1: "illegal function",
    2: "illegal data address",
    3: "illegal data value",
    4: "server device failure",
    5: "acknowledge",
    6: "server device busy",
    8: "memory parity error",
    10: "gateway path unavailable",
    11: "gateway target failed to respond",
}
# pymodbus closes a TCP connection after this many unanswered requests in a row; one silent
# unit behind a shared converter must not take the connection away from the others.
_MAX_NO_RESPONSES = 1_000_000


# The read function code of each table; massgate uses no other.
FUNCTION_CODES = {"coil": 1, "discrete": 2, "holding": 3, "input": 4}


class LinkDown(RetryableError):
    """The port cannot be opened or the TCP connection cannot be made."""


class NoReply(RetryableError):
    """Nothing came back within the timeout: the slave is off, unwired or at another id."""


class Garbled(RetryableError):
    """Bytes came back but no valid frame: CRC or framing error (noise, wrong line settings)."""


class ExceptionReply(RetryableError):
    """The slave answered with a Modbus exception code."""

    def __init__(self, code: int, span: str) -> None:
        self.code = code
        self.span = span
        self.what = EXCEPTION_NAMES.get(code, f"exception code {code}")
        super().__init__(f"device replied '{self.what}' for {span}")


@dataclass(slots=True)
class BusStats:
    requests: int = 0
    replies: int = 0
    timeouts: int = 0
    garbled: int = 0
    exceptions: int = 0
    connects: int = 0


Client = AsyncModbusTcpClient | AsyncModbusSerialClient


class Bus:
    """The client and the lock of one line. Use `async with bus.session() as s: s.read(...)`."""

    def __init__(self, link: TcpLink | SerialLink) -> None:
        self.link = link
        self.stats = BusStats()
        self._lock = asyncio.Lock()
        self._client: Client | None = None
        self._received = 0  # bytes that arrived during the current request

    @contextlib.asynccontextmanager
    async def session(self) -> AsyncIterator[Bus]:
        """Hold the line for one device's requests, so its values are read together."""
        async with self._lock:
            yield self

    async def read(
        self, unit_id: int, table: str, start: int, count: int, *, reply_timeout: float
    ) -> npt.NDArray[np.uint16]:
        """Read `count` registers (or bits) from a slave; call inside `session()`.

        Raises LinkDown, NoReply, Garbled or ExceptionReply (all RetryableError).
        """
        if not self._lock.locked():
            raise RuntimeError("Bus.read outside a session")  # a bug, not a device fault
        client = await self._connected(reply_timeout)
        # One client serves every slave on the line, each with its own timeout.
        client.ctx.comm_params.timeout_connect = reply_timeout
        span = f"{table} {start}..{start + count - 1}"
        self.stats.requests += 1
        self._received = 0
        try:
            if table == "holding":
                reply = await client.read_holding_registers(start, count=count, device_id=unit_id)
            elif table == "input":
                reply = await client.read_input_registers(start, count=count, device_id=unit_id)
            elif table == "coil":
                reply = await client.read_coils(start, count=count, device_id=unit_id)
            else:
                reply = await client.read_discrete_inputs(start, count=count, device_id=unit_id)
        except ModbusException as exc:
            if not client.connected:
                await self.close()
                if not self._received:
                    raise LinkDown(f"connection to {self.link} lost during {span}") from exc
            if self._received:
                self.stats.garbled += 1
                raise Garbled(
                    f"garbled reply to {span} ({self._received} bytes, no valid frame: "
                    f"{self._garbled_hint()})"
                ) from exc
            self.stats.timeouts += 1
            raise NoReply(f"no reply to {span} within {reply_timeout:g} s") from exc
        finally:
            if isinstance(self.link, SerialLink):
                # The line must be quiet for 3.5 characters before the next frame.
                await asyncio.sleep(self.link.silence)
        if reply.isError():
            self.stats.exceptions += 1
            raise ExceptionReply(int(getattr(reply, "exception_code", 0)), span)
        if (problem := self._mismatch(reply, table, count)) is not None:
            self.stats.garbled += 1
            raise Garbled(f"reply to {span} does not match the request: {problem}")
        self.stats.replies += 1
        values = reply.bits if table in BIT_TABLES else reply.registers
        return np.asarray(values[:count], dtype=np.uint16)

    def _mismatch(self, reply: Any, table: str, count: int) -> str | None:
        """Why a reply is not the answer to the request, or None.

        A reply is good only if its function code, byte count and register (or bit) count
        are exactly what was asked for, and the frame is exactly that long: pymodbus decodes
        as many registers as a reply's byte count claims, so an oversized reply (126
        registers for a 12-register read) would otherwise pass as good data.
        """
        if reply.function_code != FUNCTION_CODES[table]:
            return f"function code {reply.function_code}, not {FUNCTION_CODES[table]}"
        if table in BIT_TABLES:
            data_bytes = (count + 7) // 8
            got = len(reply.bits)
            if got != 8 * data_bytes:
                return f"{got} bits for {count} asked (at most {8 * data_bytes})"
        else:
            data_bytes = 2 * count
            got = len(reply.registers)
            if got != count:
                return f"{got} registers for {count} asked"
        # function code + byte count + data, in the framing's envelope.
        rtu = isinstance(self.link, SerialLink) or self.link.framing == "rtu"
        frame = 2 + data_bytes + (3 if rtu else 7)  # RTU: address + CRC; TCP: MBAP header
        if self._received != frame:
            return f"{self._received} bytes for a {frame}-byte reply"
        return None

    def _garbled_hint(self) -> str:
        if isinstance(self.link, SerialLink):
            return "CRC or framing error; check wiring, termination and line settings"
        if self.link.framing == "rtu":
            return "CRC or framing error; check the serial side of the gateway and its settings"
        return (
            "not a Modbus TCP answer; does something else listen on this port, or does the "
            "device expect RTU framing over TCP (framing: rtu)?"
        )

    def _trace(self, sending: bool, data: bytes) -> bytes:
        if not sending:
            self._received += len(data)
        return data

    async def _connected(self, connect_timeout: float) -> Client:
        if self._client is not None and self._client.connected:
            return self._client
        await self.close()
        link = self.link
        client: Client
        # retries=0, reconnect_delay=0: the retry and reconnect policy is the poller's.
        if isinstance(link, SerialLink):
            client = AsyncModbusSerialClient(
                link.port,
                framer=FramerType.RTU,
                baudrate=link.baudrate,
                bytesize=link.bytesize,
                parity=link.parity,
                stopbits=link.stopbits,
                timeout=connect_timeout,
                retries=0,
                reconnect_delay=0,
                trace_packet=self._trace,
            )
        else:
            client = AsyncModbusTcpClient(
                link.host,
                port=link.port,
                framer=FramerType.RTU if link.framing == "rtu" else FramerType.SOCKET,
                timeout=connect_timeout,
                retries=0,
                reconnect_delay=0,
                trace_packet=self._trace,
            )
        client.set_max_no_responses(_MAX_NO_RESPONSES)
        self.stats.connects += 1
        try:
            connected = await client.connect()
        except (OSError, ModbusException) as exc:
            client.close()
            raise LinkDown(f"cannot open {link}: {exc}") from exc
        if not connected:
            client.close()
            raise LinkDown(_why_not_connected(link))
        self._client = client
        return client

    async def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None


def _why_not_connected(link: TcpLink | SerialLink) -> str:
    """pymodbus only says 'not connected'; on site the reason is what matters."""
    if isinstance(link, TcpLink):
        return f"cannot connect to {link} (refused, no route or timed out)"
    return f"cannot open serial port {link.port}: {serial_port_problem(link.port)}"


def serial_port_problem(port: str) -> str:
    """Open the port once with pyserial and translate why it fails into advice."""
    try:
        handle = serial.Serial(port, exclusive=True)
    except serial.SerialException as exc:
        code = getattr(exc, "errno", None)
        text = str(exc)
        if code == errno.ENOENT or "No such file" in text:
            return "no such device (is the adapter plugged in? see ls /dev/serial/by-id/)"
        if code == errno.EACCES or "Permission denied" in text:
            return "permission denied (add the service user to the 'dialout' group)"
        if code == errno.EBUSY or "exclusively lock" in text or "busy" in text.lower():
            return "port busy: another program has it open"
        return text
    handle.close()
    return "it opens with pyserial but the Modbus client could not use it"
