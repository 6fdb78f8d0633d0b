"""The simulated plant from a YAML file: mass conserved in every vessel, flows and leaks equal
to their integrals, faults from the file's schedule, the same readings from the same seed,
and a clear error for every broken plant file."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from massgate.agent.core.yamlsource import ConfigError
from massgate.drivers.sim import plantspec
from massgate.drivers.sim.plant import Plant

PLANT = """\
seed: 3
fluid: {density: 1000 kg/m3, at: 20 degC, expansion: 2e-4 1/K}
temperature: {mean: 25 degC, swing: 3 K, period: 40s}
vessels:
  - {name: T-1, kind: tank, area: 2 m2, level: 1 m}
  - {name: T-2, kind: tank, area: 0.5 m2, level: 0.2 m}
  - {name: H-1, kind: hopper, mass: 200 kg, tare: 120 kg}
lines:
  - {name: fill, from: outside, to: T-1, flow: {mean: 3 kg/s, swing: 20 %, period: 30s}}
  - {name: transfer, from: T-1, to: T-2, flow: {mean: 9 m3/h, swing: 10 %, period: 25s}}
  - {name: drain, from: T-2, to: outside, flow: 1 kg/s}
  - {name: screw, from: outside, to: H-1, flow: 0.5 kg/s}
  - {name: discharge, from: H-1, to: outside, flow: 5 kg/s}
meters:
  - {name: ft1, profile: coriolis, line: fill, accuracy: 0.1 %}
  - {name: ft2, profile: magmeter, line: transfer, accuracy: 0.2 %}
  - {name: lt1, profile: level_radar, vessel: T-1, accuracy: 1 mm}
  - {name: wt1, profile: load_cell, vessel: H-1, accuracy: 0.2 kg}
  - {name: tt1, profile: temperature_tx, vessel: T-1, accuracy: 0.1 K}
faults:
  - {kind: leak, target: transfer, start: 10s, end: 20s, rate: 0.3 kg/s}
  - {kind: leak, target: fill, start: 5s, rate: 0.1 kg/s}
  - {kind: bias, target: lt1, start: 30s, end: 40s, error: 5 %}
  - {kind: alarm, target: ft2, start: 50s, end: 60s, point: coil_fault}
