"""The balance engine on the simulated plant: a leak, a dropout, a drift, a day without faults.

The plant is the built-in one with a second Coriolis meter in series on the feed, so the site
has two nodes: the feed line between the two meters, and the tank between the second meter,
the product meter and the load cells. A site node contains both.
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

import pytest

from massgate.drivers.sim import plantspec
from massgate.drivers.sim.faults import Fault
from tests.agent.balance import plantrun

BUILTIN = (Path(plantspec.__file__).parent / "plant.yaml").read_text()
PLANT = BUILTIN.replace(
    "  - {name: lt100,",
    "  - {name: ft103, profile: coriolis, line: feed, accuracy: 0.1 %}\n  - {name: lt100,",
)
assert PLANT != BUILTIN

PERSISTENCE = 300.0
WINDOW = 600.0
NODE = (
    "window: 10 min, evaluate_every: 1 min, tolerance: {relative: 0.5 %, sigma: 3}, "
    "persistence: 5 min, clear_after: 5 min"
)
DEVICES = """\
gateway: {site: s, id: g, state_dir: state}
devices:
  - {name: ft101, protocol: modbus_tcp, host: 127.0.0.1, port: 5020, profile: coriolis}
  - {name: ft103, protocol: modbus_tcp, host: 127.0.0.1, port: 5023, profile: coriolis}
  - {name: ft102, protocol: modbus_tcp, host: 127.0.0.1, port: 5021, profile: magmeter}
  - {name: tt102, protocol: modbus_tcp, host: 127.0.0.1, port: 5022, profile: temperature_tx}
  - {name: wt100, protocol: modbus_tcp, host: 127.0.0.1, port: 5024, profile: load_cell}
streams:
  - {name: feed_a, mass_flow: ft101.mass_flow, accuracy: 0.1 %}
  - {name: feed_b, mass_flow: ft103.mass_flow, accuracy: 0.1 %}
  - name: product
    volume_flow: ft102.volume_flow
    accuracy: 0.2 %
    density:
      {reference: 998.2 kg/m3, at: 20 degC, expansion: 2.1e-4 1/K, temperature: tt102.temperature}
inventories:
  - {name: t100, mass: wt100.net_weight, accuracy: 0.4 kg}
"""
CONFIG = (
    DEVICES
    + f"""\
nodes:
  - {{name: feed_line, inputs: [feed_a], outputs: [feed_b], {NODE}}}
  - {{name: tank, inputs: [feed_b], outputs: [product], inventories: [t100], {NODE}}}
  - {{name: site, nodes: [feed_line, tank], {NODE}}}
"""
)
HOUR = 3600.0


# The same site with a cheaper second feed meter: a magnetic meter rated 0.5 %, checked by
# the Coriolis meter before it and by the tank's load cells and product meter after it.
MAGMETER_PLANT = BUILTIN.replace(
    "  - {name: lt100,",
    "  - {name: ft103, profile: magmeter, line: feed, accuracy: 0.5 %}\n  - {name: lt100,",
)
DENSITY = (
    "{reference: 998.2 kg/m3, at: 20 degC, expansion: 2.1e-4 1/K, temperature: tt102.temperature}"
)
MAGMETER_CONFIG = (
    CONFIG.replace("port: 5023, profile: coriolis", "port: 5023, profile: magmeter").replace(
        "{name: feed_b, mass_flow: ft103.mass_flow, accuracy: 0.1 %}",
        f"{{name: feed_b, volume_flow: ft103.volume_flow, accuracy: 0.5 %, density: {DENSITY}}}",
    )
    + "balance:\n  reconciliation: {window: 10 min, every: 1 min, confirm: 3}\n"
)


def _t(stamp: str) -> float:
    """Plant seconds of a record's UTC time."""
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp() - plantrun.WALL0


def _events(run: plantrun.PlantRun, kind: str, node: str | None = None) -> list[dict]:
    return [
        a for a in run.of("alarm") if a["event"] == kind and (node is None or a["node"] == node)
    ]


@pytest.fixture
def start(tmp_path: Path):
    runs: list[plantrun.PlantRun] = []

    def make(config: str = CONFIG, **kwargs: float) -> plantrun.PlantRun:
        run = plantrun.start(tmp_path, config, plant_text=PLANT, period=2.0, step=0.5, **kwargs)
        runs.append(run)
        return run

    yield make
    for run in runs:
        run.close()


