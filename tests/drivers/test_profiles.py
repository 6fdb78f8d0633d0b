"""Every shipped profile is valid, documented, and readable by the configuration loader."""

from __future__ import annotations

from pathlib import Path

import pytest

from massgate.drivers import profiles
from massgate.drivers.modbus import codec
from massgate.drivers.modbus.model import TABLES
from tests.drivers.modbus.test_modbus import devices_from

README = Path(profiles.__file__).with_name("README.md").read_text(encoding="utf-8")


@pytest.mark.parametrize("name", profiles.names())
def test_profile_is_documented_point_by_point(name: str):
    profile = profiles.load(name)
    assert profile.description
    assert f"## `{name}`" in README
    for p in profile.points:
        address = f"{p.address}" + (f" bit {p.bit}" if p.bit is not None else "")
        row = f"| `{p.name}` | {p.table} | {address} | {p.type} | {p.order} | {p.unit} |"
        assert row in README, f"{name}.{p.name} is not documented as {row}"
        assert p.description


@pytest.mark.parametrize("name", profiles.names())
def test_profile_loads_into_a_device(name: str, tmp_path: Path):
    profile = profiles.load(name)
    assert all(p.table in TABLES for p in profile.points)
    assert all(p.type in codec.TYPES for p in profile.points)
    (device,) = devices_from(
        [{"name": "d", "protocol": "modbus_tcp", "host": "127.0.0.1", "profile": name}],
        tmp_path,
    )
    assert len(device.points) == len(profile.points)
