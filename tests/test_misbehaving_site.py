"""One agent, two good simulated meters and every kind of misbehaving Modbus TCP slave.

The agent stays up, the good meters keep their poll rate, no misbehaving slave ever counts
a good poll, and the whole log stays within a few lines per bad device.
"""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from tests.agent.commands.test_sim_command import _start_sim
from tests.conftest import start_agent
from tests.drivers.modbus.misbehaving import MODES, MisbehavingSlave

GOOD_POLLS = 25  # each good meter's, five a second: five seconds beside the bad slaves
BAD = [m for m in MODES if m not in ("good", "inf", "exception_1", "exception_2")]


class SlaveThread:
    """The misbehaving slaves on an event loop of their own, beside the sync test."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.slaves = [MisbehavingSlave(m) for m in BAD]
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def __enter__(self) -> list[MisbehavingSlave]:
        self.thread.start()

        async def start() -> None:
            for slave in self.slaves:
                await slave.start()

        asyncio.run_coroutine_threadsafe(start(), self.loop).result(30)
        return self.slaves

    def __exit__(self, *exc: object) -> None:
        async def stop() -> None:
            for slave in self.slaves:
                await slave.stop()

        asyncio.run_coroutine_threadsafe(stop(), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


def _devices(config: Path) -> dict[str, Any]:
    status = subprocess.run(
        [sys.executable, "-m", "massgate.agent.commands.cli", "status", str(config), "--json"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if status.returncode != 0:  # starting: the socket is not there yet
        return {}
    devices: dict[str, Any] = json.loads(status.stdout).get("devices", {})
    return devices


def _enough(devices: dict[str, Any]) -> bool:
    if not devices:
        return False
    good = all(devices[name]["good_polls"] >= GOOD_POLLS for name in ("ft101", "ft102"))
    return good and all(devices[mode]["failed_polls"] >= 3 for mode in BAD)


def test_misbehaving_slaves_do_not_disturb_the_good_meters(tmp_path: Path):
    sim, _ = _start_sim(
        ["--base-port", "0", "--config-out", str(tmp_path / "devices.yaml")], tmp_path / "sim.log"
    )
    try:
        with SlaveThread() as slaves:
            good = [
                line.replace("poll_interval: 500ms", "poll_interval: 200ms")
                for line in (tmp_path / "devices.yaml").read_text().splitlines()
                if "{name: ft101," in line or "{name: ft102," in line
            ]
            bad = [
                f"  - {{name: {s.mode}, protocol: modbus_tcp, host: 127.0.0.1, port: {s.port}, "
                "poll_interval: 200ms, timeout: 200ms, points: ["
                "{name: a, address: 0, type: float32, unit: kg/s}, "
                "{name: b, address: 2, type: float32, unit: kg/s}]}"
                for s in slaves
            ]
            config = tmp_path / "m.yaml"
            config.write_text(
                f"gateway: {{site: s, id: g, state_dir: {tmp_path / 'state'}}}\ndevices:\n"
                + "\n".join(good + bad)
                + "\n"
            )
            log = tmp_path / "agent.log"
            agent = start_agent(config, log)
            try:
                # Decided by counts, bounded: the good meters' polls and every bad device
                # degraded (three failures), asked of the running agent as a person would.
                devices = {}
                deadline = time.monotonic() + 60.0
                while not _enough(devices):
                    assert time.monotonic() < deadline, devices
                    assert agent.poll() is None, log.read_text()
                    devices = _devices(config)
                agent.send_signal(signal.SIGTERM)
                assert agent.wait(timeout=60) == 0, log.read_text()
            finally:
                if agent.poll() is None:
                    agent.kill()
                    agent.wait()
    finally:
        sim.send_signal(signal.SIGTERM)
        sim.wait(timeout=30)
        assert sim.stdout is not None
        sim.stdout.close()
    for name in ("ft101", "ft102"):
        assert devices[name]["good_polls"] >= GOOD_POLLS, devices[name]
        assert devices[name]["failed_polls"] == 0, devices[name]
    for mode in BAD:
        assert devices[mode]["good_polls"] == 0, (mode, devices[mode])
        assert devices[mode]["failed_polls"] >= 2, (mode, devices[mode])
        assert not devices[mode]["up"]
    lines = log.read_text().splitlines()
    assert not [line for line in lines if "Traceback" in line], lines
    # One ERROR when a device goes down and one WARNING when it is degraded; no library noise.
    assert len(lines) <= 3 * len(BAD) + 5, "\n".join(lines)
