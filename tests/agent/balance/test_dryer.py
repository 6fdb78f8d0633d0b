"""Moisture and dry basis on the simulated plant: a dryer fed with filter cake (25 % water) on a
belt scale, giving dried product (2 % water) on another, a moisture analyzer over each belt.
Dry kilograms against the plant's truth; the solids balance closes on a dry basis while the
wet balance's imbalance is the water evaporated, the figure to explain."""

from __future__ import annotations

from pathlib import Path

import pytest

from massgate.agent import config as config_module
from massgate.agent.core.yamlsource import ConfigError
from tests.agent.balance import plantrun

CAKE = 36_000 / 3600  # kg/s wet
DRY_IN = CAKE * 0.75
PRODUCT = DRY_IN / 0.98  # kg/s wet, 2 % water
EVAPORATED = CAKE - PRODUCT  # kg/s of water leaving as vapour, unmetered
PLANT = f"""\
description: dryer D-1 between two belt conveyors
seed: 5
fluid: {{density: 1200 kg/m3, at: 20 degC, expansion: 0 1/K}}
temperature: {{mean: 40 degC}}
vessels:
  - {{name: D-1, kind: hopper, mass: 3 t}}
lines:
  - {{name: cake, from: outside, to: D-1, flow: {{mean: 36 t/h, swing: 5 %, period: 90s}},
     moisture: 25 %}}
  - {{name: dried, from: D-1, to: outside, flow: {PRODUCT} kg/s, moisture: 2 %}}
meters:
  - {{name: wf1, profile: belt_scale, line: cake, accuracy: 0.5 %}}
  - {{name: ma1, profile: moisture_analyzer, line: cake, accuracy: 0.5 %}}
  - {{name: wf2, profile: belt_scale, line: dried, accuracy: 0.5 %}}
  - {{name: ma2, profile: moisture_analyzer, line: dried, accuracy: 0.2 %}}
faults:
  - {{kind: leak, target: dried, rate: {EVAPORATED} kg/s}}
"""
NODE = (
    "window: 30 min, evaluate_every: 1 min, tolerance: {relative: 0.5 %, sigma: 3}, "
    "persistence: 10 min, clear_after: 10 min"
)
CONFIG = f"""\
gateway: {{site: s, id: g, state_dir: state}}
devices:
  - {{name: wf1, protocol: modbus_tcp, host: 127.0.0.1, port: 5020, profile: belt_scale}}
  - {{name: ma1, protocol: modbus_tcp, host: 127.0.0.1, port: 5021, profile: moisture_analyzer}}
  - {{name: wf2, protocol: modbus_tcp, host: 127.0.0.1, port: 5022, profile: belt_scale}}
  - {{name: ma2, protocol: modbus_tcp, host: 127.0.0.1, port: 5023, profile: moisture_analyzer}}
streams:
  - {{name: cake, belt: {{load: wf1.load, speed: wf1.speed}}, moisture: ma1.moisture,
     accuracy: 0.5 %}}
  - {{name: dried, belt: {{load: wf2.load, speed: wf2.speed}}, moisture: ma2.moisture,
     accuracy: 0.5 %}}
nodes:
  - {{name: solids, basis: dry, inputs: [cake], outputs: [dried], {NODE}}}
  - {{name: dryer, inputs: [cake], outputs: [dried], {NODE}}}
"""
HOUR = 3600.0


@pytest.fixture
def run(tmp_path: Path):
    with plantrun.running(tmp_path, CONFIG, PLANT) as started:
        yield started


def test_dry_kilograms_and_the_solids_balance_close_while_the_water_is_the_wet_imbalance(
    run: plantrun.PlantRun,
):
    run.run_for(2 * HOUR)
    plant, gw = run.plant, run.gateway
    lines = [x.name for x in plant.spec.lines]
    for stream, moisture in (("cake", 0.25), ("dried", 0.02)):
        wet_truth = plant.line_mass[lines.index(stream)]
        assert gw.streams[stream].net == pytest.approx(wet_truth, rel=2e-3), stream
        assert gw.dry[stream].net == pytest.approx(wet_truth * (1 - moisture), rel=2e-3), stream
    # The solids balance closes on a dry basis: every judged window ok, no alarm.
    solids = [b for b in run.of("balance") if b["node"] == "solids"]
    judged = [b for b in solids if b["status"] != "inconclusive"]
    assert len(judged) >= 60
    assert all(b["status"] == "ok" for b in judged)
    # Wet, the same dryer loses the water it evaporates: its alarm says how much.
    raised = [a for a in run.of("alarm") if a["event"] == "raised"]
    assert [a["node"] for a in raised] == ["dryer"]
    assert raised[0]["balance"]["imbalance_kg"] == pytest.approx(EVAPORATED * 1800, rel=0.05)
    assert "mass is missing" in raised[0]["hint"]
    # Totals and hourly records carry the dry kilograms beside the wet.
    totals = run.of("totals")[-1]
    cake = next(s for s in totals["streams"] if s["stream"] == "cake")
    assert cake["dry_net_kg"] == pytest.approx(cake["net_kg"] * 0.75, rel=3e-3)
    assert cake["dry_kg"] == pytest.approx(cake["mass_kg"] * 0.75, rel=3e-3)
    hourly = [h for h in run.of("hourly") if h["stream"] == "dried"]
    assert hourly
    for hour in hourly:
        assert hour["dry_kg"] == pytest.approx(hour["quantity_kg"] * 0.98, rel=3e-3)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (("moisture: ma2.moisture,", ""),
         "a dry balance needs the dry share of each stream: dried names no 'moisture' or "
         "'solids' tag"),
        (("moisture: ma1.moisture,", "moisture: ma1.moisture, solids: ma1.moisture,"),
         "give 'moisture' or 'solids' (its dry share), not both"),
        (("moisture: ma1.moisture,", "moisture: ma1.temperature,"),
         "'ma1.temperature' is in degC (temperature), but a fraction is needed here"),
        (("basis: dry", "basis: bone_dry"), "'bone_dry' is not one of wet, dry"),
    ],
)  # fmt: skip
def test_a_dry_basis_without_its_analyzers_is_refused(tmp_path: Path, change, message):
    path = tmp_path / "c.yaml"
    path.write_text(CONFIG.replace(*change))
    with pytest.raises(ConfigError) as caught:
        config_module.load(path)
    assert message in str(caught.value)


