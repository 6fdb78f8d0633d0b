"""Zero checks: a flow meter that reads more than its zero stability while its line stands
still raises one zero_drift event with its offset, and one zero_ok once a later stop finds it
re-zeroed. The plant is the built-in tank with a second Coriolis meter (FT-103) on the feed;
its pumps stop by schedule."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from massgate.agent import config as config_module
from massgate.agent.core.yamlsource import ConfigError
from massgate.drivers.sim.faults import Fault
from tests.agent.balance import plantrun
from tests.agent.balance.test_balance_plant import DEVICES, PLANT
from tests.agent.publish.test_payload_schemas import problems

HOUR = 3600.0
PLC = (
    "  - {name: plc, protocol: modbus_tcp, host: 127.0.0.1, port: 5030, "
    "points: [{name: running, address: 0, type: uint16, unit: count}]}\n"
)
CUT = DEVICES.replace(
    "{name: feed_b, mass_flow: ft103.mass_flow, accuracy: 0.1 %}",
    "{name: feed_b, mass_flow: ft103.mass_flow, accuracy: 0.1 %, low_flow_cutoff: 180 kg/h, "
    "zero_stability: 2 kg/h}",
).replace(
    "    accuracy: 0.2 %\n",
    "    accuracy: 0.2 %\n    low_flow_cutoff: 0.2 m3/h\n    zero_stability: 1 kg/h\n",
    1,
)
NODE = """\
nodes:
  - name: tank
    inputs: [feed_b]
    outputs: [product]
    inventories: [t100]
    window: 10 min
    tolerance: {{relative: 0.5 %, fixed: 10 kg}}
    persistence: 5 min
    zero_check: {zero_check}
"""


def _stop(run: plantrun.PlantRun, start: float, end: float) -> None:
    for line in ("feed", "product"):
        run.plant.faults.add(Fault(kind="stop", target=line, start=start, end=end))


def _zero_events(run: plantrun.PlantRun) -> list[dict]:
    return [a for a in run.of("alarm") if a["event"] in ("zero_drift", "zero_ok")]


def test_a_shifted_zero_is_found_when_the_line_stops_and_cleared_after_re_zeroing(
    tmp_path: Path, caplog
):
    """FT-103's zero shifts by 40 kg/h (below its 180 kg/h cut-off, so it counts nothing
    while stopped, but rides on every running reading). Three stops: the first finds it, the
    second (still shifted) says nothing again, the third (after re-zeroing) finds it back."""
    config = CUT + NODE.format(zero_check="{settle: 1 min, over: 5 min}")
    with plantrun.running(tmp_path, config, PLANT) as run:
        run.plant.faults.add(Fault(kind="zero", target="ft103", start=0.5 * HOUR,
                                   end=3 * HOUR, magnitude=40 / HOUR))  # fmt: skip
        _stop(run, 1 * HOUR, 1.25 * HOUR)
        _stop(run, 2 * HOUR, 2.25 * HOUR)
        _stop(run, 4 * HOUR, 4.25 * HOUR)
        with caplog.at_level("INFO"):
            run.run_for(4.5 * HOUR)
        published = [json.loads(m.payload) for m in run.outbox.take(10**6)]
    events = _zero_events(run)
    zeros = [p for p in published if p["kind"] == "alarm" and "zero_check" in p]
    assert len(zeros) == 2
    for payload in zeros:
        assert problems("alarm", payload) == [], payload
    assert [(e["event"], e["zero_check"]["stream"]) for e in events] == [
        ("zero_drift", "feed_b"),
        ("zero_ok", "feed_b"),
    ]
    drift, ok = events
    check = drift["zero_check"]
    assert check["offset_kg_h"] == pytest.approx(40.0, rel=1e-6)
    assert check["zero_stability_kg_h"] == 2.0
    # 5 min of 2 s polls after the 1 min settle.
    assert check["samples"] == pytest.approx(150, abs=2)
    at = plantrun.WALL0 + HOUR
    assert _t(drift["since"]) == pytest.approx(at, abs=4)
    assert _t(check["mean_from"]) == pytest.approx(at + 60, abs=4)
    assert _t(drift["at"]) == pytest.approx(at + 360, abs=4)
    assert "Zero the meter" in drift["hint"]
    assert abs(ok["zero_check"]["offset_kg_h"]) <= 2.0
    # The journal: one warning, one line when it is back.
    lines = [r for r in caplog.records if "zero check" in r.getMessage()]
    assert [r.levelname for r in lines] == ["WARNING", "INFO"]
    # The product meter reads its true zero: nothing said of it. No balance alarm.
    assert not [a for a in run.of("alarm") if a["event"] == "raised"]


def test_a_run_tag_catches_a_zero_shifted_past_the_cut_off(tmp_path: Path):
    """A zero shifted by 400 kg/h reads above the 180 kg/h cut-off: by the meters alone the
    line never seems to stop. The line's run tag says it has."""
    devices = CUT.replace("streams:\n", PLC + "streams:\n", 1)
    for zero_check, found in (("{settle: 1 min}", 0), ("{running: plc.running}", 1)):
        config = devices + NODE.format(zero_check=zero_check)
        (where := tmp_path / str(found)).mkdir()
        with plantrun.running(where, config, PLANT) as run:
            run.plc["running"] = 1
            run.plant.faults.add(Fault(kind="zero", target="ft103", start=0.0,
                                       magnitude=400 / HOUR))  # fmt: skip
            _stop(run, 1 * HOUR, 1.25 * HOUR)
            run.run_for(1 * HOUR)
            run.plc["running"] = 0
            run.run_for(0.25 * HOUR)
            run.plc["running"] = 1
            run.run_for(0.25 * HOUR)
        events = _zero_events(run)
        assert len(events) == found, zero_check
        if found:
            assert events[0]["zero_check"]["offset_kg_h"] == pytest.approx(400.0, rel=1e-6)
            # Default settle 2 min and mean over 5 min.
            assert _t(events[0]["at"]) - _t(events[0]["since"]) == pytest.approx(420, abs=4)