def test_a_day_without_faults_raises_no_alarm(start):
    run = start()
    # Every meter within its rating, but not perfect: systematic errors of half the rated
    # accuracy, in the directions that open the balances most, besides the white noise.
    for meter, error in (("ft101", 0.0005), ("ft103", -0.0005), ("ft102", -0.001)):
        run.plant.faults.add(Fault(kind="bias", target=meter, magnitude=error))
    run.run_for(24 * HOUR)
    balances = run.of("balance")
    report = {}
    for node in ("feed_line", "tank", "site"):
        windows = [b for b in balances if b["node"] == node]
        conclusive = [b for b in windows if b["status"] != "inconclusive"]
        worst = max(abs(b["imbalance_kg"]) / b["tolerance_kg"] for b in conclusive)
        report[node] = {
            "windows": len(windows),
            "conclusive": len(conclusive),
            "warnings": sum(b["status"] == "warning" for b in windows),
            "alarms": len(_events(run, "raised", node)),
            "drifts": len(_events(run, "drift", node)),
            "worst |imbalance|/tolerance": round(worst, 3),
        }
    print("24 h, rated noise and in-spec meter errors, no fault:", report)
    for node, seen in report.items():
        assert seen["windows"] >= 24 * 60 - 2, node  # one judgement a minute
        # Only the first window after start (less than a window of data) is inconclusive.
        assert seen["conclusive"] >= seen["windows"] - WINDOW / 60, node
        assert seen["alarms"] == 0, node
        assert seen["warnings"] == 0, node
        assert seen["drifts"] == 0, node
    assert run.of("alarm") == []


def test_a_two_percent_leak_raises_the_tank_alarm_after_the_persistence_and_clears(start):
    run = start()
    leak_from, leak_to = 1.0 * HOUR, 2.0 * HOUR
    rate = 0.02 * 2.0  # 2 % of the feed's 2 kg/s, lost between the feed meters and the tank
    run.plant.faults.add(
        Fault(kind="leak", target="feed", start=leak_from, end=leak_to, magnitude=rate)
    )
    run.run_for(3 * HOUR)
    for node in ("tank", "site"):
        (raised,) = _events(run, "raised", node)
        since, at = _t(raised["since"]), _t(raised["at"])
        assert since > leak_from
        assert at - since >= PERSISTENCE
        # The 10 min window holds enough of the leak within a few minutes; then 5 min more.
        assert at <= leak_from + WINDOW + PERSISTENCE
        assert "mass is missing" in raised["hint"]
        assert raised["balance"]["imbalance_kg"] > raised["balance"]["tolerance_kg"]
        (cleared,) = _events(run, "cleared", node)
        assert leak_to < _t(cleared["at"]) <= leak_to + WINDOW + PERSISTENCE + 60
    # The feed line between the two meters has no leak: it stays quiet.
    assert [a for a in run.of("alarm") if a["node"] == "feed_line"] == []
    # The imbalance the alarm reported is the leak's mass over its window, within tolerance.
    (raised,) = _events(run, "raised", "tank")
    assert raised["balance"]["imbalance_kg"] == pytest.approx(
        rate * WINDOW, abs=raised["balance"]["tolerance_kg"] / 2
    )


def test_a_dropout_makes_windows_inconclusive_not_an_alarm(start):
    run = start()
    # The load cells go silent for 6 minutes: the tank's inventory is unknown.
    run.plant.faults.add(Fault(kind="dropout", target="wt100", start=HOUR, end=HOUR + 360))
    run.run_for(1.6 * HOUR)
    tank = [b for b in run.of("balance") if b["node"] == "tank"]
    during = [b for b in tank if HOUR + 60 <= _t(b["window_end"]) <= HOUR + 360]
    assert during
    assert all(b["status"] == "inconclusive" for b in during)
    assert all(b["coverage"] < 0.9 for b in during)
    # Windows that overlap the dropout stay inconclusive until enough good data is back.
    after = [b for b in tank if _t(b["window_end"]) > HOUR + 360 + WINDOW]
    assert after
    assert all(b["status"] == "ok" for b in after)
    assert run.of("alarm") == []
    # The feed line does not depend on the load cells and goes on being judged.
    feed = [b for b in run.of("balance") if b["node"] == "feed_line"]
    assert all(b["status"] == "ok" for b in feed if _t(b["window_end"]) > WINDOW + 60)


