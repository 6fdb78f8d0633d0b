"""`totals: {engine: python}`: the kernels' plain-Python twins behind the same interface.

The same kilograms to the bit (the engine changes CPU time and memory, never a quantity),
and an agent on it never imports numba.
"""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import numpy as np

from massgate.agent import config as config_module
from massgate.agent.totalize.engine import PythonEngine, load
from massgate.agent.totalize.inventories import InventoryGauge
from massgate.agent.totalize.streams import StreamTotal
from massgate.drivers.sim.plant import Plant
from massgate.drivers.sim.plantspec import builtin

CONFIG = """\
gateway: {{site: a, id: b, state_dir: {state}}}
devices:
  - {{name: ft101, protocol: modbus_tcp, host: 127.0.0.1, profile: coriolis}}
  - {{name: ft102, protocol: modbus_tcp, host: 127.0.0.1, port: 5021, profile: magmeter}}
  - {{name: tt102, protocol: modbus_tcp, host: 127.0.0.1, port: 5022, profile: temperature_tx}}
  - {{name: pt102, protocol: modbus_tcp, host: 127.0.0.1, port: 5023, profile: pressure_tx}}
  - {{name: lt100, protocol: modbus_tcp, host: 127.0.0.1, port: 5024, profile: level_radar}}
streams:
  - {{name: feed, mass_flow: ft101.mass_flow, accuracy: 0.1 %}}
  - {{name: feed_register, mass_total: ft101.mass_total, max_flow: 20 t/h, accuracy: 0.1 %}}
  - name: product
    volume_flow: ft102.volume_flow
    accuracy: 0.2 %
    density:
      reference: 998.2 kg/m3
      at: 20 degC
      expansion: 2.1e-4 1/K
      compressibility: 4.6e-10 1/Pa
      temperature: tt102.temperature
      pressure: pt102.pressure
inventories:
  - name: t100
    level: lt100.level
    accuracy: 2 mm
    strapping: {{level_unit: m, volume_unit: m3, table: [[0, 0], [1, 2.1], [2, 4.5], [4, 9.0]]}}
    density: {{reference: 998.2 kg/m3, at: 20 degC, expansion: 2.1e-4 1/K,
               temperature: tt102.temperature}}
totals: {{engine: {engine}}}
"""


def _config(tmp_path: Path, engine: str) -> config_module.Config:
    path = tmp_path / f"{engine}.yaml"
    path.write_text(CONFIG.format(state=tmp_path, engine=engine))
    return config_module.load(path)


def test_the_python_engine_gives_the_kernels_kilograms_to_the_bit(tmp_path: Path):
    config = _config(tmp_path, "python")
    assert config.engine == "python"
    engines = {"numba": load("numba"), "python": load("python")}
    assert isinstance(engines["python"], PythonEngine)
    streams = {
        name: {s.name: StreamTotal(s, engine=engine) for s in config.streams}
        for name, engine in engines.items()
    }
    tanks = {name: InventoryGauge(config.inventories[0], engine=e) for name, e in engines.items()}
    clock = [0.0]
    plant = Plant(builtin(), clock=lambda: clock[0], step=0.05)
    rng = np.random.default_rng(11)
    masses: dict[str, list[float | None]] = {"numba": [], "python": []}
    for k in range(2 * 3600):
        clock[0] = k * 1.0
        coriolis, magmeter = plant.read("ft101"), plant.read("ft102")
        temperature = plant.read("tt102")["temperature"]
        pressure = plant.read("pt102")["pressure"]
        level = plant.read("lt100")["level"]
        lost = rng.random() < 0.01  # a lost poll: bridged in both, the same way
        flow = math.nan if lost else coriolis["mass_flow"]
        for name in engines:
            s = streams[name]
            s["feed"].add(clock[0], 1.8e9 + clock[0], flow)
            s["feed_register"].add(clock[0], 1.8e9 + clock[0], coriolis["mass_total"])
            s["product"].add(
                clock[0], 1.8e9 + clock[0], magmeter["volume_flow"], temperature, pressure
            )
            tanks[name].update(clock[0], level, temperature)
            masses[name].append(tanks[name].mass)
            if k % 60 == 0:
                for stream in s.values():
                    stream.integrate()
    for stream in config.streams:
        numba, python = streams["numba"][stream.name], streams["python"][stream.name]
        np.testing.assert_array_equal(python.state, numba.state, err_msg=stream.name)
        assert python.net == numba.net > 0
    assert masses["python"] == masses["numba"]
    assert any(m is not None for m in masses["python"])


