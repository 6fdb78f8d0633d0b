"""`massgate bench e2e`: a simulated site through the whole agent, measured from outside.

The site is `devices` Modbus TCP slaves of `points` float32 values each, served by a child
process; one value of every device is a mass flow, so the totalizer integrates one stream
per device, and the streams meet in balance nodes of five. The agent is the real thing,
`massgate run` in a process of its own pinned to one CPU, publishing to a local TLS Mosquitto.
From outside the bench reads what an operator would: `massgate status` over the status
socket (polls, acknowledged messages, outbox depth) and /proc (CPU time, peak RSS).

Two runs: every device polled as fast as it answers (the ceiling, in points/s), and polled
once a second (1,000 points/s for 50 × 20: the CPU share and memory of a typical site).
Before them the numba cache is filled, so start-up is measured with a warm cache, as a
service starts after deploy/install.sh compiled the kernels.
"""

from __future__ import annotations

import json
import math
import os
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from ..runtime.statusserver import StatusUnavailable, fetch
from .drivers import bench_profile, slaves
from .localbroker import LocalBroker

NODE_SIZE = 5  # streams per balance node
UNITS = {"v000": "kg/s"}  # the stream's mass flow; the other points are plain numbers
DIMENSIONLESS = '"1"'


@dataclass(frozen=True)
class E2eRun:
    mode: str
    devices: int
    points: int
    poll_interval: float
    seconds: float
    points_per_s: float
    cpu_share: float  # of one core
    peak_rss_mb: float
    rss_mb: float  # at the end of the run
    acked_per_s: float
    first_poll_s: float  # from the process's start
    first_value_s: float  # from the process's start to the first values at the broker
    outbox_depth: int  # at the end: 0 or small means the agent kept up with its output
    written_mb_per_h: float  # what the agent wrote to storage (/proc/PID/io write_bytes)
    syncs_per_h: float  # disk syncs the outbox asked for (synced commits, sequence marks)


def _ports(count: int) -> list[int]:
    socks = []
    for _ in range(count):
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        socks.append(sock)
    ports = [int(s.getsockname()[1]) for s in socks]
    for s in socks:
        s.close()
    return ports


PYTHON_ENGINE = "1/s, engine: python"


def site_config(
    state_dir: Path,
    ports: list[int],
    points: int,
    poll_interval: float,
    broker: LocalBroker,
    *,
    engine: str = "numba",
) -> str:
    """The agent's configuration for the simulated site."""
    lines = [
        f"gateway: {{site: bench, id: gw-bench, state_dir: {state_dir}}}",
        "devices:",
    ]
    for i, port in enumerate(ports):
        point_list = ", ".join(
            f"{{name: {p.name}, table: holding, address: {p.address}, type: float32, "
            f"unit: {UNITS.get(p.name, DIMENSIONLESS)}}}"
            for p in bench_profile(points).points
        )
        lines.append(
            f"  - {{name: d{i:03d}, protocol: modbus_tcp, host: 127.0.0.1, port: {port}, "
            f"poll_interval: {poll_interval}s, timeout: 1s, points: [{point_list}]}}"
        )
    lines.append("streams:")
    names = [f"s{i:03d}" for i in range(len(ports))]
    for i, name in enumerate(names):
        lines.append(f"  - {{name: {name}, mass_flow: d{i:03d}.v000, accuracy: 0.5 %}}")
    lines.append("nodes:")
    for start in range(0, len(names) - NODE_SIZE + 1, NODE_SIZE):
        group = names[start : start + NODE_SIZE]
        lines.append(
            f"  - {{name: n{start // NODE_SIZE:02d}, inputs: [{', '.join(group[:2])}], "
            f"outputs: [{', '.join(group[2:])}], window: 1min, "
            "tolerance: {fixed: 1 kg, relative: 1 %}, persistence: 5min}"
        )
    lines += [
        f"totals: {{interval: 10s, engine: {engine}}}",
        "telemetry: {interval: 1s}",
        "outbox: {drain_rate: 0}",
        "mqtt:",
        f"  brokers: [{broker.url}]",
        f"  ca_file: {broker.ca}",
        "",
    ]
    return "\n".join(lines)


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks  # utime, stime


def _written_bytes(pid: int) -> int:
    """Bytes the process caused to be written to storage (not to the page cache alone)."""
    for line in Path(f"/proc/{pid}/io").read_text().splitlines():
        key, _, value = line.partition(":")
        if key == "write_bytes":
            return int(value)
    return 0


