"""The plant's instruments as Modbus TCP slaves (pymodbus 4.0-style SimDevice servers).

Each meter is served through its device profile: on every read the registers are filled
with what the meter says at that instant, encoded as the profile says. The same profile
files drive the agent's decoding, so a wrong address shows up as a wrong test, not as two
maps that agree with themselves.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass

from pymodbus.constants import ExcCodes
from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

from massgate.agent import units

from .. import profiles
from ..modbus import codec
from .plant import Plant

log = logging.getLogger(__name__)

WRITE_FUNCTIONS = {5, 6, 15, 16, 22, 23}


@dataclass(frozen=True, slots=True)
class Meter:
    """One instrument of the plant: its tag prefix, profile and what it reads (SI)."""

    name: str
    profile: str
    read: Callable[[], dict[str, float]]
    description: str


def meters_of(plant: Plant) -> list[Meter]:
    return [
        Meter("ft101", "coriolis", plant.coriolis, "feed line Coriolis meter FT-101"),
        Meter("lt100", "level_radar", plant.level, "tank T-100 radar level LT-100"),
        Meter("tt102", "temperature_tx", plant.temperature, "product line temperature TT-102"),
        Meter("ft102", "magmeter", plant.magmeter, "product line magnetic meter FT-102"),
    ]


@dataclass(frozen=True, slots=True)
class Served:
    meter: Meter
    host: str
    port: int
    unit_id: int


class MeterSlave:
    """A Modbus TCP server for one meter."""

    def __init__(self, meter: Meter, *, host: str, port: int, unit_id: int = 1) -> None:
        self.meter = meter
        self.profile = profiles.load(meter.profile)
        self.host = host
        self.requested_port = port
        self.unit_id = unit_id
        self.requests = 0
        size = max(p.address + codec.width(p.type) for p in self.profile.points)
        self._units = {p.name: units.lookup(p.unit) for p in self.profile.points}
        device = SimDevice(
            id=unit_id,
            simdata=[SimData(address=0, count=size, values=0, datatype=DataType.REGISTERS)],
            action=self._on_request,
        )
        self.server = ModbusTcpServer(device, address=(host, port))

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
        self.requests += 1
        values = self.meter.read()
        for point in self.profile.points:
            unit = self._units[point.name]
            raw = (values[point.name] - unit.offset) / unit.factor
            words = codec.encode(raw, point.type, point.order)
            offset = point.address - start_address
            registers[offset : offset + len(words)] = words
        return None

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
                slave = MeterSlave(meter, host=self.host, port=port)
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
