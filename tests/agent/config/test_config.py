"""Configuration: the example validates, broken files name file, line and path."""

from __future__ import annotations

import argparse
import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from massgate.agent import config as config_module
from massgate.agent.commands.cli import build_parser
from massgate.agent.core.yamlsource import ConfigError
from massgate.drivers.modbus.model import ModbusDevice, SerialLink, TcpLink
from massgate.drivers.opcua.model import OpcUaDevice

ROOT = Path(__file__).resolve().parents[3]
CASES = sorted(p for p in (Path(__file__).parent / "cases").iterdir() if p.is_dir())


@pytest.fixture
def example(pki, tmp_path: Path) -> Path:
    """config.example.yaml as installed: its CA file and state directory exist.

    `check` opens the files a configuration names, so the example is checked with a real CA
    where it names /etc/massgate/ca.pem, and a temporary state directory.
    """
    text = (ROOT / "config.example.yaml").read_text(encoding="utf-8")
    assert "/etc/massgate/ca.pem" in text
    assert "state_dir: /var/lib/massgate" in text
    text = text.replace("/etc/massgate/ca.pem", str(pki.ca))
    text = text.replace("state_dir: /var/lib/massgate", f"state_dir: {tmp_path / 'state'}")
    path = tmp_path / "massgate.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def test_example_validates_and_converts_units(example: Path):
    config = config_module.load(example)
    names = [d.name for d in config.devices]
    assert names == ["ft101", "ft102", "tt102", "lt100", "wt100", "ft103", "plc"]
    ft101 = config.devices[0]
    assert isinstance(ft101, ModbusDevice)
    assert ft101.poll_interval == 0.5
    mass_flow = next(p for p in ft101.points if p.tag == "ft101.mass_flow")
    assert mass_flow.factor == pytest.approx(1 / 3600)  # kg/h → kg/s
    level = next(p for p in config.devices[3].points if p.tag == "lt100.level")
    assert (level.table, level.type, level.factor) == ("input", "uint16", pytest.approx(1e-3))
    high_alarm = next(p for p in config.devices[3].points if p.tag == "lt100.high_alarm")
    assert (high_alarm.bit, high_alarm.type, high_alarm.unit) == (0, "uint16", "flag")
    wt100, ft103, plc = config.devices[4:]
    assert isinstance(wt100, ModbusDevice)
    assert isinstance(wt100.link, SerialLink)
    assert (wt100.link.baudrate, wt100.link.parity, wt100.unit_id) == (19200, "E", 7)
    assert isinstance(ft103, ModbusDevice)
    assert isinstance(ft103.link, TcpLink)
    assert ft103.link.framing == "rtu"
    overridden = next(p for p in ft103.points if p.tag == "ft103.mass_flow")
    assert (overridden.order, overridden.factor) == ("CDAB", pytest.approx(1 / 3600))
    assert len(ft103.points) == 9  # the profile's nine (five values, four flags), one replaced
    assert isinstance(plc, OpcUaDevice)
    assert plc.points[0].node_id == "ns=3;s=FIC201.PV"
    node = config.nodes[0]
    assert (node.window, node.persistence, node.tolerance_relative) == (900.0, 300.0, 0.005)
    streams = {s.name: s for s in config.streams}
    product = streams["product"]
    assert product.density is not None
    assert product.density.reference_temperature == pytest.approx(293.15)
    assert streams["feed_register"].max_flow == pytest.approx(60_000 / 3600)  # 60 t/h in kg/s
    assert streams["feed_register"].rollover == math.inf  # a float64 register
    assert config.mqtt is not None
    assert config.mqtt.brokers[0].tls
    assert config.mqtt.brokers[0].port == 8883


BROKEN = [c for c in CASES if (c / "error.txt").exists()]
VALID = [c for c in CASES if (c / "expected.json").exists()]


def test_the_corpus_is_complete():
    assert len(BROKEN) >= 60
    assert sorted(BROKEN + VALID) == CASES, "each case has error.txt or expected.json"


def _case_dir(case: Path, tmp_path: Path) -> Path:
    """The case with the files beside it, as a user's directory: paths are relative to it."""
    target = tmp_path / "c"  # short: the status socket's path has at most 107 bytes
    shutil.copytree(case, target)
    return target / "config.yaml"


@pytest.mark.parametrize("case", BROKEN, ids=[c.name for c in BROKEN])
def test_broken_files_report_file_line_and_path(case: Path, tmp_path: Path):
    target = _case_dir(case, tmp_path)
    with pytest.raises(ConfigError) as info:
        config_module.load(target)
    got = [str(p).replace(str(target.parent) + "/", "") for p in info.value.problems]
    expected = (case / "error.txt").read_text(encoding="utf-8").strip().splitlines()
    for line in expected:
        assert any(g.startswith(line) for g in got), f"missing {line!r} in {got}"
    assert len(got) == len(expected), got


def _attribute(config: object, path: str) -> object:
    """`devices[1].link.port` of the loaded configuration."""
    value = config
    for part in path.split("."):
        name, _, index = part.partition("[")
        value = getattr(value, name)
        if index:
            value = value[int(index.rstrip("]"))]  # type: ignore[index]
    return value


@pytest.mark.parametrize("case", VALID, ids=[c.name for c in VALID])
def test_valid_edge_cases_load(case: Path, tmp_path: Path):
    config = config_module.load(_case_dir(case, tmp_path))
    for path, wanted in json.loads((case / "expected.json").read_text()).items():
        got = _attribute(config, path)
        assert got == pytest.approx(wanted) if isinstance(wanted, float) else got == wanted, path


def _massgate(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "massgate.agent.commands.cli", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_check_command_accepts_the_example(example: Path):
    result = _massgate("check", str(example))
    assert result.returncode == 0, result.stderr
    assert "OK: 7 devices" in result.stdout


def test_check_command_rejects_a_broken_file_with_file_line(tmp_path: Path):
    bad = tmp_path / "site.yaml"
    shutil.copy(CASES[0].parent / "unknown_key" / "config.yaml", bad)
    result = _massgate("check", str(bad))
    assert result.returncode == 2
    assert f"{bad}:7: devices[0].pol_interval: unknown key" in result.stderr
    assert "nothing was started" in result.stderr


def test_check_command_on_a_missing_file():
    result = _massgate("check", "/nonexistent/massgate.yaml")
    assert result.returncode == 2
    assert "/nonexistent/massgate.yaml:0: no such file" in result.stderr


def _commands() -> list[str]:
    """Every command the parser knows, so that a new one cannot miss this test."""
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return sorted(sub.choices)


def test_the_command_list_is_the_documented_one():
    assert set(_commands()) == {
        *("check", "run", "status", "sim", "demo", "probe", "scan", "bench"),
        *("reconcile", "report", "ingest", "density", "batch", "enter"),
    }


@pytest.mark.parametrize("command", _commands())
def test_every_command_has_help(command: str):
    result = _massgate(command, "--help")
    assert result.returncode == 0
    assert "usage: massgate " + command in result.stdout
