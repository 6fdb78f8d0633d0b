"""`massgate sim` as a plant engineer runs it: a plant file served over Modbus TCP, Modbus RTU
on a socat pty pair and OPC UA at once, read back by the agent's own pollers through the
configuration the command wrote, and stopped cleanly by SIGTERM."""

from __future__ import annotations

import asyncio
import os
import select
import signal
import subprocess
import sys
import time
from importlib import resources
from pathlib import Path

import pytest

from massgate.agent import config as config_module
from massgate.agent.core.samples import Batch, Quality
from massgate.agent.runtime.pipeline import _open_pollers
from massgate.drivers import profiles
from massgate.drivers.modbus.model import ModbusDevice
from massgate.drivers.sim import plantspec
from tests.conftest import free_port, run_async

BIAS = 0.5  # the plant file makes LT-100 read 50 % high


def _start_sim(args: list[str], log: Path) -> tuple[subprocess.Popen[bytes], list[str]]:
    # Its log goes to a file: a pipe nobody reads would stall it once full.
    with log.open("w") as stderr:
        proc = subprocess.Popen(
            [sys.executable, "-m", "massgate.agent.commands.cli", "sim", *args],
            stdout=subprocess.PIPE,
            stderr=stderr,
        )
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    received = b""
    deadline = time.monotonic() + 60.0
    while b"Serving until" not in received:
        if time.monotonic() > deadline or proc.poll() is not None:
            proc.kill()
            proc.wait()
            raise AssertionError(f"massgate sim did not start: {received!r} {log.read_text()}")
        if select.select([fd], [], [], 1.0)[0]:
            received += os.read(fd, 65536)
    return proc, received.decode().splitlines()


def test_sim_serves_a_plant_file_over_tcp_rtu_and_opcua(tmp_path: Path):
    text = resources.files("massgate.drivers.sim").joinpath("plant.yaml").read_text()
    assert "faults: []" in text
    plant_file = tmp_path / "plant.yaml"
    plant_file.write_text(
        text.replace("faults: []", "faults:\n  - {kind: bias, target: lt100, error: 50 %}")
    )
    agent_file = tmp_path / "agent.yaml"
    proc, output = _start_sim(
        [
            "--plant", str(plant_file), "--base-port", "0", "--rtu", "pty",
            "--opcua", str(free_port()), "--config-out", str(agent_file),
        ],
        tmp_path / "sim.log",
    )  # fmt: skip
    try:
        config = config_module.load(agent_file)
        names = {d.name for d in config.devices}
        meters = ["ft101", "lt100", "tt102", "ft102", "wt100", "lt101", "pt102"]
        expected = {f"{m}{suffix}" for m in meters for suffix in ("", "_rtu", "_ua")}
        assert names == expected
        batches = run_async(_read_all(config))
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(timeout=20)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            assert proc.stdout is not None
            proc.stdout.close()
    assert code == 0, f"massgate sim exited {code}"

    spec = plantspec.builtin()
    for device in config.devices:
        good = [b for b in batches if b.device == device.name and b.quality is Quality.GOOD]
        assert good, f"{device.name}: no good reading over its transport"
        meter = spec.meter(device.name.split("_")[0])
        assert any(line.lstrip().startswith(meter.name) for line in output)
        tags = {f"{device.name}.{p.name}" for p in profiles.load(meter.profile).points}
        # OPC UA notifications carry only what changed: every point over the batches.
        assert set().union(*(b.values for b in good)) >= tags
    # The plant file's fault reached every transport: the radar reads 50 % high against the
    # hydrostatic transmitter on the same tank.
    for suffix in ("", "_rtu", "_ua"):
        radar = _last(batches, f"lt100{suffix}", "level")
        hydrostatic = _last(batches, f"lt101{suffix}", "level")
        assert radar / hydrostatic == pytest.approx(1 + BIAS, abs=0.01)
    rtu_port = next(
        d.link.port
        for d in config.devices
        if isinstance(d, ModbusDevice) and d.name.endswith("_rtu")
    )
    assert not Path(rtu_port).exists(), "the pty pair outlived massgate sim"


def _last(batches: list[Batch], device: str, point: str) -> float:
    tag = f"{device}.{point}"
    good = [b for b in batches if b.quality is Quality.GOOD and tag in b.values]
    assert good, f"no good {tag}"
    return good[-1].values[tag]


async def _read_all(config: config_module.Config) -> list[Batch]:
    batches: list[Batch] = []
    opened = _open_pollers(config, batches.append)
    pollers = [p for o in opened for p in o.pollers]
    stop = asyncio.Event()
    tasks = [asyncio.create_task(p.run(stop)) for p in pollers]

    def every_device_read_twice() -> bool:
        good: dict[str, int] = {}
        for b in batches:
            if b.quality is Quality.GOOD:
                good[b.device] = good.get(b.device, 0) + 1
        return all(good.get(d.name, 0) >= 2 for d in config.devices)

    try:
        for _ in range(300):
            if every_device_read_twice():
                break
            await asyncio.sleep(0.1)
    finally:
        stop.set()
        await asyncio.gather(*tasks, return_exceptions=True)
        for o in opened:
            await o.close()
    return batches