def test_a_magnetic_meters_zero_is_weighed_by_its_density(tmp_path: Path):
    """FT-102 reads volume: its zero of 30 kg/h (in volume, 30 kg/h over the liquid's
    density) is said in kg/h through the stream's density model."""
    config = CUT + NODE.format(zero_check="{settle: 1 min, over: 5 min}")
    with plantrun.running(tmp_path, config, PLANT) as run:
        run.plant.faults.add(Fault(kind="zero", target="ft102", magnitude=30 / HOUR))
        _stop(run, 0.5 * HOUR, 0.75 * HOUR)
        run.run_for(HOUR)
    (event,) = _zero_events(run)
    assert event["zero_check"]["stream"] == "product"
    assert event["zero_check"]["offset_kg_h"] == pytest.approx(30.0, rel=1e-3)


def test_a_stop_too_short_to_settle_and_measure_is_not_judged(tmp_path: Path):
    config = CUT + NODE.format(zero_check="{settle: 1 min, over: 5 min}")
    with plantrun.running(tmp_path, config, PLANT) as run:
        run.plant.faults.add(Fault(kind="zero", target="ft103", magnitude=40 / HOUR))
        _stop(run, 0.5 * HOUR, 0.5 * HOUR + 300)  # 5 min: settled 1, measured 4
        run.run_for(HOUR)
        assert _zero_events(run) == []
        assert run.gateway.zero_checks[0].checks == 0


def _t(text: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        ("zero_stability: 2 kg/h", "zero_stability: 2 kg", "a mass flow is expected"),
        (
            "low_flow_cutoff: 180 kg/h, zero_stability: 2 kg/h",
            "zero_stability: 2 kg/h",
            "feed_b has none (give one, or the run tag of the line)",
        ),
        (
            "zero_check: {settle: 1 min}",
            "zero_check: {running: plc.runing}",
            "no device point 'plc.runing'",
        ),
        ("zero_check: {settle: 1 min}", "zero_check: {setle: 1 min}", "unknown key 'setle'"),
    ],
)
def test_zero_check_configuration_errors(tmp_path: Path, old: str, new: str, message: str):
    text = CUT + NODE.format(zero_check="{settle: 1 min}")
    assert old in text
    with pytest.raises(ConfigError) as err:
        config_module.loads(text.replace(old, new), path=tmp_path / "c.yaml")
    assert message in str(err.value)


def test_a_node_without_a_meter_to_zero_is_refused(tmp_path: Path):
    text = DEVICES + NODE.format(zero_check="{running: ft101.mass_flow}")
    with pytest.raises(ConfigError, match="no stream of the node gives its meter's"):
        config_module.loads(text, path=tmp_path / "c.yaml")


def test_a_manual_stream_in_a_zero_checked_node_is_no_meter_to_zero(tmp_path: Path):
    """Entries in the node (a weighbridge's) take no part in the zero check: the gateway
    builds (it once looked the manual stream up among the meters), and only meters are
    watched."""
    config = CUT.replace("inventories:\n", "manual_streams:\n  - {name: tickets, accuracy: 0.1 %}\n"
                         "inventories:\n") + NODE.format(
        zero_check="{settle: 1 min, over: 5 min}"
    ).replace("inputs: [feed_b]", "inputs: [feed_b, tickets]").replace(
        "window: 10 min", "window: {batch: command}"
    )  # fmt: skip
    with plantrun.running(tmp_path, config, PLANT) as run:
        (check,) = run.gateway.zero_checks
        assert [m.name for m in check.meters] == ["feed_b", "product"]
        assert run.gateway.streams["feed_b"].watched
        assert not run.gateway.streams["feed_a"].watched