def test_a_slow_drift_is_caught_by_cusum_before_the_tolerance(start):
    run = start()
    drift_from = 1.0 * HOUR
    # The product magmeter's error grows by 1 % an hour.
    run.plant.faults.add(Fault(kind="drift", target="ft102", start=drift_from, magnitude=0.01))
    run.run_for(2.5 * HOUR)
    (drift,) = _events(run, "drift", "tank")
    caught = _t(drift["at"])
    assert caught > drift_from
    tank = [b for b in run.of("balance") if b["node"] == "tank"]
    first_warning = min(_t(b["window_end"]) for b in tank if b["status"] != "ok"
                        and b["status"] != "inconclusive")  # fmt: skip
    (raised,) = _events(run, "raised", "tank")
    print(
        f"drift from {drift_from:.0f} s: CUSUM at {caught:.0f} s "
        f"(meter error {(caught - drift_from) / HOUR * 0.01:.2%}), first window outside "
        "tolerance "
        f"at {first_warning:.0f} s, alarm at {_t(raised['at']):.0f} s"
    )
    assert caught < first_warning - 600, "CUSUM should lead the tolerance by minutes"
    assert "more gained" in drift["hint"]  # the product meter reads high: mass appears
    # The feed line is untouched by the product meter.
    assert _events(run, "drift", "feed_line") == []


def test_a_three_sigma_bias_is_named_by_the_measurement_test(tmp_path: Path):
    run = plantrun.start(tmp_path, MAGMETER_CONFIG, plant_text=MAGMETER_PLANT, period=2.0, step=0.5)
    bias_from = 1.0 * HOUR
    # 3σ of a meter rated 0.5 % (2σ): 0.75 % high.
    run.plant.faults.add(Fault(kind="bias", target="ft103", start=bias_from, magnitude=0.0075))
    try:
        run.run_for(1.5 * HOUR)
    finally:
        run.close()
    reconciliations = run.of("reconciliation")
    before = [r for r in reconciliations if _t(r["window_end"]) <= bias_from]
    assert len(before) >= 40
    assert all(r["global_test"]["passed"] and not r["gross_errors"] for r in before)
    classes = {s["stream"]: s["class"] for s in before[-1]["streams"]}
    assert classes == dict.fromkeys(("feed_a", "feed_b", "product", "Δtank"), "redundant")
    after = [r for r in reconciliations if _t(r["window_start"]) >= bias_from]
    assert len(after) >= 15
    for r in after:
        tests = {s["stream"]: s["measurement_test"] for s in r["streams"]}
        assert max(tests, key=tests.__getitem__) == "feed_b"
        assert tests["feed_b"] > r["measurement_test_critical"]
        (error,) = r["gross_errors"]
        assert (error["kind"], error["where"]) == ("bias", "feed_b")
        assert error["indistinguishable_from"] == []
        moved = next(s["measured_kg"] for s in r["streams"] if s["stream"] == "feed_b")
        assert error["size_kg"] == pytest.approx(moved * 0.0075 / 1.0075, rel=0.1)
    (raised,) = [a for a in run.of("alarm") if a["event"] == "raised" and a["node"] == "network"]
    assert raised["gross_error"]["where"] == "feed_b"
    assert "the meter on feed_b reads" in raised["hint"]
    assert raised["hint"].endswith("kg high")
    assert _t(raised["at"]) <= bias_from + WINDOW + 5 * 60


