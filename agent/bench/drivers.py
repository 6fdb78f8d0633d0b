"""`massgate bench`: measured figures, not timed tests.

`bench drivers` polls a simulated Modbus TCP slave, served from a child process so that the
agent's CPU time is the agent's alone, back to back for a fixed time: once with the request
planner and once with one request per point, and prints both side by side.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import multiprocessing.synchronize
import random
import time
from collections.abc import Iterator
from dataclasses import dataclass

from massgate.drivers import profiles
from massgate.drivers.modbus import codec
from massgate.drivers.modbus.model import ModbusDevice, Point, TcpLink
from massgate.drivers.modbus.planner import plan
from massgate.drivers.modbus.poller import close_buses, pollers_for
from massgate.drivers.sim.plant import Plant
from massgate.drivers.sim.server import Meter, MeterSlave

from .localbroker import free_port

# A flow computer's worth of values: float32 with the small gaps real register maps have.
_GAPS = (0, 0, 1, 0, 2, 0, 0, 1)


def bench_profile(points: int) -> profiles.Profile:
    listed = []
    address = 0
    for i in range(points):
        listed.append(
            profiles.ProfilePoint(
                name=f"v{i:03d}",
                table="holding",
                address=address,
                type="float32",
                order="ABCD",
                unit="1",
            )
        )
        address += codec.width("float32") + _GAPS[i % len(_GAPS)]
    return profiles.Profile("bench", "benchmark register map", tuple(listed))


def _serve(ports: list[int], points: int, ready: multiprocessing.synchronize.Event) -> None:
    profile = bench_profile(points)
    # v000 is a stream's mass flow in kg/s (bench e2e); the rest are process values. They
    # move at every read, as a plant's do: constant values would flatter every figure that
    # depends on what the records hold (the bytes written to storage, compressed).
    base = {p.name: 1.0 + i * 0.5 for i, p in enumerate(profile.points)}
    noise = random.Random(1)

    def values() -> dict[str, float]:
        return {name: value * (1.0 + noise.gauss(0.0, 0.01)) for name, value in base.items()}

    async def main() -> None:
        plant = Plant()
        for i, port in enumerate(ports):
            meter = Meter(f"d{i:03d}", "bench", values, "benchmark slave")
            await MeterSlave(meter, plant, host="127.0.0.1", port=port, profile=profile).start()
        ready.set()
        await asyncio.Event().wait()  # until the parent terminates this process

    asyncio.run(main())


@contextlib.contextmanager
def slaves(ports: list[int], points: int, *, within: float) -> Iterator[int | None]:
    """Simulated Modbus TCP slaves of `points` float32 values each, served from a child
    process (so that the agent's CPU time is the agent's alone) until the block ends.
    Yields the child's pid."""
    context = multiprocessing.get_context("spawn")
    ready = context.Event()
    server = context.Process(target=_serve, args=(ports, points, ready), daemon=True)
    server.start()
    try:
        if not ready.wait(within):
            raise RuntimeError("the simulated slaves did not start")
        yield server.pid
    finally:
        server.terminate()
        server.join(10)
        with contextlib.suppress(Exception):
            server.close()


@dataclass(frozen=True, slots=True)
class Result:
    mode: str
    requests_per_cycle: int
    cycles: int
    seconds: float
    cpu: float
    points: int

    @property
    def points_per_second(self) -> float:
        return self.cycles * self.points / self.seconds

    @property
    def cpu_per_point_us(self) -> float:
        return self.cpu / (self.cycles * self.points) * 1e6


async def _measure(device: ModbusDevice, mode: str, seconds: float, one_per_point: bool) -> Result:
    (poller,) = pollers_for((device,), emit=lambda b: None)
    if one_per_point:
        poller.requests = [plan((p,), max_registers=125, gap_fill=0)[0] for p in device.points]
    await poller.poll()  # connect and warm up outside the measurement
    cycles = 0
    cpu0, t0 = time.process_time(), time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        batch = await poller.poll()
        if batch.error:
            raise RuntimeError(f"benchmark poll failed: {batch.error}")
        cycles += 1
    elapsed, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    await close_buses([poller])
    return Result(mode, len(poller.requests), cycles, elapsed, cpu, len(device.points))


def bench_drivers(points: int, seconds: float) -> list[Result]:
    port = free_port()
    with slaves([port], points, within=30):
        unit = "1"
        device = ModbusDevice(
            name="bench",
            link=TcpLink(host="127.0.0.1", port=port),
            unit_id=1,
            poll_interval=1.0,
            timeout=2.0,
            retries=0,
            points=tuple(
                Point(
                    tag=f"bench.{p.name}",
                    table=p.table,
                    address=p.address,
                    type=p.type,
                    order=p.order,
                    factor=1.0,
                    offset=0.0,
                    unit=unit,
                )
                for p in bench_profile(points).points
            ),
        )

        async def both() -> list[Result]:
            return [
                await _measure(device, "planner (gap fill 8)", seconds, one_per_point=False),
                await _measure(device, "one request per point", seconds, one_per_point=True),
            ]

        return asyncio.run(both())
