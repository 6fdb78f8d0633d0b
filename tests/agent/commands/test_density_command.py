"""`massgate density`: the agent's density models from the command line, for checking a flow
computer or a vendor's sheet; held against the library functions the agent itself uses."""

from __future__ import annotations

import json

import pytest

from massgate.agent.commands.cli import main
from massgate.agent.totalize import density

PSI = density.PSI


def _json(argv: list[str], capsys: pytest.CaptureFixture[str]) -> dict:
    assert main(["density", *argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_api_gives_what_the_agent_computes(capsys):
    got = _json(
        ["api", "--commodity", "crude", "--base-density", "850 kg/m3",
         "--temperature", "100 degF", "--pressure", "500 psi"],
        capsys,
    )  # fmt: skip
    t = (100.0 - 32.0) / 1.8 + 273.15
    ctl, cpl, flag = density.ctl_cpl_60(850.0, t, 500 * PSI, commodity="crude")
    assert flag is None
    assert got["flags"] == []
    assert got["ctl"] == pytest.approx(ctl, rel=1e-12)
    assert got["cpl"] == pytest.approx(cpl, rel=1e-12)
    assert got["ctpl"] == pytest.approx(ctl * cpl, rel=1e-12)
    assert got["density"] == pytest.approx(
        density.api_density(850.0, t, 500 * PSI, commodity="crude").value, rel=1e-12
    )


def test_api_at_a_negative_gauge_pressure_follows_the_standard(capsys):
    """API 11.1's Example 3: fuel oil at −7.3 psig has CPL 1.000000."""
    got = _json(
        ["api", "--commodity", "fuel_oil", "--base-density", "0.9 kg/L",
         "--temperature", "100 degF", "--pressure", "-7.3 psi"],
        capsys,
    )  # fmt: skip
    assert f"{got['cpl']:.6f}" == "1.000000"
    assert got["flags"] == ["API 11.1: pressure -7.3 psig below 0 psig, taken as 0 psig"]


def test_api_from_a_15_c_base_and_a_special_product(capsys):
    got = _json(
        ["api", "--commodity", "special", "--alpha60", "4.5e-4 1/degF", "--base", "15C",
         "--base-density", "850 kg/m3", "--temperature", "15 degC"],
        capsys,
    )  # fmt: skip
    assert got["density"] == pytest.approx(850.0, rel=1e-9)  # at its own base: itself
    assert got["density_60f"] < 850.0  # 60 °F is warmer than 15 °C: lighter


def test_water_takes_gauge_pressure_and_flags_boiling(capsys):
    got = _json(["water", "--temperature", "60 degC", "--pressure", "5 bar"], capsys)
    assert got["density"] == pytest.approx(density.water(333.15, 6.01325e5).value, rel=1e-12)
    assert got["flags"] == []
    boiling = _json(["water", "--temperature", "100 degC", "--pressure", "0 bar"], capsys)
    assert boiling["flags"] == ["water: below the saturation pressure: the water boils"]
    low = _json(["water", "--temperature", "20 degC", "--pressure", "-0.5 bar"], capsys)
    assert low["flags"] == ["water: pressure 0.51 bar outside 1..100 bar (absolute)"]


def test_the_table_says_each_figure(capsys):
    assert (
        main(["density", "api", "--commodity", "jet", "--base-density", "800 kg/m3",
              "--temperature", "-70 degF"])
        == 0
    )  # fmt: skip
    out = capsys.readouterr().out
    for label in ("density, kg/m3", "CTL", "CPL", "CTPL", "flag: API 11.1: temperature"):
        assert label in out