def test_report_prints_the_kept_windows_and_alarms_per_node(start, tmp_path: Path, capsys):
    from massgate.agent.commands.cli import main

    run = start()
    run.plant.faults.add(Fault(kind="leak", target="feed", start=1200, magnitude=0.04))
    run.run_for(HOUR)
    config = str(tmp_path / "config.yaml")
    # 2027-01-15T08:00Z is the plant's start; its first 40 minutes, the tank only.
    args = ["report", config, "--from", "2027-01-15T08:00Z", "--to", "2027-01-15T08:40Z"]
    assert main([*args, "--node", "tank"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("node tank: 39 windows (")
    assert "node feed_line" not in out
    assert "alarm raised" in out
    assert "warning" in out
    assert main([*args, "--json"]) == 0
    kept = json.loads(capsys.readouterr().out)
    assert {b["node"] for b in kept["balances"]} == {"feed_line", "tank", "site"}
    published = [b for b in run.of("balance") if _t(b["window_end"]) < 2400]
    assert len(kept["balances"]) == len(published)
    # The leak began inside the drift baseline's first 30 minutes: the CUSUM learned it as
    # usual, and only the tolerance alarm speaks.
    assert [a["event"] for a in kept["alarms"] if a["node"] == "tank"] == ["raised"]
    # Nothing in a range before the plant ran; a bad time and an unknown node are refused.
    assert main(["report", config, "--from", "2020-01-01", "--to", "2020-01-02"]) == 1
    assert main(["report", config, "--from", "yesterday"]) == 2
    assert "neither a time" in capsys.readouterr().err
    assert main(["report", config, "--node", "tnak"]) == 2
    assert "no node named 'tnak'" in capsys.readouterr().err


def test_a_meter_that_says_its_readings_are_bad_is_not_totalized_and_raises_no_balance_alarm(
    start, caplog
):
    """FT-103 loses its liquid for ten minutes and reads 30 % low: it says so with its empty
    pipe flag. Those readings are not totalized, the windows over them are inconclusive, and
    neither node raises a balance alarm over what the meter itself already reported."""
    run = start()
    begin, end = HOUR, HOUR + 600
    run.plant.faults.add(Fault(kind="bias", target="ft103", start=begin, end=end, magnitude=-0.3))
    run.plant.faults.add(
        Fault(kind="alarm", target="ft103", start=begin, end=end, point="empty_pipe")
    )
    with caplog.at_level("INFO"):
        run.run_for(1.5 * HOUR)
    assert run.of("alarm") == []
    for node in ("feed_line", "tank"):
        windows = [b for b in run.of("balance") if b["node"] == node]
        over = [b for b in windows if begin + 60 <= _t(b["window_end"]) <= end]
        assert over
        assert all(b["status"] == "inconclusive" for b in over), node
        after = [b for b in windows if _t(b["window_end"]) > end + WINDOW]
        assert after
        assert all(b["status"] == "ok" for b in after), node
    # Kilograms: FT-101 on the same line saw all of it; FT-103 all but the alarm's ten minutes
    # (2 kg/s), none of its 30 %-low readings.
    gw = run.gateway
    missing = gw.streams["feed_a"].net - gw.streams["feed_b"].net
    assert missing == pytest.approx(2.0 * 600, rel=0.01)
    assert gw.streams["feed_b"].alarm_samples == {"ft103.empty_pipe": 300}  # 600 s, every 2 s
    assert gw.streams["feed_a"].alarm_samples == {}
    said = [r.getMessage() for r in caplog.records if "meter alarm" in r.getMessage()]
    assert said == [
        "ft103: meter alarm ft103.empty_pipe (bad): its values are not totalized",
        "ft103: meter alarm ft103.empty_pipe cleared",
    ]


def test_a_meter_in_doubt_is_totalized_but_its_windows_are_not_judged(start):
    """FT-103's drive gain runs high for ten minutes (gas in the liquid): it says its readings
    are uncertain. They are totalized, as the meter still measures, but a window mostly
    under the alarm lacks the coverage to be judged."""
    run = start()
    begin, end = HOUR, HOUR + 600
    run.plant.faults.add(
        Fault(kind="alarm", target="ft103", start=begin, end=end, point="drive_gain_high")
    )
    run.run_for(1.5 * HOUR)
    gw = run.gateway
    assert gw.streams["feed_b"].net == pytest.approx(gw.streams["feed_a"].net, rel=2e-3)
    assert gw.streams["feed_b"].alarm_samples == {"ft103.drive_gain_high": 300}
    windows = [b for b in run.of("balance") if b["node"] == "feed_line"]
    over = [b for b in windows if begin + 120 <= _t(b["window_end"]) <= end]
    assert over
    assert all(b["status"] == "inconclusive" and b["coverage"] < 0.9 for b in over)
    before = [b for b in windows if WINDOW + 60 < _t(b["window_end"]) < begin]
    assert all(b["status"] == "ok" and b["coverage"] > 0.99 for b in before)
    assert run.of("alarm") == []


def test_an_alarm_active_at_a_restart_is_not_raised_again_and_clears_once(start):
    from massgate.agent.runtime.gateway import Gateway

    run = start()
    leak_from, leak_to = 1.0 * HOUR, 2.0 * HOUR
    run.plant.faults.add(
        Fault(kind="leak", target="feed", start=leak_from, end=leak_to, magnitude=0.04)
    )
    run.run_for(1.5 * HOUR)  # the tank's alarm is raised, the leak goes on
    (raised,) = _events(run, "raised", "tank")
    # The agent restarts (or reloads): a new gateway from what the outbox kept.
    run.gateway = Gateway(run.gateway.config, run.outbox)
    run.run_for(1.5 * HOUR)
    # Still the one alarm: not raised a second time after the restart, cleared once.
    assert _events(run, "raised", "tank") == [raised]
    (cleared,) = _events(run, "cleared", "tank")
    assert leak_to < _t(cleared["at"]) <= leak_to + WINDOW + PERSISTENCE + 60
