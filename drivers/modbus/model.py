"""What a Modbus device is, once its configuration has been validated (no I/O here)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from . import codec

REGISTER_TABLES = ("holding", "input")
BIT_TABLES = ("coil", "discrete")
TABLES = REGISTER_TABLES + BIT_TABLES
FUNCTION_CODES = {"coil": 1, "discrete": 2, "holding": 3, "input": 4}
MAX_READ_REGISTERS = 125  # the protocol's limit for function codes 3 and 4
MAX_READ_BITS = 2000  # the protocol's limit for function codes 1 and 2
PARITIES = {"none": "N", "even": "E", "odd": "O"}


@dataclass(frozen=True, slots=True, kw_only=True)
class Point:
    """One value on a device. SI value = raw * factor + offset.

    In a coil or discrete table `address` counts bits and the type is "bool". In a register
    table `bit` picks one bit (0 = least significant) of a 16-bit register: a status flag.
    """

    tag: str
    table: str
    address: int
    type: str
    order: str
    factor: float
    offset: float
    unit: str
    bit: int | None = None
    alarm: str | None = None  # bad | uncertain: the meter's own alarm flag (see profiles)

    @property
    def width(self) -> int:
        """Registers (or bits, in a bit table) this point occupies."""
        return 1 if self.type == "bool" else codec.width(self.type)

    @property
    def end(self) -> int:
        """One past the last register of this point."""
        return self.address + self.width

    @property
    def rollover(self) -> float:
        """Where a running total read from this point wraps: an integer register at 2^bits
        counts (in SI units); a float register is taken not to wrap."""
        if self.type.startswith(("int", "uint")):
            return 2.0 ** (16 * codec.width(self.type)) * abs(self.factor)
        return math.inf


@dataclass(frozen=True, slots=True, kw_only=True)
class TcpLink:
    """A Modbus TCP endpoint. `framing="rtu"`: RTU frames over TCP (serial-to-Ethernet box)."""

    host: str
    port: int
    framing: str = "tcp"

    @property
    def key(self) -> str:
        # Devices behind one endpoint share its connection and are asked one at a time: behind
        # a gateway or a converter there is usually one serial line.
        return f"tcp://{self.host}:{self.port}"

    def __str__(self) -> str:
        suffix = " (RTU framing)" if self.framing == "rtu" else ""
        return f"{self.host}:{self.port}{suffix}"


@dataclass(frozen=True, slots=True, kw_only=True)
class SerialLink:
    """An RS-485 line: one port, one set of line settings, several slaves."""

    name: str
    port: str
    baudrate: int = 19200
    parity: str = "N"
    stopbits: int = 1
    bytesize: int = 8
    inter_frame_delay: float | None = None  # s; None: 3.5 characters at the baud rate

    @property
    def key(self) -> str:
        return f"serial://{self.port}"

    @property
    def silence(self) -> float:
        """Quiet time between frames: 3.5 characters, at least 1.75 ms above 19200 baud."""
        if self.inter_frame_delay is not None:
            return self.inter_frame_delay
        bits = 1 + self.bytesize + (0 if self.parity == "N" else 1) + self.stopbits
        return 0.00175 if self.baudrate > 19200 else 3.5 * bits / self.baudrate

    def __str__(self) -> str:
        return f"{self.port} ({self.baudrate} {self.bytesize}{self.parity}{self.stopbits})"


@dataclass(frozen=True, slots=True, kw_only=True)
class ModbusDevice:
    name: str
    link: TcpLink | SerialLink
    unit_id: int
    poll_interval: float
    timeout: float
    points: tuple[Point, ...]
    retries: int = 1
    max_request_registers: int = MAX_READ_REGISTERS
    gap_fill: int = 8
    # A device that failed `degrade_after` polls in a row is asked only every
    # `degraded_interval` seconds (once, without retries) so that it cannot hold up its line.
    degrade_after: int = 3
    degraded_interval: float = 10.0
    # Identical raw replies for this long mark the values STALE (a frozen transmitter or a
    # converter that answers from its cache). None: never.
    stale_after: float | None = None

    @property
    def driver(self) -> str:
        return "modbus"

    @property
    def endpoint(self) -> str:
        return f"{self.link}/unit {self.unit_id}"
