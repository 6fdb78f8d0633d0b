"""The plant's instruments as Modbus slaves (pymodbus 4.0-style SimDevice servers).

Each meter is served through its device profile: on every read the registers are filled
with what the meter says at that instant, encoded as the profile says. The same profile
files drive the agent's decoding, so a wrong address shows up as a wrong test, not as two
maps that agree with themselves.

Meters are served as Modbus TCP slaves (one server per meter) or as several slaves on one
serial line (one RTU server, as on an RS-485 bus). Link faults act here: a silent slave, a
late reply, an exception reply, a frame with a broken CRC.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable
from dataclasses import dataclass

from pymodbus.constants import ExcCodes
from pymodbus.framer import FramerType
from pymodbus.server import ModbusSerialServer, ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

from massgate.agent.core import units

from .. import profiles
from ..modbus import codec
from ..modbus.model import BIT_TABLES, FUNCTION_CODES
from .plant import Plant

log = logging.getLogger(__name__)

WRITE_FUNCTIONS = {5, 6, 15, 16, 22, 23}
_TABLE_OF_FUNCTION = {code: table for table, code in FUNCTION_CODES.items()}
_TABLE_ORDER = ("coil", "discrete", "holding", "input")  # SimDevice's tuple of blocks


def _break_crc(frame: bytes) -> bytes:
    return frame[:-1] + bytes([frame[-1] ^ 0xA5])


@dataclass(frozen=True, slots=True)
class Meter:
    """One instrument of the plant: its tag prefix, profile and what it reads (SI)."""

    name: str
    profile: str
    read: Callable[[], dict[str, float]]
    description: str


def meters_of(plant: Plant) -> list[Meter]:
    return [
        Meter(m.name, m.profile, functools.partial(plant.read, m.name), m.description)
        for m in plant.spec.meters
    ]


@dataclass(frozen=True, slots=True)
class Served:
    meter: Meter
    host: str  # a TCP host, or a serial port's path
    port: int  # 0 on a serial line
    unit_id: int


class MeterDevice:
    """One meter as a pymodbus SimDevice: registers filled from the plant at every read."""

    def __init__(
        self,
        meter: Meter,
        plant: Plant,
        *,
        unit_id: int = 1,
        profile: profiles.Profile | None = None,
    ) -> None:
        self.meter = meter
        self.plant = plant
        self.unit_id = unit_id
        self.profile = profile or profiles.load(meter.profile)
        self._units = {p.name: units.lookup(p.unit) for p in self.profile.points}
        blocks: list[list[SimData]] = []
        for table in _TABLE_ORDER:
            points = [p for p in self.profile.points if p.table == table]
            if table in BIT_TABLES:
                size = max((p.address // 16 + 1 for p in points), default=1)
                blocks.append([SimData(0, count=size, values=0, datatype=DataType.BITS)])
            else:
                size = max((p.address + codec.width(p.type) for p in points), default=1)
                blocks.append([SimData(0, count=size, values=0, datatype=DataType.REGISTERS)])
        self.device = SimDevice(
            id=unit_id,
            simdata=(blocks[0], blocks[1], blocks[2], blocks[3]),
            action=self._on_request,
        )

    async def _on_request(
        self,
        function_code: int,
        start_address: int,
        address: int,
        count: int,
        registers: list[int],
        set_values: list[int] | list[bool] | None,
    ) -> ExcCodes | None:
        if function_code in WRITE_FUNCTIONS or set_values is not None:
            return ExcCodes.ILLEGAL_FUNCTION  # a meter's measurements are read-only
        faults = self.plant.faults
        t = self.plant.now()
        if (slow := faults.find("slow", self.meter.name, t)) is not None:
            await asyncio.sleep(slow.magnitude)
        if (exc := faults.find("exception", self.meter.name, t)) is not None:
            return ExcCodes(int(exc.magnitude or ExcCodes.DEVICE_BUSY))
        table = _TABLE_OF_FUNCTION.get(function_code)
        values = faults.apply(self.meter.name, t, self.meter.read())
        for point in self.profile.points:
            if point.table != table:
                continue
            unit = self._units[point.name]
            raw = ((values[point.name] - unit.offset) / unit.factor - point.offset) / point.scale
            if table in BIT_TABLES:
                self._set_bit(
                    registers, start_address, point.address // 16, point.address % 16, raw
                )
            elif point.bit is not None:
                self._set_bit(registers, start_address, point.address, point.bit, raw)
            else:
                words = codec.encode(raw, point.type, point.order)
                offset = point.address - start_address
                registers[offset : offset + len(words)] = words
        return None

    @staticmethod
    def _set_bit(registers: list[int], start: int, address: int, bit: int, value: float) -> None:
        mask = 1 << bit
        word = registers[address - start]
        registers[address - start] = (word | mask) if value >= 0.5 else (word & ~mask)

    def silent(self) -> bool:
        return self.plant.faults.find("dropout", self.meter.name, self.plant.now()) is not None


class MeterSlave:
    """A Modbus TCP server for one meter."""

    def __init__(
        self,
        meter: Meter,
        plant: Plant,
        *,
        host: str,
        port: int,
        unit_id: int = 1,
        profile: profiles.Profile | None = None,
    ) -> None:
        self.meter = meter
        self.host = host
        self.unit_id = unit_id
        self.device = MeterDevice(meter, plant, unit_id=unit_id, profile=profile)
        self.server = ModbusTcpServer(
            self.device.device,
            address=(host, port),
            trace_packet=self._trace,
        )

    def _trace(self, sending: bool, data: bytes) -> bytes:
        # A silent slave: its reply is swallowed, the master hears nothing.
        if sending and self.device.silent():
            return b""
        return data

    async def start(self) -> int:
        await self.server.serve_forever(background=True)
        transport = self.server.transport
        sockets = getattr(transport, "sockets", None)
        if not sockets:
            raise RuntimeError(f"{self.meter.name}: the Modbus server did not start listening")
        port: int = sockets[0].getsockname()[1]
        return port

    async def stop(self) -> None:
        await self.server.shutdown()  # type: ignore[no-untyped-call]


class SerialSlaves:
    """Several meters as RTU slaves on one serial line (the far end of a pty pair in tests)."""

    def __init__(
        self,
        port: str,
        meters: dict[int, Meter],
        plant: Plant,
        *,
        baudrate: int = 19200,
        parity: str = "N",
        stopbits: int = 1,
    ) -> None:
        self.port = port
        self.devices = {uid: MeterDevice(m, plant, unit_id=uid) for uid, m in meters.items()}
        self.garbled = 0
        self.server = ModbusSerialServer(
            [d.device for d in self.devices.values()],
            framer=FramerType.RTU,
            port=port,
            baudrate=baudrate,
            parity=parity,
            stopbits=stopbits,
            trace_packet=self._trace,
        )

    def _trace(self, sending: bool, data: bytes) -> bytes:
        if not data:
            return data
        device = self.devices.get(data[0])
        if device is None:
            # No slave at that address: on RS-485 nobody answers (pymodbus would reply with
            # an exception on the absent unit's behalf).
            return data if sending else _break_crc(data)
        if not sending:
            # A silent slave did not hear the request: to the server it is line noise.
            return _break_crc(data) if device.silent() else data
        if device.plant.faults.garble(device.meter.name, device.plant.now()):
            self.garbled += 1
            return _break_crc(data)  # noise on the wire
        return data

    async def start(self) -> None:
        await self.server.serve_forever(background=True)

    async def stop(self) -> None:
        await self.server.shutdown()  # type: ignore[no-untyped-call]


class SimulatedSite:
    """The plant and all its meters served on one host; port 0 picks free ports."""

    def __init__(self, plant: Plant, *, host: str = "127.0.0.1", base_port: int = 0) -> None:
        self.plant = plant
        self.host = host
        self.base_port = base_port
        self.slaves: list[MeterSlave] = []
        self.served: list[Served] = []
        self._ticker: asyncio.Task[None] | None = None

    async def start(self) -> list[Served]:
        try:
            for i, meter in enumerate(meters_of(self.plant)):
                port = self.base_port + i if self.base_port else 0
                slave = MeterSlave(meter, self.plant, host=self.host, port=port)
                self.slaves.append(slave)
                actual = await slave.start()
                self.served.append(Served(meter, self.host, actual, slave.unit_id))
        except BaseException:
            await self.stop()
            raise
        self._ticker = asyncio.create_task(self._tick(), name="plant-ticker")
        return self.served

    async def _tick(self) -> None:
        # The truth advances on reads too; this keeps its history fine-grained between reads.
        while True:
            self.plant.advance()
            await asyncio.sleep(0.05)

    async def stop(self) -> None:
        if self._ticker is not None:
            self._ticker.cancel()
            await asyncio.gather(self._ticker, return_exceptions=True)
            self._ticker = None
        for slave in self.slaves:
            await slave.stop()
        self.slaves.clear()
