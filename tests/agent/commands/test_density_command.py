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


NATURAL_GAS = "methane=0.9,ethane=0.05,propane=0.02,nitrogen=0.02,carbon_dioxide=0.01"


@pytest.mark.parametrize("model", ["gerg2008", "detail", "virial", "ideal"])
def test_gas_gives_what_the_agent_computes_at_line_and_standard_conditions(model, capsys):
    from massgate.agent.totalize import gas

    if model in gas.AGA8_EQUATIONS:
        pytest.importorskip("pyaga8", reason="no pyaga8 wheel for this machine")
    got = _json(
        ["gas", "--model", model, "--composition", NATURAL_GAS,
         "--temperature", "15 degC", "--pressure", "70 bar"],
        capsys,
    )  # fmt: skip
    equation = gas.Gas(model, gas.Composition.from_text(NATURAL_GAS))
    line = equation.state(288.15, 70e5)  # absolute, as gas standards state it
    standard = equation.state(288.15, 101325.0)
    assert got["density"] == pytest.approx(line.density, rel=1e-12)
    assert got["z"] == pytest.approx(line.z, rel=1e-12)
    assert got["molar_mass"] == pytest.approx(line.molar_mass, rel=1e-12)
    assert got["standard_density"] == pytest.approx(standard.density, rel=1e-12)
    assert got["standard_z"] == pytest.approx(standard.z, rel=1e-12)
    assert got["composition"]["methane"] == pytest.approx(0.9)
    if model == "virial":  # 70 bar is beyond what a second virial coefficient describes
        assert got["flags"] == ["virial: Z outside its range (Tr 1.44 < 1 or Pr 1.52 > Tr/2)"]
    else:
        assert got["flags"] == []


def test_gas_flags_each_range_it_leaves_one_per_line(capsys):
    pytest.importorskip("pyaga8", reason="no pyaga8 wheel for this machine")
    assert (
        main(["density", "gas", "--model", "detail", "--composition",
              "methane=0.94,oxygen=0.01,argon=0.05", "--temperature", "100 degC",
              "--pressure", "150 bar"])
        == 0
    )  # fmt: skip
    out = capsys.readouterr().out
    for line in (
        "Z                                       0.",
        "molar mass, g/mol                       17.3978",
        "flag: detail: temperature 373.15 K outside region 1 (0.1 %) (265.15..335.15 K)",
        "flag: detail: pressure 15.000 MPa above region 1 (0.1 %) (up to 12 MPa)",
        "flag: detail: composition outside the normal range: argon 5 mol% (normal: 0..0), "
        "oxygen 1 mol% (normal: 0..0)",
    ):
        assert line in out, out
    assert "flag: at standard conditions" not in out  # the composition's flag is said once


def test_gas_where_no_density_is_found_gives_null_and_says_why(capsys):
    pytest.importorskip("pyaga8", reason="no pyaga8 wheel for this machine")
    got = _json(
        ["gas", "--model", "detail", "--composition", "methane=1",
         "--temperature", "100 K", "--pressure", "1000 bar"],
        capsys,
    )  # fmt: skip
    assert got["density"] is None
    assert got["z"] is None
    assert got["flags"][0] == "detail: no density found at these conditions"
