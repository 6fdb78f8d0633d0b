"""Density models chosen in the configuration reach the totalizer: volume × ρ(T, P) by the
model named, pressure read from its tag, out-of-range inputs counted, bad keys refused."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from massgate.agent import config as config_module
from massgate.agent.core.yamlsource import ConfigError
from massgate.agent.totalize import density, gas
from massgate.agent.totalize.streams import StreamTotal

HEAD = """\
gateway: {site: a, id: b, state_dir: state}
devices:
  - {name: fm, protocol: modbus_tcp, host: 127.0.0.1, profile: magmeter}
  - {name: tt, protocol: modbus_tcp, host: 127.0.0.1, port: 5021, profile: temperature_tx}
  - {name: pt, protocol: modbus_tcp, host: 127.0.0.1, port: 5022, profile: pressure_tx}
streams:
  - name: s
    volume_flow: fm.volume_flow
    accuracy: 0.5 %
    density:
"""


def _stream(tmp_path: Path, density_yaml: str) -> StreamTotal:
    path = tmp_path / "c.yaml"
    path.write_text(HEAD + "".join(f"      {line}\n" for line in density_yaml.splitlines()))
    config = config_module.load(path)
    return StreamTotal(config.streams[0])


def _run(stream: StreamTotal, *, temperature: float, pressure: float, seconds: int = 10) -> None:
    for t in range(seconds + 1):
        stream.add(float(t), 1e9 + t, 0.001, temperature, pressure)  # 1 L/s
    stream.integrate()


def test_water_model_uses_temperature_and_gauge_pressure(tmp_path: Path):
    stream = _stream(tmp_path, "model: water\ntemperature: tt.temperature\npressure: pt.pressure")
    _run(stream, temperature=323.15, pressure=5e5)
    expected = 0.01 * density.water(323.15, 5e5 + 101325.0).value
    assert stream.net == pytest.approx(expected, rel=1e-12)
    assert stream.density_flags == {}


def test_api_model_from_a_15_c_base_density_and_flags_out_of_range(tmp_path: Path):
    stream = _stream(
        tmp_path,
        "model: api\ncommodity: refined\nbase: 15C\nbase_density: 835 kg/m3\n"
        "temperature: tt.temperature\npressure: pt.pressure",
    )
    _run(stream, temperature=313.15, pressure=10e5)
    rho = density.api_density(835.0, 313.15, 10e5, commodity="refined", base="15C").value
    assert stream.net == pytest.approx(0.01 * rho, rel=1e-12)
    _run(stream, temperature=433.15, pressure=10e5)  # 320 °F: beyond the standard's range
    (flag,) = stream.density_flags
    assert "temperature 320.0 °F outside" in flag


def test_gas_with_a_fixed_z_and_with_the_virial_model(tmp_path: Path):
    fixed = _stream(
        tmp_path,
        "model: gas\nmolar_mass: 16.043 g/mol\nz: 0.95\ntemperature: tt.temperature\n"
        "pressure: pt.pressure",
    )
    _run(fixed, temperature=288.15, pressure=20e5)
    ideal = density.gas(288.15, 20e5 + 101325.0, molar_mass=0.016043, z=0.95).value
    assert fixed.net == pytest.approx(0.01 * ideal, rel=1e-12)
    virial = _stream(
        tmp_path,
        "model: gas\nmolar_mass: 16.043 g/mol\ncritical_temperature: 190.564 K\n"
        "critical_pressure: 45.992 bar\nacentric_factor: 0.01142\n"
        "temperature: tt.temperature\npressure: pt.pressure\npressure_absolute: true",
    )
    _run(virial, temperature=288.15, pressure=20e5)
    rho = density.gas_virial(
        288.15,
        20e5,
        molar_mass=0.016043,
        critical_temperature=190.564,
        critical_pressure=45.992e5,
        acentric_factor=0.01142,
    ).value
    assert virial.net == pytest.approx(0.01 * rho, rel=1e-12)


def test_quadratic_and_a_missing_pressure_sample_gives_no_mass(tmp_path: Path):
    stream = _stream(
        tmp_path,
        "model: quadratic\nreference: 870 kg/m3\nat: 15 degC\nexpansion: 7e-4 1/K\n"
        "expansion2: 1e-6\ntemperature: tt.temperature",
    )
    _run(stream, temperature=308.15, pressure=np.nan)  # no pressure tag: not needed
    rho = 870.0 / (1 + 7e-4 * 20 + 1e-6 * 400)
    assert stream.net == pytest.approx(0.01 * rho, rel=1e-12)
    water = _stream(tmp_path, "model: water\ntemperature: tt.temperature\npressure: pt.pressure")
    _run(water, temperature=300.0, pressure=np.nan)  # the pressure tag went bad
    assert water.net == 0.0


@pytest.mark.parametrize(
    ("density_yaml", "message"),
    [
        ("model: api\ntemperature: tt.temperature", "'base_density' is required"),
        ("model: api\nbase_density: 850 kg/m3\ncommodity: diesel\ntemperature: tt.temperature",
         "'diesel' is not one of crude"),
        ("model: gas\nmolar_mass: 16 kg\nz: 1.0\ntemperature: tt.temperature",
         "expected a molar mass such as '16.04 g/mol'"),
        ("model: gas\nmolar_mass: 16 g/mol\ntemperature: tt.temperature",
         "'critical_temperature' is required"),
        ("model: water\ntemperature: tt.temperature\npressure: tt.temperature",
         "but a pressure is needed here"),
        ("model: watr\ntemperature: tt.temperature", "Did you mean 'water'?"),
    ],
)  # fmt: skip
def test_bad_density_settings_are_refused_by_line(tmp_path: Path, density_yaml: str, message: str):
    with pytest.raises(ConfigError) as caught:
        _stream(tmp_path, density_yaml)
    assert message in str(caught.value)
    assert "c.yaml:1" in str(caught.value)


GAS = (
    "model: gas\nequation: EQUATION\ntemperature: tt.temperature\npressure: pt.pressure\n"
    "composition: {methane: 0.9, ethane: 0.05, propane: 2 %, nitrogen: 0.02, carbon_dioxide: 0.01}"
)


@pytest.mark.parametrize("equation", ["gerg2008", "detail", "virial", "ideal"])
def test_a_gas_by_composition_is_weighed_by_its_equation_at_line_and_base(
    tmp_path: Path, equation: str
):
    if equation in gas.AGA8_EQUATIONS:
        pytest.importorskip("pyaga8", reason="no pyaga8 wheel for this machine")
    stream = _stream(tmp_path, GAS.replace("EQUATION", equation))
    _run(stream, temperature=288.15, pressure=20e5)  # gauge, as the pressure tag gives it
    composition = gas.Composition.parse(
        {"methane": 0.9, "ethane": 0.05, "propane": 0.02, "nitrogen": 0.02, "carbon_dioxide": 0.01}
    )
    line = gas.Gas(equation, composition).state(288.15, 20e5 + 101325.0)
    assert stream.net == pytest.approx(0.01 * line.density, rel=1e-12)
    assert stream.density_flags == {}
    model = stream.config.density
    assert model is not None
    # The standard volume's density: 15 °C and 1 atm, with Z from the same equation.
    base = gas.Gas(equation, composition).state(288.15, 101325.0)
    assert model.standard_density == pytest.approx(base.density, rel=1e-12)
    if equation != "ideal":
        assert base.z < 0.999  # not the ideal gas's
    _run(stream, temperature=500.0, pressure=20e5)
    if equation in gas.AGA8_EQUATIONS:
        assert list(stream.density_flags) == [
            "gerg2008: temperature 500.00 K outside the normal range (90..450 K)"
            if equation == "gerg2008"
            else "detail: temperature 500.00 K outside region 1 (0.1 %) (265.15..335.15 K)"
        ]


def test_an_equation_without_composition_and_a_molar_mass_beside_one_are_refused(tmp_path):
    with pytest.raises(ConfigError) as caught:
        _stream(tmp_path, "model: gas\nequation: virial\ntemperature: tt.temperature")
    assert "'composition' is required" in str(caught.value)
    with pytest.raises(ConfigError) as caught:
        _stream(tmp_path, GAS.replace("EQUATION", "ideal") + "\nmolar_mass: 17 g/mol")
    assert (
        "molar_mass: a gas given by its composition takes this from its equation: remove it"
        in str(caught.value)
    )


@pytest.mark.parametrize(
    ("composition", "message"),
    [
        ("{methane: 0.9, ethane: 0.05}", "the mole fractions sum to 0.95, not 1 (within 0.0001)"),
        ("{methane: 0.9, ethan: 0.1}", "unknown component 'ethan'. Did you mean 'ethane'?"),
        ("{methane: 90 kg}", "methane: 'kg' is a mass unit, but a fraction is expected"),
        (
            "methane",
            "no device 'methane' to analyze the gas. (a fixed composition is a "
            "mapping: {methane: 1.0})",
        ),
        ("[methane]", "expected a mapping of AGA8 component names to mole fractions"),
        ("{}", "expected a mapping of AGA8 component names to mole fractions"),
    ],
)
def test_a_composition_that_is_no_gas_is_refused_at_its_line(
    tmp_path: Path, composition: str, message: str
):
    with pytest.raises(ConfigError) as caught:
        _stream(
            tmp_path,
            "model: gas\nequation: virial\ntemperature: tt.temperature\n"
            f"composition: {composition}",
        )
    assert message in str(caught.value)
    assert "streams[0].density" in str(caught.value)


def test_without_pyaga8_an_aga8_equation_is_refused_by_check_not_at_run_time(
    tmp_path: Path, monkeypatch
):
    monkeypatch.setitem(sys.modules, "pyaga8", None)  # as on a machine without its wheel
    with pytest.raises(ConfigError) as caught:
        _stream(tmp_path, GAS.replace("EQUATION", "gerg2008"))
    assert "density.equation: the AGA8 equations need the pyaga8 package" in str(caught.value)
    assert "install massgate[aga8]" in str(caught.value)
    _stream(tmp_path, GAS.replace("EQUATION", "virial"))  # needs nothing more


def test_a_sample_where_the_equation_finds_no_density_gives_no_mass_and_is_counted(tmp_path):
    pytest.importorskip("pyaga8", reason="no pyaga8 wheel for this machine")
    stream = _stream(tmp_path, GAS.replace("EQUATION", "detail"))
    _run(stream, temperature=100.0, pressure=1000e5)
    assert stream.net == 0.0
    (flag,) = stream.density_flags
    assert flag.startswith("detail: no density found at these conditions; ")