def _memory_mb(pid: int) -> tuple[float, float]:
    """(peak, current) resident set size."""
    found = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmHWM", "VmRSS"):
            found[key] = int(value.split()[0]) / 1024
    return found.get("VmHWM", float("nan")), found.get("VmRSS", float("nan"))


def _status(
    sock: Path, deadline: float, proc: subprocess.Popen[bytes], log: Path
) -> dict[str, Any]:
    while True:
        if proc.poll() is not None:
            tail = log.read_text()[-2000:]
            raise RuntimeError(f"the agent exited {proc.returncode}: {tail}")
        try:
            return fetch(sock, timeout=5.0)
        except StatusUnavailable:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.02)


def _good_polls(snap: dict[str, Any]) -> int:
    return sum(d["good_polls"] for d in snap["devices"].values())


class _FirstValues:
    """A subscriber that notes when the first telemetry with values reaches the broker."""

    def __init__(self, broker: LocalBroker) -> None:
        self.at: float | None = None
        self.subscribed = threading.Event()
        self.client = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2)
        self.client.tls_set_context(ssl.create_default_context(cafile=str(broker.ca)))
        self.client.on_connect = lambda c, u, f, rc, p: c.subscribe("massgate/+/+/telemetry", 1)
        self.client.on_subscribe = lambda c, u, mid, rcs, p: self.subscribed.set()
        self.client.on_message = self._message
        self.client.connect("127.0.0.1", broker.port)
        self.client.loop_start()
        if not self.subscribed.wait(10):
            raise RuntimeError("the bench's subscriber got no SUBACK")

    def _message(self, client: Any, userdata: Any, message: Any) -> None:
        if self.at is None and json.loads(message.payload).get("points"):
            self.at = time.time()

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def run_agent(
    config: Path,
    *,
    broker: LocalBroker,
    mode: str,
    devices: int,
    points: int,
    poll_interval: float,
    seconds: float,
    cache: Path,
    cpu: int | None,
) -> E2eRun:
    state_sock = config.parent / "state" / "status.sock"
    env = {**os.environ, "NUMBA_CACHE_DIR": str(cache)}
    env.pop("NOTIFY_SOCKET", None)
    log = config.parent / "agent.log"
    listener = _FirstValues(broker)
    started_wall = time.time()
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "massgate.agent.commands.cli", "run", str(config)],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
        )
    try:
        if cpu is not None:
            os.sched_setaffinity(proc.pid, {cpu})
        deadline = time.monotonic() + 120
        while True:
            snap = _status(state_sock, deadline, proc, log)
            firsts = [d["first_good"] for d in snap["devices"].values() if d["first_good"]]
            if firsts:
                from datetime import datetime  # noqa: PLC0415

                first = min(datetime.fromisoformat(t).timestamp() for t in firsts)
                first_poll = first - started_wall
                break
            time.sleep(0.02)
        time.sleep(min(3.0, seconds / 2))  # every device connected, caches hot
        s0, cpu0, t0, io0 = (
            _status(state_sock, deadline, proc, log),
            _cpu_seconds(proc.pid),
            time.monotonic(),
            _written_bytes(proc.pid),
        )
        time.sleep(seconds)
        s1, cpu1, t1, io1 = (
            _status(state_sock, deadline, proc, log),
            _cpu_seconds(proc.pid),
            time.monotonic(),
            _written_bytes(proc.pid),
        )
        peak, rss = _memory_mb(proc.pid)
    finally:
        listener.close()
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    elapsed = t1 - t0
    acked = (s1["broker"]["acked"] - s0["broker"]["acked"]) if s1["broker"] else 0
    return E2eRun(
        mode=mode,
        devices=devices,
        points=points,
        poll_interval=poll_interval,
        seconds=elapsed,
        points_per_s=(_good_polls(s1) - _good_polls(s0)) * points / elapsed,
        cpu_share=(cpu1 - cpu0) / elapsed,
        peak_rss_mb=peak,
        rss_mb=rss,
        acked_per_s=acked / elapsed,
        first_poll_s=first_poll,
        first_value_s=(listener.at - started_wall) if listener.at is not None else math.nan,
        outbox_depth=s1["outbox"]["depth"],
        written_mb_per_h=(io1 - io0) / 1e6 / elapsed * 3600.0,
        syncs_per_h=(s1["outbox"]["syncs"] - s0["outbox"]["syncs"]) / elapsed * 3600.0,
    )


