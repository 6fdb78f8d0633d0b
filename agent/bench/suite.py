"""`massgate bench` with no argument: every benchmark, one table of headline figures.

Each benchmark's own report (`massgate bench drivers`, ...) says more; this is the page a
user compares between two gateways, and `--json` is the same rows for a machine.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class Figure:
    bench: str
    figure: str
    value: float
    unit: str
    target: str = ""


def drivers(args: argparse.Namespace) -> list[Figure]:
    from .drivers import bench_drivers  # noqa: PLC0415

    planned, single = bench_drivers(args.points, args.seconds)
    return [
        Figure("drivers", f"{args.points} points, planner", planned.points_per_second, "points/s"),
        Figure("drivers", "agent CPU per point, planner", planned.cpu_per_point_us, "µs"),
        Figure("drivers", "one request per point", single.points_per_second, "points/s"),
    ]


def totalizer(args: argparse.Namespace) -> list[Figure]:
    from . import totalizer as bench_totalizer  # noqa: PLC0415  # imports numba

    rows = bench_totalizer.measure(args.samples, args.python_samples)
    cold, warm = bench_totalizer.first_calls()
    figures = [Figure("totalizer", r.kernel, r.numba, "samples/s") for r in rows]
    figures += [
        Figure("totalizer", "first call, cold cache", cold["first_call"], "s"),
        Figure("totalizer", "first call, warm cache", warm["first_call"], "s", "≤ 1"),
    ]
    return figures


def outbox(args: argparse.Namespace) -> list[Figure]:
    from .outbox import figures_for  # noqa: PLC0415

    f = figures_for(args)
    figures = [
        Figure("outbox", f"durable enqueue, {e.batch} per put", e.per_second, "records/s")
        for e in f.enqueue
    ]
    ours, raw = f.messages / f.ours_s, f.messages / f.raw_s
    figures += [
        Figure("outbox", "drain to TLS Mosquitto, QoS 1", ours, "messages/s"),
        Figure("outbox", "raw paho, same messages", raw, "messages/s"),
        Figure("outbox", "drain against raw paho", ours / raw * 100, "%", "≥ 85"),
        # The target is for the default 1,000,000-record backlog.
        Figure(
            "outbox",
            f"drain a {f.backlog:,} backlog",
            f.backlog_drain_s,
            "s",
            "≤ 120" if f.backlog == 1_000_000 else "",
        ),
        Figure(
            "outbox",
            f"longest event-loop stall, {f.backlog:,} backlog in an outage",
            f.outage_stall_s * 1000,
            "ms",
            "≤ 50" if f.backlog == 1_000_000 else "",
        ),
    ]
    return figures


def ingest(args: argparse.Namespace) -> list[Figure]:
    from .ingest import figures_for  # noqa: PLC0415

    f = figures_for(args)
    return [
        Figure("ingest", "broker to PostgreSQL", f.ingest_per_s, "records/s", "≥ 20000"),
        Figure("ingest", "plain psycopg COPY, same rows", f.copy_per_s, "records/s"),
        Figure(
            "ingest",
            f"stored of {f.fault_records}, broker restart and SIGKILL",
            f.stored,
            "records",
            f"= {f.fault_records}",
        ),
        Figure("ingest", "unexplained gaps", f.unexplained, "records", "= 0"),
    ]


def e2e(args: argparse.Namespace) -> list[Figure]:
    from .e2e import bench_e2e  # noqa: PLC0415

    f = bench_e2e(devices=args.devices, points=args.device_points, seconds=args.e2e_seconds)
    fast, slow, small = f.runs[0], f.runs[1], f.runs[2]
    return [
        Figure("e2e", f"points/s, {fast.mode}", fast.points_per_s, "points/s", "≥ 20000"),
        Figure("e2e", f"CPU, {fast.mode}", fast.cpu_share * 100, "% of a core"),
        Figure(
            "e2e",
            f"CPU at {slow.points_per_s:.0f} points/s",
            slow.cpu_share * 100,
            "% of a core",
            "≤ 5",
        ),
        Figure("e2e", f"RSS at {slow.points_per_s:.0f} points/s", slow.rss_mb, "MB", "≤ 150"),
        Figure("e2e", "peak RSS", max(r.peak_rss_mb for r in f.runs[:2]), "MB"),
        Figure(
            "e2e",
            f"RSS at {small.points_per_s:.0f} points/s, engine: python",
            small.rss_mb,
            "MB",
            "≤ 60",
        ),
        Figure("e2e", "CPU, engine: python", small.cpu_share * 100, "% of a core"),
        Figure("e2e", "start to first poll, warm cache", slow.first_poll_s, "s", "≤ 3"),
        Figure(
            "e2e",
            "start to first value at the broker, warm cache",
            slow.first_value_s,
            "s",
            "≤ 1.5",
        ),
        Figure("e2e", "numba compile, cold cache", f.cold_compile_s, "s"),
        Figure(
            "e2e",
            f"written to storage at {slow.points_per_s:.0f} points/s",
            slow.written_mb_per_h,
            "MB/h",
            "≤ 100",
        ),
        Figure(
            "e2e",
            f"disk syncs at {slow.points_per_s:.0f} points/s",
            slow.syncs_per_h,
            "per hour",
            "≤ 3600",
        ),
    ]


def footprint(args: argparse.Namespace) -> list[Figure]:
    from .footprint import footprint as measure  # noqa: PLC0415

    return [Figure("footprint", s.what, s.added_mb, "MB") for s in measure()]


BENCHES: dict[str, Callable[[argparse.Namespace], list[Figure]]] = {
    "drivers": drivers,
    "totalizer": totalizer,
    "outbox": outbox,
    "ingest": ingest,
    "e2e": e2e,
    "footprint": footprint,
}


def _value(v: float) -> str:
    if v >= 1000:
        return f"{v:,.0f}".replace(",", " ")
    if v >= 10:
        return f"{v:.1f}"
    return f"{v:.2f}"


def render(figures: list[Figure]) -> str:
    width = max(len(f.figure) for f in figures)
    lines = [f"{'bench':<10}{'figure':<{width + 2}}{'value':>12}  {'unit':<12}target"]
    for f in figures:
        lines.append(
            f"{f.bench:<10}{f.figure:<{width + 2}}{_value(f.value):>12}  {f.unit:<12}{f.target}"
        )
    return "\n".join(lines)


def run(names: list[str], args: argparse.Namespace) -> int:
    figures: list[Figure] = []
    missed = 0
    for name in names:
        try:
            figures += BENCHES[name](args)
        except (RuntimeError, ImportError) as exc:
            # What this machine lacks for one benchmark (Mosquitto, PostgreSQL, psycopg on a
            # gateway) is said, and the others still run.
            print(f"massgate bench {name}: not measured: {exc}", file=sys.stderr)
            missed += 1
    if args.json:
        print(json.dumps([asdict(f) for f in figures], indent=2, ensure_ascii=False))
    else:
        print(render(figures))
    return 1 if missed else 0