"""


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _plant(text: str = PLANT) -> tuple[Plant, Clock]:
    clock = Clock()
    return Plant(plantspec.loads(text, filename="plant.yaml"), clock=clock), clock


def _integral(mean: float, swing: float, period: float, duration: float) -> float:
    """∫₀ᵀ mean·(1 + swing·sin(2πt/period)) dt."""
    w = 2 * math.pi / period
    return mean * (duration + swing / w * (1 - math.cos(w * duration)))


def test_mass_is_conserved_in_every_vessel_and_flows_match_their_integrals():
    plant, clock = _plant()
    start = plant.truth()
    clock.now += 60.0
    end = plant.truth()
    moved = {k: end.lines[k] - start.lines[k] for k in end.lines}
    leaked = {k: end.leaks[k] - start.leaks[k] for k in end.leaks}
    held = {k: end.vessels[k] - start.vessels[k] for k in end.vessels}

    # Every vessel: what arrived minus what left is what it holds more, to rounding.
    t1 = moved["fill"] - leaked["fill"] - moved["transfer"] - leaked["transfer"]
    assert held["T-1"] == pytest.approx(t1, abs=1e-9)
    assert held["T-2"] == pytest.approx(moved["transfer"] - moved["drain"], abs=1e-9)
    assert held["H-1"] == pytest.approx(moved["screw"] - moved["discharge"], abs=1e-9)

    # The pumps moved what their flow functions integrate to.
    assert moved["fill"] == pytest.approx(_integral(3.0, 0.2, 30.0, 60.0), rel=1e-6)
    volume = end.volumes["transfer"] - start.volumes["transfer"]
    assert volume == pytest.approx(_integral(9 / 3600, 0.1, 25.0, 60.0), rel=1e-6)
    assert moved["drain"] == pytest.approx(60.0, rel=1e-9)

    # Leaks from the file's schedule, unmetered: 0.3 kg/s for 10 s, 0.1 kg/s from 5 s on.
    assert leaked["transfer"] == pytest.approx(3.0, abs=0.3 * 0.01)
    assert leaked["fill"] == pytest.approx(5.5, abs=0.1 * 0.01)

    # The hopper ran dry at about 44 s: the discharge then only passes what the screw brings.
    assert end.vessels["H-1"] >= 0.0
    assert end.vessels["H-1"] < 1e-6
    assert moved["discharge"] == pytest.approx(200.0 + 0.5 * 60.0, rel=1e-6)


def test_readings_follow_the_truth_and_the_scheduled_bias():
    plant, clock = _plant()
    clock.now += 25.0
    rho = plant.density_at(plant.now())
    true_level = plant.mass_in("T-1") / (rho * 2.0)
    assert plant.read("lt1")["level"] == pytest.approx(true_level, abs=0.003)
    weight = plant.read("wt1")
    assert weight["net_weight"] == pytest.approx(plant.mass_in("H-1"), abs=1.0)
    assert weight["gross_weight"] == pytest.approx(weight["net_weight"] + 120.0)
    assert weight["stable"] == 0.0  # emptying at 4.5 kg/s
    mass_flow = plant.read("ft1")["mass_flow"]
    assert mass_flow == pytest.approx(3.0 * (1 + 0.2 * math.sin(2 * math.pi * 25 / 30)), rel=0.01)

    clock.now += 10.0  # t = 35 s: inside the bias window
    true_level = plant.mass_in("T-1") / (plant.density_at(plant.now()) * 2.0)
    values = plant.faults.apply("lt1", plant.now(), plant.read("lt1"))
    assert values["level"] == pytest.approx(1.05 * true_level, abs=0.003)
    clock.now += 10.0  # t = 45 s: the bias has ended
    true_level = plant.mass_in("T-1") / (plant.density_at(plant.now()) * 2.0)
    values = plant.faults.apply("lt1", plant.now(), plant.read("lt1"))
    assert values["level"] == pytest.approx(true_level, abs=0.003)


def test_a_stopped_pump_moves_nothing_and_a_shifted_zero_reads_on_a_still_line():
    """The fill pump stops from 10 s to 30 s; FT-1's zero shifts by 36 kg/h from 20 s; the
    hopper's discharge pump runs dry at about 44 s and its meter reads what it delivers."""
    text = PLANT.replace(
        "faults:\n",
        "  - {name: ft5, profile: coriolis, line: discharge, accuracy: 0.1 %}\n"
        "faults:\n"
        "  - {kind: stop, target: fill, start: 10s, end: 30s}\n"
        "  - {kind: zero, target: ft1, start: 20s, offset: 36 kg/h}\n",
    )
    plant, clock = _plant(text)
    clock.now += 10.0
    before = plant.truth().lines["fill"]
    clock.now += 5.0  # stopped, the zero still right
    assert plant.read("ft1")["mass_flow"] == 0.0
    clock.now += 10.0  # t = 25 s: stopped, the zero shifted
    assert plant.read("ft1")["mass_flow"] == pytest.approx(0.01, abs=1e-12)
    assert plant.truth().lines["fill"] == before  # nothing moved while stopped
    clock.now += 10.0  # t = 35 s: running again, the offset on top of the flow
    flow = 3.0 * (1 + 0.2 * math.sin(2 * math.pi * 35 / 30))
    assert plant.read("ft1")["mass_flow"] == pytest.approx(flow + 0.01, rel=0.003)
    clock.now += 25.0  # t = 60 s: the hopper ran dry at about 44 s
    assert plant.read("ft5")["mass_flow"] == pytest.approx(0.5, rel=0.003)
    assert plant.read("wt1")["stable"] == 1.0  # nothing changes in an empty hopper


def test_the_same_seed_gives_the_same_readings():
    def readings(seed: int) -> list[float]:
        plant, clock = _plant(PLANT.replace("seed: 3", f"seed: {seed}"))
        out = []
        for _ in range(20):
            clock.now += 0.7
            out += [
                plant.read(m.name)[p]
                for m in plant.spec.meters
                for p in ("level", "mass_flow")
                if p in plant.read(m.name)
            ]
        return out

    first = readings(3)
    assert first == readings(3)
    assert first != readings(4)