def warm_numba(cache: Path) -> float:
    """Fill the numba cache as deploy/install.sh does; returns the compile time (cold)."""
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            "from massgate.agent.bench.totalizer import warm_cache; print(warm_cache())",
        ],
        env={**os.environ, "NUMBA_CACHE_DIR": str(cache)},
        capture_output=True,
        text=True,
        timeout=600,
        check=True,
    )
    return float(done.stdout.strip().splitlines()[-1])


@dataclass(frozen=True)
class E2eFigures:
    cold_compile_s: float
    cpu: int | None
    runs: list[E2eRun]


def bench_e2e(
    *, devices: int = 50, points: int = 20, seconds: float = 10.0, slow_interval: float = 1.0
) -> E2eFigures:
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    # The agent gets a core of its own where there are two; the slaves and Mosquitto the rest.
    agent_cpu = cpus[-1] if len(cpus) >= 2 else None
    others = set(cpus[:-1]) if agent_cpu is not None else None
    ports = _ports(devices)
    with slaves(ports, points, within=120) as pid:
        if others and pid is not None:
            os.sched_setaffinity(pid, others)
        with (
            tempfile.TemporaryDirectory(prefix="massgate-bench-e2e-") as tmp,
            LocalBroker() as broker,
        ):
            if others and broker.pid is not None:
                os.sched_setaffinity(broker.pid, others)
            work = Path(tmp)
            cache = work / "numba"
            cold = warm_numba(cache)
            runs: list[E2eRun] = []
            for mode, interval, engine in (
                ("every 10 ms", 0.0, "numba"),
                ("one poll a second", slow_interval, "numba"),
                # The small engine for small machines, side by side: numba is never imported.
                (PYTHON_ENGINE, slow_interval, "python"),
            ):
                run_dir = work / f"run{len(runs)}"
                run_dir.mkdir()
                config = run_dir / "massgate.yaml"
                config.write_text(
                    site_config(
                        run_dir / "state", ports, points, interval or 0.01, broker, engine=engine
                    )
                )
                runs.append(
                    run_agent(
                        config,
                        broker=broker,
                        mode=mode,
                        devices=devices,
                        points=points,
                        poll_interval=interval,
                        seconds=seconds,
                        cache=cache,
                        cpu=agent_cpu,
                    )
                )
    return E2eFigures(cold, agent_cpu, runs)


def render(figures: E2eFigures) -> str:
    first = figures.runs[0]
    where = f"pinned to CPU {figures.cpu}" if figures.cpu is not None else "not pinned (one CPU)"
    lines = [
        f"massgate bench e2e: {first.devices} Modbus TCP devices × {first.points} float32 points "
        f"(child process) → massgate run ({where}) → TLS Mosquitto, QoS 1; "
        f"{first.devices} streams, {first.devices // NODE_SIZE} nodes",
        f"numba kernels compiled cold in {figures.cold_compile_s:.1f} s; "
        "the runs start with that cache (warm)",
        f"{'run':<22}{'points/s':>10}{'CPU % core':>11}{'RSS MB (peak)':>14}{'acked msg/s':>12}"
        f"{'first poll s':>13}{'first value s':>14}{'outbox left':>12}{'MB/h written':>13}"
        f"{'syncs/h':>9}",
    ]
    for r in figures.runs:
        memory = f"{r.rss_mb:.0f} ({r.peak_rss_mb:.0f})"
        lines.append(
            f"{r.mode:<22}{r.points_per_s:>10.0f}{r.cpu_share * 100:>11.1f}{memory:>14}"
            f"{r.acked_per_s:>12.1f}{r.first_poll_s:>13.2f}{r.first_value_s:>14.2f}"
            f"{r.outbox_depth:>12}{r.written_mb_per_h:>13.1f}{r.syncs_per_h:>9.0f}"
        )
    fast, slow, small = figures.runs[0], figures.runs[1], figures.runs[2]
    lines.append(
        f"targets: ≥ 20000 points/s ({fast.points_per_s:.0f}); at ~1000 points/s ≤ 5 % of a "
        f"core ({slow.cpu_share * 100:.1f} %) and ≤ 120 MB ({slow.peak_rss_mb:.0f} MB); "
        f"first poll ≤ 1.5 s warm ({slow.first_poll_s:.2f} s); first value at the broker "
        f"≤ 1.5 s ({slow.first_value_s:.2f} s); ≤ 100 MB/h written "
        f"({slow.written_mb_per_h:.0f}) and ≤ 3600 syncs/h ({slow.syncs_per_h:.0f}); on the "
        f"Python engine ≤ 60 MB ({small.peak_rss_mb:.0f} MB)"
    )
    return "\n".join(lines)
