"""What a Modbus device is, once its configuration has been validated (no I/O here)."""

from __future__ import annotations

from dataclasses import dataclass

from . import codec

TABLES = ("holding", "input")
MAX_READ_REGISTERS = 125  # the protocol's limit for function codes 3 and 4


@dataclass(frozen=True, slots=True, kw_only=True)
class Point:
    """One value on a device. SI value = raw * factor + offset."""

    tag: str
    table: str
    address: int
    type: str
    order: str
    factor: float
    offset: float
    unit: str

    @property
    def width(self) -> int:
        return codec.width(self.type)

    @property
    def end(self) -> int:
        """One past the last register of this point."""
        return self.address + self.width


@dataclass(frozen=True, slots=True, kw_only=True)
class TcpDevice:
    name: str
    host: str
    port: int
    unit_id: int
    poll_interval: float
    timeout: float
    points: tuple[Point, ...]
    max_request_registers: int = MAX_READ_REGISTERS
    gap_fill: int = 8

    @property
    def endpoint(self) -> str:
        return f"{self.host}:{self.port}/unit {self.unit_id}"
