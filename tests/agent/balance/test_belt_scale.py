"""Belt scales on the simulated plant: a clinker silo on load cells, filled by one conveyor and
emptied by another, each with a belt scale. Kilograms against the plant's truth, and a belt
that slips on its speed sensor (2 % of the feed carried unweighed, as in cement plants) caught
by the silo's balance."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import pytest

from massgate.drivers.sim.faults import Fault
from tests.agent.balance import plantrun

PLANT = """\
description: clinker silo S-1 on load cells, belt conveyors in and out
seed: 3
fluid: {density: 1500 kg/m3, at: 20 degC, expansion: 0 1/K}
temperature: {mean: 30 degC}
vessels:
  - {name: S-1, kind: hopper, mass: 40 t, tare: 12 t}
lines:
  - {name: belt_in, from: outside, to: S-1, flow: {mean: 60 t/h, swing: 10 %, period: 90s}}
  - {name: belt_out, from: S-1, to: outside, flow: {mean: 55 t/h, swing: 5 %, period: 70s}}
meters:
  - {name: wf1, profile: belt_scale, line: belt_in, accuracy: 0.5 %}
  - {name: wf2, profile: belt_scale, line: belt_out, accuracy: 0.5 %}
  - {name: wt1, profile: load_cell, vessel: S-1, accuracy: 20 kg}
faults: []
"""
CONFIG = """\
gateway: {site: s, id: g, state_dir: state}
devices:
  - {name: wf1, protocol: modbus_tcp, host: 127.0.0.1, port: 5020, profile: belt_scale}
  - {name: wf2, protocol: modbus_tcp, host: 127.0.0.1, port: 5021, profile: belt_scale}
  - {name: wt1, protocol: modbus_tcp, host: 127.0.0.1, port: 5022, profile: load_cell}
streams:
  - {name: clinker_in, belt: {load: wf1.load, speed: wf1.speed}, accuracy: 0.5 %}
  - {name: clinker_out, belt: {load: wf2.load, speed: wf2.speed}, accuracy: 0.5 %}
inventories:
  - {name: silo, mass: wt1.net_weight, accuracy: 20 kg}
nodes:
  - {name: silo, inputs: [clinker_in], outputs: [clinker_out], inventories: [silo],
     window: 30 min, evaluate_every: 1 min, tolerance: {relative: 0.5 %, sigma: 3},
     persistence: 10 min, clear_after: 10 min}
"""
HOUR = 3600.0


@pytest.fixture
def run(tmp_path: Path):
    with plantrun.running(tmp_path, CONFIG, PLANT) as started:
        yield started


def _raised(run: plantrun.PlantRun) -> list[dict]:
    return [a for a in run.of("alarm") if a["event"] == "raised"]


def test_belt_scales_weigh_what_the_belts_carried(run: plantrun.PlantRun):
    run.run_for(2 * HOUR)
    plant, gw = run.plant, run.gateway
    for stream, line in (("clinker_in", "belt_in"), ("clinker_out", "belt_out")):
        truth = plant.line_mass[[x.name for x in plant.spec.lines].index(line)]
        # Within the scales' rated 0.5 %; the noise is random, so far closer over two hours.
        assert gw.streams[stream].net == pytest.approx(truth, rel=1e-3), stream
        assert truth > 100_000  # ~60 t/h for two hours
    windows = [b for b in run.of("balance") if b["node"] == "silo"]
    assert all(b["status"] in ("ok", "inconclusive") for b in windows)
    assert _raised(run) == []


def test_a_slipping_belt_is_caught_by_the_silos_balance(run: plantrun.PlantRun):
    slip_from = HOUR
    run.plant.faults.add(Fault(kind="slip", target="wf1", start=slip_from, magnitude=0.02))
    run.run_for(2.5 * HOUR)
    (raised,) = _raised(run)
    assert raised["node"] == "silo"
    # Mass appears in the silo that the feed belt did not weigh: 2 % of 60 t/h.
    balance = raised["balance"]
    assert balance["imbalance_kg"] < -balance["tolerance_kg"]
    assert balance["imbalance_kg"] == pytest.approx(-0.02 * 60_000 / 2, rel=0.25)  # 30 min
    at = datetime.fromisoformat(raised["at"]).timestamp() - plantrun.WALL0
    assert slip_from < at <= slip_from + 30 * 60 + 10 * 60 + 120


@pytest.mark.parametrize(
    ("stream", "message"),
    [
        ("{name: c, belt: {load: wf1.load}, accuracy: 1 %}",
         "streams[0].belt: 'speed' is required"),
        ("{name: c, belt: {load: wf1.load, speed: wf1.speed}, mass_flow: wf1.rate, accuracy: 1 %}",
         "give one of mass_flow / belt, not 2"),
        ("{name: c, belt: {load: wf1.speed, speed: wf1.load}, accuracy: 1 %}",
         "'wf1.speed' is in m/s (speed), but a belt load is needed here"),
        ("{name: c, belt: {load: wf1.load, speed: wf1.sped}, accuracy: 1 %}",
         "no device point 'wf1.sped'. Did you mean 'wf1.speed'?"),
    ],
)  # fmt: skip
def test_a_belt_stream_is_refused_with_why(tmp_path: Path, stream: str, message: str):
    from massgate.agent import config as config_module
    from massgate.agent.core.yamlsource import ConfigError

    path = tmp_path / "c.yaml"
    head = CONFIG.split("streams:", maxsplit=1)[0]
    path.write_text(f"{head}streams:\n  - {stream}\n")
    with pytest.raises(ConfigError) as caught:
        config_module.load(path)
    assert message in str(caught.value)