def test_the_built_in_plant_is_the_shipped_file(tmp_path: Path):
    spec = plantspec.builtin()
    assert [v.name for v in spec.vessels] == ["T-100"]
    assert {m.name for m in spec.meters} == {
        "ft101",
        "lt100",
        "tt102",
        "ft102",
        "wt100",
        "lt101",
        "pt102",
    }
    path = tmp_path / "copy.yaml"
    path.write_text(PLANT)
    assert plantspec.load(path).meter("wt1").vessel == "H-1"


BROKEN = [
    ("seed: 3\n", "seed: three\n", "plant.yaml:1: seed: expected a whole number"),
    ("fluid: {density: 1000 kg/m3,", "fluid: {density: 1000,", "fluid.density: 1000 has no unit"),
    ("area: 2 m2, level: 1 m}", "level: 1 m}", "a tank needs its 'area'"),
    ("kind: hopper, mass: 200 kg", "kind: hopper, level: 1 m", "a hopper is weighed, not gauged"),
    ("to: T-2, flow", "to: T-9, flow", "line 'transfer' runs to or from 'T-9'"),
    ("swing: 20 %, period: 30s", "swing: 120 %, period: 30s", "the pump would run backwards"),
    ("flow: 1 kg/s}", "flow: 1 kg}", "expected a mass flow"),
    ("vessel: H-1, accuracy: 0.2 kg", "vessel: H-1, accuracy: 0.2 %", "'%' is a fraction unit"),
    ("profile: level_radar, vessel: T-1", "profile: level_radar, vessel: H-1", "is a hopper"),
    ("profile: coriolis, line: fill", "profile: coriolis, vessel: T-1", "a coriolis meter sits on"),
    ("profile: magmeter", "profile: magmeter_x", "Did you mean 'magmeter'?"),
    ("target: transfer, start: 10s", "target: ft1, start: 10s", "a leak fault acts on a line"),
    ("start: 30s, end: 40s", "start: 30s, end: 20s", "a fault must end after it starts"),
    ("kind: bias", "kind: biased", "Did you mean 'bias'?"),
    (
        "point: coil_fault",
        "point: coil_falt",
        "'coil_falt' is not an alarm flag of a magmeter meter (its flags: empty_pipe, coil_fault, "
        "electrode_fault, flow_over_range)",
    ),
    (
        "target: ft2, start: 50s",
        "target: tt1, start: 50s",
        "of a temperature_tx meter (its flags: none)",
    ),
    (", point: coil_fault}", "}", "'point' is required"),
    (
        "kind: bias, target: lt1, start: 30s, end: 40s, error: 5 %",
        "kind: slip, target: lt1, start: 30s, end: 40s, slip: 5 %",
        "a belt slips under a belt_scale, not a level_radar meter",
    ),
    ("swing: 3 K", "swing: 3 degC", "write a temperature swing in K"),
    (
        "kind: bias, target: lt1, start: 30s, end: 40s, error: 5 %",
        "kind: zero, target: lt1, start: 30s, end: 40s, offset: 1 kg/h",
        "a zero offset shifts a flow meter (coriolis, magmeter, belt_scale), not a level_radar",
    ),
    (
        "kind: bias, target: lt1, start: 30s, end: 40s, error: 5 %",
        "kind: stop, target: ft1, start: 30s, end: 40s",
        "a stop fault acts on a line; no line is named 'ft1'",
    ),
    ("vessels:", "vessel:", "unknown key 'vessel'. Did you mean 'vessels'?"),
    (
        "meters:\n",
        "meters:\n  - {name: ft1, profile: coriolis, line: fill, accuracy: 1 %}\n",
        "two meters are named 'ft1'",
    ),
]


@pytest.mark.parametrize(("old", "new", "message"), BROKEN, ids=[b[2][:40] for b in BROKEN])
def test_a_broken_plant_file_is_refused_with_file_line_and_reason(old, new, message):
    assert old in PLANT
    with pytest.raises(ConfigError) as caught:
        plantspec.loads(PLANT.replace(old, new, 1), filename="plant.yaml")
    text = str(caught.value)
    assert message in text
    assert text.startswith("plant.yaml:")


def test_malformed_yaml_names_its_line():
    with pytest.raises(ConfigError, match=r"plant.yaml:2: mapping values are not allowed"):
        plantspec.loads("seed: 1\n  fluid: nested: wrong\n", filename="plant.yaml")
