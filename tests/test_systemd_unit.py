"""The unit files: valid to systemd, hardened to an exposure of 2.0 or less, and saying what
the agent does (notify, watchdog, reload through a check, a stop longer than the drain) and
what the ingest does."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from massgate.agent.runtime.pipeline import GRACEFUL_TIMEOUT

UNIT = Path(__file__).resolve().parents[1] / "systemd" / "massgate.service"
INGEST = UNIT.parent / "massgate-ingest.service"
TARGET = 2.0


def _analyze(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["systemd-analyze", *args], capture_output=True, text=True, timeout=60, check=False
    )


def _service(unit: Path = UNIT) -> dict[str, list[str]]:
    """[Service] keys with every value: systemd repeats keys, which configparser refuses."""
    values: dict[str, list[str]] = {}
    section = None
    for raw in unit.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("["):
            section = line
            continue
        if section == "[Service]":
            key, _, value = line.partition("=")
            values.setdefault(key, []).append(value)
    return values


@pytest.mark.parametrize("unit", [UNIT, INGEST], ids=lambda u: u.name)
def test_exposure_is_at_most_two(unit: Path):
    result = _analyze("security", "--offline=yes", str(unit))
    found = re.search(
        rf"Overall exposure level for {re.escape(unit.name)}: (\d+\.\d+)", result.stdout
    )
    assert found, result.stdout + result.stderr
    exposure = float(found.group(1))
    assert exposure <= TARGET, result.stdout


@pytest.mark.parametrize("source", [UNIT, INGEST], ids=lambda u: u.name)
def test_systemd_accepts_every_line(tmp_path: Path, source: Path):
    # verify insists that the binaries exist: point them at a stand-in.
    stand_in = tmp_path / "massgate"
    stand_in.write_text("#!/bin/sh\n")
    stand_in.chmod(0o755)
    unit = tmp_path / source.name
    unit.write_text(source.read_text().replace("/opt/massgate/bin/massgate", str(stand_in)))
    result = _analyze("verify", "--man=no", str(unit))
    assert result.returncode == 0, result.stderr
    assert result.stderr == "", result.stderr  # unknown keys are only warned about


def test_the_unit_says_what_the_agent_does():
    service = _service()
    assert service["Type"] == ["notify"]
    assert service["Restart"] == ["on-failure"]
    assert service["WatchdogSec"]
    reload = service["ExecReload"]
    assert reload[0].endswith("massgate check /etc/massgate/massgate.yaml")
    assert reload[1] == "/bin/kill -HUP $MAINPID"
    stop = float(service["TimeoutStopSec"][0].rstrip("s"))
    assert stop > GRACEFUL_TIMEOUT + 5  # the drain, then polling's end and the last commit
    assert service["User"] == ["massgate"]
    assert "dialout" in service["SupplementaryGroups"][0]
    assert service["Environment"] == ["NUMBA_CACHE_DIR=/var/cache/massgate/numba"]
    for key in ("StateDirectory", "CacheDirectory", "ConfigurationDirectory"):
        assert service[key] == ["massgate"]
    assert len(service["DeviceAllow"]) >= 2


def test_the_ingest_unit_says_what_the_ingest_does():
    service = _service(INGEST)
    assert service["ExecStart"] == [
        "/opt/massgate/bin/massgate ingest run /etc/massgate/ingest.yaml"
    ]
    assert service["Restart"] == ["on-failure"]
    assert service["KillSignal"] == ["SIGTERM"]  # the batch in hand is acknowledged first
    assert service["DynamicUser"] == ["yes"]
    assert service["MemoryDenyWriteExecute"] == ["yes"]  # no JIT in the ingest
    assert "DeviceAllow" not in service
