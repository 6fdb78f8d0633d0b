"""`massgate bench footprint`: where the agent's memory goes, one part at a time.

Each step is a fresh interpreter that imports everything the steps before it did plus one
part more, and reports its resident set size: the difference is what that part costs. The
kernels are loaded from a warm numba cache (as a service finds them after deploy/install.sh)
and called once, as the totalizer's first cycle does.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

# (what, the code that loads it); each step runs every line before it too.
STEPS: tuple[tuple[str, str], ...] = (
    ("Python interpreter", "pass"),
    ("numpy", "import numpy"),
    ("configuration, core, YAML", "import massgate.agent.config"),
    ("Modbus driver (pymodbus client, pyserial)", "import massgate.drivers.modbus.poller"),
    ("pipeline: store, balance, runtime, journal", "import massgate.agent.runtime.pipeline"),
    ("MQTT publisher (paho)", "import massgate.agent.publish.publisher"),
    ("Python engine (the kernels' twins)", "import massgate.agent.totalize.engine"),
    ("numba and llvmlite imported", "import numba"),
    ("numba's kernels module (nothing compiled yet)", "import massgate.agent.totalize.kernels"),
    (
        "the first kernel called (numba sets up LLVM's code generator)",
        "import numpy as np; from massgate.agent.totalize import kernels, state; "
        "kernels.integrate_flow(np.array([0.0, 0.1]), np.ones(2), np.ones(2, dtype=np.bool_), "
        "state.new_state(), 60.0, 0.0)",
    ),
    (
        "every other kernel called once",
        "from massgate.agent.totalize.engine import warmed; warmed('numba')",
    ),
    ("OPC UA driver (asyncua), when a device uses it", "import massgate.drivers.opcua.client"),
)

_REPORT = """
for line in open("/proc/self/status"):
    if line.startswith("VmRSS:"):
        print(int(line.split()[1]) / 1024)
"""


@dataclass(frozen=True, slots=True)
class Step:
    what: str
    rss_mb: float  # with this part and every one before it
    added_mb: float


def footprint() -> list[Step]:
    steps: list[Step] = []
    with tempfile.TemporaryDirectory(prefix="massgate-footprint-") as cache:
        env = {"NUMBA_CACHE_DIR": str(Path(cache))}
        # The numba cache warm first, as the service finds it.
        _run("from massgate.agent.bench.totalizer import warm_cache; warm_cache()", env)
        code: list[str] = []
        before = 0.0
        for what, line in STEPS:
            code.append(line)
            rss = _run("\n".join([*code, _REPORT]), env)
            steps.append(Step(what, rss, rss - before if steps else rss))
            before = rss
    return steps


def _run(code: str, env: dict[str, str]) -> float:
    done = subprocess.run(
        [sys.executable, "-c", code],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=600,
        check=True,
    )
    lines = done.stdout.strip().splitlines()
    return float(lines[-1]) if lines else 0.0


def render(steps: list[Step]) -> str:
    lines = [
        "massgate bench footprint: resident memory of a fresh interpreter, one part added at a "
        "time (numba's kernels from a warm cache)",
        f"{'part':<50}{'adds MB':>9}{'total MB':>10}",
    ]
    lines += [f"{s.what:<50}{s.added_mb:>9.1f}{s.rss_mb:>10.1f}" for s in steps]
    return "\n".join(lines)
