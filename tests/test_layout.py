"""The layout's boundaries (DESIGN.md, "Boundaries that matter"), held by reading the imports.

- drivers/ imports nothing of agent/ but agent/core;
- no module outside agent/commands and agent/bench imports a command or a benchmark;
- agent/ imports no protocol library (pymodbus, pyserial, asyncua): protocols are drivers';
- `massgate run` and `massgate check` load nothing of the simulator, the benchmarks or
  pymodbus's server, and `check` nothing that talks to a device or a broker.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PROTOCOL_LIBRARIES = ("pymodbus", "serial", "asyncua")


def _module(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return "massgate." + ".".join(parts)


def _imports(path: Path) -> set[str]:
    """Every module `path` imports, relative imports resolved, `from x import y` as x.y too."""
    here = _module(path)
    package = here if path.name == "__init__.py" else here.rsplit(".", 1)[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                module = ".".join([*base, *([node.module] if node.module else [])])
            else:
                module = node.module or ""
            found.add(module)
            found.update(f"{module}.{alias.name}" for alias in node.names)
    return found


def _sources(top: str) -> list[Path]:
    return sorted((ROOT / top).rglob("*.py"))


@pytest.mark.parametrize("path", _sources("drivers"), ids=lambda p: str(p.relative_to(ROOT)))
def test_drivers_import_only_agent_core(path: Path):
    reaching = sorted(
        m
        for m in _imports(path)
        if m.startswith("massgate.agent") and not m.startswith("massgate.agent.core")
    )
    assert not reaching, f"{path.relative_to(ROOT)} imports {reaching}: only agent.core"


@pytest.mark.parametrize("path", _sources("agent"), ids=lambda p: str(p.relative_to(ROOT)))
def test_only_commands_and_benchmarks_import_commands_and_benchmarks(path: Path):
    own = _module(path)
    if own.startswith(("massgate.agent.commands", "massgate.agent.bench")):
        return
    reaching = sorted(
        m
        for m in _imports(path)
        if m.startswith(("massgate.agent.commands", "massgate.agent.bench"))
    )
    assert not reaching, f"{path.relative_to(ROOT)} imports {reaching}"


@pytest.mark.parametrize("path", _sources("agent"), ids=lambda p: str(p.relative_to(ROOT)))
def test_agent_imports_no_protocol_library(path: Path):
    libraries = sorted(m for m in _imports(path) if m.split(".")[0] in PROTOCOL_LIBRARIES)
    assert not libraries, f"{path.relative_to(ROOT)} imports {libraries}: that is a driver's job"


def _loaded_by(command: str, config: Path) -> set[str]:
    """The modules a fresh interpreter holds once `command` has its parser and its config."""
    script = (
        "import sys\n"
        "from massgate.agent.commands.cli import build_parser\n"
        f"build_parser({command!r})\n"
        "from massgate.agent import config\n"
        f"config.load(__import__('pathlib').Path({str(config)!r}))\n"
        + ("import massgate.agent.runtime.pipeline\n" if command == "run" else "")
        + "print('\\n'.join(sorted(sys.modules)))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=True
    )
    return set(done.stdout.split())


@pytest.fixture(scope="module")
def a_config(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A configuration with Modbus and OPC UA devices, streams and a node, and no broker."""
    state = tmp_path_factory.mktemp("state")
    path = state / "massgate.yaml"
    path.write_text(
        f"""\
gateway: {{site: s, id: g, state_dir: {state}}}
devices:
  - {{name: ft1, protocol: modbus_tcp, host: 127.0.0.1, port: 5020, profile: coriolis}}
  - name: plc
    protocol: opcua
    url: opc.tcp://127.0.0.1:4840
    nodes: [{{name: flow, node: "ns=2;s=F", unit: kg/s}}]
streams:
  - {{name: feed, mass_flow: ft1.mass_flow, accuracy: 0.2 %}}
  - {{name: out, mass_flow: plc.flow, accuracy: 0.5 %}}
nodes:
  - {{name: n, inputs: [feed], outputs: [out], window: 1min, persistence: 1min}}
"""
    )
    return path


@pytest.mark.parametrize("command", ["run", "check"])
def test_run_and_check_load_no_simulator_benchmark_or_server(command: str, a_config: Path):
    loaded = _loaded_by(command, a_config)
    unwanted = sorted(
        m
        for m in loaded
        if m.startswith(
            (
                "massgate.drivers.sim",
                "massgate.agent.bench",
                "massgate.agent.commands.sim",
                "massgate.agent.commands.demo",
                "pymodbus.server",
                "sqlite_utils",
            )
        )
    )
    assert not unwanted, f"massgate {command} loads {unwanted}"


def test_check_loads_no_protocol_client_broker_client_or_numba(a_config: Path):
    loaded = _loaded_by("check", a_config)
    unwanted = sorted(
        m for m in loaded if m.split(".")[0] in (*PROTOCOL_LIBRARIES, "paho", "numba")
    )
    assert not unwanted, f"massgate check loads {unwanted}"
