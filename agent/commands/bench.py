"""`massgate bench`: what this machine does, measured; the benchmarks live in agent/bench/."""

from __future__ import annotations

import argparse

from ..bench import suite as bench_all
from ..bench.drivers import bench_drivers, bench_profile
from ..bench.ingest import add_arguments as _ingest_arguments
from ..bench.outbox import add_arguments as _outbox_arguments


def main(args: argparse.Namespace) -> int:
    if args.what == "all":
        return bench_all.run(list(bench_all.BENCHES), args)
    if args.json:
        return bench_all.run([args.what], args)
    if args.what == "e2e":
        from ..bench import e2e as bench_e2e  # noqa: PLC0415

        print(
            bench_e2e.render(
                bench_e2e.bench_e2e(
                    devices=args.devices, points=args.device_points, seconds=args.e2e_seconds
                )
            )
        )
        return 0
    if args.what == "footprint":
        from ..bench import footprint  # noqa: PLC0415

        print(footprint.render(footprint.footprint()))
        return 0
    if args.what == "ingest":
        from ..bench import ingest as bench_ingest  # noqa: PLC0415

        return bench_ingest.cmd_bench_ingest(args)
    if args.what == "outbox":
        from ..bench import outbox as bench_outbox  # noqa: PLC0415

        return bench_outbox.cmd_bench_outbox(args)
    if args.what == "totalizer":
        from ..bench import totalizer as bench_totalizer  # noqa: PLC0415  # imports numba

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


def setup(p: argparse.ArgumentParser) -> None:
    p.description = (
        "Run a benchmark and print what was measured on this machine. "
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
        "memory, start-up to the first poll and to the first value at the broker, storage "
        "written and disk syncs per hour, on numba's engine and on the Python one. "
        "'ingest': records/s from the broker into a local PostgreSQL through massgate ingest, "
        "next to a plain psycopg COPY of the same rows, and the unexplained gaps after a "
        "broker restart and a SIGKILL of the ingest (needs mosquitto and PostgreSQL). "
        "'footprint': the resident memory each part of the agent adds (interpreter, numpy, "
        "drivers, pipeline, paho, numba, the kernels, asyncua). "
        "Without an argument: all of them, one table."
    )
    p.add_argument(
        "what",
        nargs="?",
        choices=("all", "drivers", "totalizer", "outbox", "ingest", "e2e", "footprint"),
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
    p.set_defaults(func=main)
    _outbox_arguments(p)
    _ingest_arguments(p)