def _imports(config: Path, *, stop_first: bool = False) -> list[str]:
    """What an agent's pipeline on `config` has imported when: after its first cycles (every
    tag read, the first values made), and after the engine loader has run (or been stopped)."""
    script = f"""
import asyncio, sys
from pathlib import Path
from massgate.agent import config as config_module
from massgate.agent.core.samples import Batch, Quality
from massgate.agent.runtime.gateway import Gateway
from massgate.agent.runtime.pipeline import _load_engine
from massgate.agent.store.outbox import Outbox
config = config_module.load(Path({str(config)!r}))
gateway = Gateway(config, Outbox(":memory:", max_bytes=1 << 20, site="a", gateway="b"))

async def main():
    stop = asyncio.Event()
    if {stop_first!r}:
        stop.set()
    loader = asyncio.ensure_future(_load_engine(gateway, stop)) if gateway.wanted_engine else None
    for mono in (1.0, 2.0):
        for device in config.devices:
            values = {{point.tag: 1.0 for point in device.points}}
            gateway.ingest(Batch(device.name, mono, 1.8e9 + mono, values, Quality.GOOD))
        gateway.cycle(mono, 1.8e9 + mono)
    assert gateway.first_values.is_set()
    print("numba" in sys.modules)
    if loader is not None:
        await loader
    print("numba" in sys.modules, type(gateway.streams["feed"].engine).__name__)
    before = gateway.streams["feed"].net
    gateway.ingest(Batch("ft101", 3.0, 1.8e9 + 3.0, {{"ft101.mass_flow": 1.0}}, Quality.GOOD))
    gateway.cycle(3.0, 1.8e9 + 3.0)
    assert gateway.streams["feed"].net > before > 0

asyncio.run(main())
"""
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300, check=False
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.split()


def test_an_agent_on_the_python_engine_never_imports_numba(tmp_path: Path):
    _config(tmp_path, "python")
    assert _imports(tmp_path / "python.yaml") == ["False", "False", "PythonEngine"]


def test_numba_is_loaded_after_the_first_values_and_then_integrates(tmp_path: Path):
    """The first polls and the first values do not wait for numba's import and kernels."""
    _config(tmp_path, "numba")
    assert _imports(tmp_path / "numba.yaml") == ["False", "True", "module"]
    # An agent stopped before its first values never loads it.
    assert _imports(tmp_path / "numba.yaml", stop_first=True) == ["False", "False", "PythonEngine"]


def test_without_numba_the_default_engine_is_the_python_one_said_once():
    """A 32-bit machine has no numba: the agent runs, says why once, and counts the same."""
    script = """
import logging, sys
sys.modules["numba"] = None  # as if it were not installed
logging.basicConfig(level=logging.WARNING, format="%(message)s")
from massgate.agent.totalize.engine import PythonEngine, load
engines = [load("numba"), load("numba")]
print(all(isinstance(e, PythonEngine) for e in engines))
"""
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "True"
    assert done.stderr.count("numba cannot be imported") == 1, done.stderr
    assert "Python engine" in done.stderr


def test_only_the_kernels_a_configuration_calls_are_warmed(tmp_path: Path):
    from massgate.agent.totalize.engine import KERNELS, kernels_for

    config = _config(tmp_path, "numba")
    used = kernels_for(config.streams, config.inventories)
    assert used <= set(KERNELS)
    # feed (mass flow), feed_register (a totalizer register), and a volume meter.
    assert {"integrate_flow", "difference_register"} <= used
    assert kernels_for(config.streams[:1], ()) == {"integrate_flow"}
    assert kernels_for((), ()) == set()


def test_a_cycle_compiles_no_kernel_the_warm_up_left_out(tmp_path: Path):
    """Every kernel the plant's cycles call was compiled (or read from the cache) by the
    warm-up, off the event loop: none gets its first signature in a cycle."""
    _config(tmp_path, "numba")
    script = f"""
import math
from pathlib import Path
from massgate.agent import config as config_module
from massgate.agent.core.samples import Batch, Quality
from massgate.agent.runtime.gateway import Gateway
from massgate.agent.store.outbox import Outbox
from massgate.agent.totalize import kernels
from massgate.agent.totalize.engine import KERNELS, kernels_for, warmed
config = config_module.load(Path({str(tmp_path / "numba.yaml")!r}))
gateway = Gateway(config, Outbox(":memory:", max_bytes=1 << 20, site="a", gateway="b"))
gateway.use_engine(warmed("numba", kernels_for(config.streams, config.inventories)))
before = {{k: len(getattr(kernels, k).signatures) for k in KERNELS}}
values = {{"ft101.mass_flow": 1.0, "ft101.mass_total": 5.0, "ft102.volume_flow": 0.001,
          "tt102.temperature": 300.0, "pt102.pressure": 2e5, "lt100.level": 1.5}}
for mono in (1.0, 2.0, 3.0):
    for device in config.devices:
        tags = {{t: v for t, v in values.items() if t.startswith(device.name + ".")}}
        gateway.ingest(Batch(device.name, mono, 1.8e9 + mono, tags, Quality.GOOD))
    gateway.cycle(mono, 1.8e9 + mono)
after = {{k: len(getattr(kernels, k).signatures) for k in KERNELS}}
assert gateway.streams["product"].net > 0 and gateway.streams["feed"].net > 0
assert after == before, (before, after)
print("ok")
"""
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300, check=False
    )
    assert done.returncode == 0, done.stderr