SAND_PLANT = """\
description: wet sand hopper H-1 on load cells, filled faster than it is emptied
seed: 7
fluid: {density: 1600 kg/m3, at: 20 degC, expansion: 0 1/K}
temperature: {mean: 20 degC}
vessels:
  - {name: H-1, kind: hopper, mass: 20 t, tare: 8 t, moisture: 8 %}
lines:
  - {name: fill, from: outside, to: H-1, flow: {mean: 90 t/h, swing: 10 %, period: 80s},
     moisture: 8 %}
  - {name: reclaim, from: H-1, to: outside, flow: 50 t/h, moisture: 8 %}
meters:
  - {name: wf1, profile: belt_scale, line: fill, accuracy: 0.5 %}
  - {name: ma1, profile: moisture_analyzer, line: fill, accuracy: 0.2 %}
  - {name: wf2, profile: belt_scale, line: reclaim, accuracy: 0.5 %}
  - {name: ma2, profile: moisture_analyzer, line: reclaim, accuracy: 0.2 %}
  - {name: wt1, profile: load_cell, vessel: H-1, accuracy: 20 kg}
  - {name: ma3, profile: moisture_analyzer, vessel: H-1, accuracy: 0.2 %}
faults: []
"""
SAND_CONFIG = (
    CONFIG.replace(
        "port: 5023, profile: moisture_analyzer}}", "port: 5023, profile: moisture_analyzer}}"
    ).split("streams:", maxsplit=1)[0]
    + f"""\
  - {{name: wt1, protocol: modbus_tcp, host: 127.0.0.1, port: 5024, profile: load_cell}}
  - {{name: ma3, protocol: modbus_tcp, host: 127.0.0.1, port: 5025, profile: moisture_analyzer}}
streams:
  - {{name: fill, belt: {{load: wf1.load, speed: wf1.speed}}, moisture: ma1.moisture,
     accuracy: 0.5 %}}
  - {{name: reclaim, belt: {{load: wf2.load, speed: wf2.speed}}, moisture: ma2.moisture,
     accuracy: 0.5 %}}
inventories:
  - {{name: hopper, mass: wt1.net_weight, moisture: ma3.moisture, accuracy: 20 kg}}
nodes:
  - {{name: sand_dry, basis: dry, inputs: [fill], outputs: [reclaim], inventories: [hopper],
     {NODE}}}
"""
)


def test_a_dry_balance_weighs_the_dry_share_of_what_a_vessel_holds(tmp_path: Path):
    """40 t/h more wet sand in than out: the hopper's dry inventory grows by 92 % of it, and
    the dry balance closes only with the vessel's analyzer taken into account."""
    with plantrun.running(tmp_path, SAND_CONFIG, SAND_PLANT) as run:
        run.run_for(1.5 * HOUR)
    windows = [b for b in run.of("balance") if b["node"] == "sand_dry"]
    judged = [b for b in windows if b["status"] != "inconclusive"]
    assert len(judged) >= 50
    assert all(b["status"] == "ok" for b in judged)
    assert run.of("alarm") == []
    # The window's dry inventory change: 92 % of 40 t/h for 30 min.
    last = judged[-1]
    change = last["inventory_end_kg"] - last["inventory_start_kg"]
    assert change == pytest.approx(0.92 * 40_000 / 2, rel=0.02)
    hopper = run.of("totals")[-1]["inventories"][0]
    assert hopper["dry_mass_kg"] == pytest.approx(hopper["mass_kg"] * 0.92, rel=5e-3)


def test_a_dry_balance_needs_each_vessels_analyzer_too(tmp_path: Path):
    path = tmp_path / "c.yaml"
    path.write_text(SAND_CONFIG.replace(" moisture: ma3.moisture,", ""))
    with pytest.raises(ConfigError) as caught:
        config_module.load(path)
    assert (
        "a dry balance needs the dry share of each inventory: hopper names no 'moisture' or "
        "'solids' tag" in str(caught.value)
    )
