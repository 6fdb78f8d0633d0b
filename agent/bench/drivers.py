"""`massgate bench`: measured figures, not timed tests.

`bench drivers` polls a simulated Modbus TCP slave, served from a child process so that the
agent's CPU time is the agent's alone, back to back for a fixed time: once with the request
planner and once with one request per point, and prints both side by side.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import socket
import time
from dataclasses import dataclass

from massgate.drivers import profiles
from massgate.drivers.modbus import codec
from massgate.drivers.modbus.model import ModbusDevice, Point, TcpLink
from massgate.drivers.modbus.planner import plan
from massgate.drivers.modbus.poller import close_buses, pollers_for
from massgate.drivers.sim.plant import Plant
from massgate.drivers.sim.server import Meter, MeterSlave

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


def _serve(port: int, points: int, ready: multiprocessing.synchronize.Event) -> None:
    profile = bench_profile(points)
    values = {p.name: float(i) * 1.5 for i, p in enumerate(profile.points)}

    async def main() -> None:
        meter = Meter("bench", "bench", lambda: values, "benchmark slave")
        slave = MeterSlave(meter, Plant(), host="127.0.0.1", port=port, profile=profile)
        await slave.start()
        ready.set()
        await asyncio.Event().wait()  # until the parent terminates this process

    asyncio.run(main())


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
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    context = multiprocessing.get_context("spawn")
    ready = context.Event()
    server = context.Process(target=_serve, args=(port, points, ready), daemon=True)
    server.start()
    try:
        if not ready.wait(30):
            raise RuntimeError("the simulated slave did not start")
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
    finally:
        server.terminate()
        server.join(10)


def cmd_bench(args: argparse.Namespace) -> int:
    from . import suite as bench_all  # noqa: PLC0415

    if args.what == "all":
        return bench_all.run(list(bench_all.BENCHES), args)
    if args.json:
        return bench_all.run([args.what], args)
    if args.what == "e2e":
        from . import e2e as bench_e2e  # noqa: PLC0415

        print(
            bench_e2e.render(
                bench_e2e.bench_e2e(
                    devices=args.devices, points=args.device_points, seconds=args.e2e_seconds
                )
            )
        )
        return 0
    if args.what == "outbox":
        from . import outbox as bench_outbox  # noqa: PLC0415

        return bench_outbox.cmd_bench_outbox(args)
    if args.what == "totalizer":
        from . import totalizer as bench_totalizer  # noqa: PLC0415  # imports numba

        print(bench_totalizer.report(args.samples, args.python_samples))
        return 0
    results = bench_drivers(args.points, args.seconds)
    planned, single = results
    span = max(p.address + 2 for p in bench_profile(args.points).points)
    print(
        f"massgate bench drivers: {args.points} float32 points over {span} registers, one "
        f"simulated Modbus TCP slave on loopback (child process), {args.seconds:g} s per mode, "
        "polls back to back"
    )
    print(
        f"{'mode':<24}{'requests/cycle':>15}{'cycles/s':>10}{'points/s':>11}"
        f"{'agent CPU µs/point':>20}"
    )
    for r in results:
        print(
            f"{r.mode:<24}{r.requests_per_cycle:>15}{r.cycles / r.seconds:>10.1f}"
            f"{r.points_per_second:>11.0f}{r.cpu_per_point_us:>20.1f}"
        )
    print(
        f"planner: {single.requests_per_cycle / planned.requests_per_cycle:.0f}x fewer "
        f"requests, {planned.points_per_second / single.points_per_second:.1f}x the points/s, "
        f"{single.cpu_per_point_us / planned.cpu_per_point_us:.1f}x less CPU per point"
    )
    return 0


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "bench",
        help="measure throughput, CPU and memory (drivers, totalizer, outbox, end to end)",
        description="Run a benchmark and print what was measured on this machine. "
        "'drivers': points/s, agent CPU time per point and requests per cycle with the "
        "request planner and with one request per point, against a simulated slave. "
        "'totalizer': samples/s of each numba kernel next to a numpy equivalent and the "
        "pure-Python reference, on one core, and the first call's time in a new process with "
        "an empty and with a warm numba cache. "
        "'outbox': durable enqueue records/s, drain to a local TLS Mosquitto at QoS 1 next "
        "to raw paho publishing the same messages, and the time to drain a large backlog "
        "(needs mosquitto and openssl). "
        "'e2e': a simulated site (--devices × --device-points) through the whole agent "
        "(massgate run, pinned to one CPU) to a local TLS Mosquitto: points/s, CPU share, "
        "memory and start-up to the first poll. Without an argument: all four, one table.",
    )
    p.add_argument(
        "what",
        nargs="?",
        choices=("all", "drivers", "totalizer", "outbox", "e2e"),
        default="all",
        help="what to measure (default: all of them, in one table)",
    )
    p.add_argument("--json", action="store_true", help="print the figures as JSON")
    e2e = p.add_argument_group("e2e")
    e2e.add_argument(
        "--devices", type=int, default=50, help="e2e: simulated devices (default %(default)s)"
    )
    e2e.add_argument(
        "--device-points",
        type=int,
        default=20,
        help="e2e: float32 points per device (default %(default)s)",
    )
    e2e.add_argument(
        "--e2e-seconds",
        type=float,
        default=10.0,
        help="e2e: measured seconds of each run (default %(default)s)",
    )
    p.add_argument(
        "--points",
        type=int,
        default=48,
        help="drivers: values on the simulated device (default %(default)s)",
    )
    p.add_argument(
        "--seconds",
        type=float,
        default=3.0,
        help="drivers: duration of each mode (default %(default)s)",
    )
    p.add_argument(
        "--samples",
        type=int,
        default=10_000_000,
        help="totalizer: samples per kernel call (default %(default)s)",
    )
    p.add_argument(
        "--python-samples",
        type=int,
        default=200_000,
        help="totalizer: samples for the pure-Python reference (default %(default)s)",
    )
    from .outbox import add_arguments  # noqa: PLC0415

    add_arguments(p)
    p.set_defaults(func=cmd_bench)
