"""Calendar and batch windows, the alarm state machine's delays, deadband and reminders, and
the configuration of nodes."""

from __future__ import annotations

import itertools
import math
from datetime import UTC, datetime
from pathlib import Path

import pytest

from massgate.agent import config as config_module
from massgate.agent.balance import windows
from massgate.agent.balance.alarm import Alarm
from massgate.agent.config import NodeConfig, NodeTerms
from massgate.agent.core.yamlsource import ConfigError
from tests.agent.balance import plantrun
from tests.agent.balance.test_balance_plant import DEVICES, PLANT

HOUR = 3600.0
SHIFTS = ((6, 0), (14, 0), (22, 0))


def _utc(text: str) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp()


def test_shift_boundaries_follow_daylight_saving():
    # Berlin springs forward on 2026-03-29 at 02:00 and falls back on 2026-10-25 at 03:00.
    def shifts_from(start: str, count: int) -> list[float]:
        wall, ends = _utc(start), []
        for _ in range(count):
            wall = windows.next_boundary(wall, SHIFTS, "Europe/Berlin")
            ends.append(wall)
        return ends

    spring = shifts_from("2026-03-28T12:00", 4)  # 14:00 CET, 22:00 CET, 06:00 CEST, 14:00
    assert [b - a for a, b in itertools.pairwise(spring)] == [8 * HOUR, 7 * HOUR, 8 * HOUR]
    autumn = shifts_from("2026-10-24T11:00", 4)
    assert [b - a for a, b in itertools.pairwise(autumn)] == [8 * HOUR, 9 * HOUR, 8 * HOUR]
    # 06:00 local is 05:00 UTC in winter, 04:00 UTC in summer.
    assert datetime.fromtimestamp(spring[2], UTC).hour == 4
    assert datetime.fromtimestamp(autumn[2], UTC).hour == 5
    at = _utc("2026-03-29T04:00")
    assert windows.previous_boundary(at, SHIFTS, "Europe/Berlin") == at


PLC = (
    "  - {name: plc, protocol: modbus_tcp, host: 127.0.0.1, port: 5030, "
    "points: [{name: batch, address: 0, type: uint16, unit: count}]}\n"
)


def _config(tmp_path: Path, window: str) -> str:
    return DEVICES.replace("streams:\n", PLC + "streams:\n", 1) + (
        f"""\
nodes:
  - name: tank
    inputs: [feed_b]
    outputs: [product]
    inventories: [t100]
    window: {window}
    tolerance: {{relative: 0.5 %}}
    persistence: 0s
"""
    )


def test_calendar_windows_close_at_the_shift_boundaries(tmp_path: Path):
    config = _config(tmp_path, '{calendar: ["06:00", "14:00", "22:00"], timezone: Europe/Berlin}')
    run = plantrun.start(tmp_path, config, plant_text=PLANT, period=2.0, step=0.5)
    try:
        run.run_for(21.1 * HOUR)
    finally:
        run.close()
    windows = run.of("balance")
    # The plant starts at 2027-01-15 08:00 UTC, 09:00 in Berlin: shifts end 13:00, 21:00 and
    # 05:00 UTC.
    ends = [datetime.fromisoformat(b["window_end"].replace("Z", "+00:00")) for b in windows]
    assert [(e.day, e.hour) for e in ends] == [(15, 13), (15, 21), (16, 5)]
    assert all(e.minute == 0 and e.second < 2 for e in ends)
    # The first shift (06:00 to 14:00) saw 5 of its 8 hours: not enough to judge.
    assert windows[0]["status"] == "inconclusive"
    assert windows[0]["coverage"] == pytest.approx(5 / 8, abs=0.01)
    assert [b["status"] for b in windows[1:]] == ["ok", "ok"]
    assert all(b["window"] == "calendar" for b in windows)
    # A full shift moved about 8 h × 2 kg/s through the feed.
    assert windows[1]["in_kg"] == pytest.approx(8 * HOUR * 2.0, rel=0.01)


def test_batch_windows_follow_the_batch_register(tmp_path: Path):
    run = plantrun.start(tmp_path, _config(tmp_path, "{batch: plc.batch}"), plant_text=PLANT,
                         period=2.0, step=0.5)  # fmt: skip
    try:
        for batch, minutes in ((0, 10), (101, 20), (102, 15), (0, 10), (103, 5)):
            run.plc["batch"] = batch
            run.run_for(minutes * 60)
    finally:
        run.close()
    windows = run.of("balance")
    # Batch 103 is still running: only the finished ones are judged.
    assert [b["batch"] for b in windows] == ["101", "102"]
    spans = [
        datetime.fromisoformat(b["window_end"].replace("Z", "+00:00")).timestamp()
        - datetime.fromisoformat(b["window_start"].replace("Z", "+00:00")).timestamp()
        for b in windows
    ]
    assert spans == pytest.approx([20 * 60, 15 * 60], abs=2.0)
    assert all(b["status"] == "ok" and b["coverage"] > 0.99 for b in windows)
    assert windows[0]["in_kg"] == pytest.approx(20 * 60 * 2.0, rel=0.02)


def _machine(**overrides: float) -> Alarm:
    cfg = NodeConfig(
        name="n", inputs=(), outputs=(), inventories=(), window=60.0, evaluate_every=10.0,
        tolerance_fixed=0.0, tolerance_relative=0.0, tolerance_sigma=0.0,
        persistence=overrides.get("persistence", 30.0),
        clear_after=overrides.get("clear_after", 20.0), min_coverage=0.9,
        deadband=overrides.get("deadband", 0.2), re_alarm=overrides.get("re_alarm", 0.0),
    )  # fmt: skip
    return Alarm(cfg)


def _feed(machine: Alarm, values: list[float | None]) -> list[tuple[float, str]]:
    """Imbalances every 10 s against a tolerance of 10; None is an inconclusive window."""
    events = []
    for i, value in enumerate(values):
        imbalance = math.nan if value is None else value
        found = machine.step(i * 10.0, i * 10.0, imbalance, 10.0, conclusive=value is not None)
        events += [(i * 10.0, kind) for kind, *_ in found]
    return events


def test_on_delay_needs_the_deviation_to_persist_without_a_hole():
    # 30 s persistence: outside at 0, 10, 20, 30 s raises at 30 s.
    assert _feed(_machine(), [11, 11, 11, 11]) == [(30.0, "raised")]
    # A dip inside tolerance or an inconclusive window restarts the count.
    assert _feed(_machine(), [11, 11, 5, 11, 11, 11]) == []
    assert _feed(_machine(), [11, 11, None, 11, 11, 11, 11]) == [(60.0, "raised")]


def test_off_delay_and_deadband_decide_when_it_clears():
    # Deadband 20 %: 9 is inside the tolerance of 10 but not below 8, so the alarm holds.
    assert _feed(_machine(persistence=0), [11, 9, 9, 9, 9]) == [(0.0, "raised")]
    # Below 8 for the 20 s off-delay clears it.
    assert _feed(_machine(persistence=0), [11, 7, 7, 7]) == [(0.0, "raised"), (30.0, "cleared")]
    # A relapse during the off-delay starts it again.
    assert _feed(_machine(persistence=0), [11, 7, 7, 9, 7, 7, 7]) == [
        (0.0, "raised"),
        (60.0, "cleared"),
    ]


def test_re_alarm_reminds_while_the_alarm_stays():
    events = _feed(_machine(persistence=0, re_alarm=25), [11] * 8)
    assert events == [(0.0, "raised"), (30.0, "repeated"), (60.0, "repeated")]


def test_an_inconclusive_window_while_the_alarm_is_active_keeps_when_it_began():
    # A data gap while active used to forget when the alarm began, and the next reminder
    # failed an assertion in every processing cycle from then on (no record left the
    # gateway while the imbalance lasted).
    machine = _machine(persistence=0, re_alarm=25)
    events = []
    for i, value in enumerate([11, 11, None, 11, 11, 11, 7, 7, 7]):
        conclusive = value is not None
        imbalance = math.nan if value is None else value
        found = machine.step(i * 10.0, i * 10.0, imbalance, 10.0, conclusive=conclusive)
        events += [(i * 10.0, kind, since) for kind, since, *_ in found]
    assert events == [
        (0.0, "raised", 0.0),
        (30.0, "repeated", 0.0),  # the alarm began at 0, gap or not
        (80.0, "cleared", 60.0),
    ]


@pytest.mark.parametrize(
    ("node", "message"),
    [
        ("{calendar: ['25:00']}", "'25:00' is not a time of day"),
        ("{calendar: ['06:00'], timezone: Mars/Olympus}", "'Mars/Olympus' is not a time"),
        ("{calendar: ['06:00'], batch: plc.batch}", "give 'calendar"),
        ("{batch: plc.bacth}", "no device point 'plc.bacth'. Did you mean 'plc.batch'?"),
        ("10 min\n    deadband: 100 %", "must be below 100 %"),
        ("10 min\n    nodes: [nowhere]", "no node named 'nowhere'"),
        ("10 min\n    generation: [feed_b]", "can be only one of input, output"),
    ],
)
def test_node_configuration_errors(tmp_path: Path, node: str, message: str):
    text = _config(tmp_path, node)
    with pytest.raises(ConfigError) as err:
        config_module.loads(text, path=tmp_path / "c.yaml")
    assert message in str(err.value)


def test_nodes_that_contain_each_other_are_refused(tmp_path: Path):
    text = _config(tmp_path, "10 min\n    nodes: [outer]") + (
        "  - {name: outer, nodes: [tank], window: 10 min, persistence: 0s}\n"
    )
    with pytest.raises(ConfigError, match="nodes contain each other: tank → outer → tank"):
        config_module.loads(text, path=tmp_path / "c.yaml")


def test_an_outer_node_sees_only_what_crosses_its_boundary(tmp_path: Path):
    text = _config(tmp_path, "10 min") + (
        "  - {name: line, inputs: [feed_a], outputs: [feed_b], window: 10 min, persistence: 0s}\n"
        "  - {name: site, nodes: [line, tank], window: 10 min, persistence: 0s}\n"
    )
    config = config_module.loads(text, path=tmp_path / "c.yaml")
    terms = config_module.node_terms(config.nodes)
    assert terms["site"] == NodeTerms(("feed_a",), ("product",), (), (), ("t100",))


def test_a_batch_tag_that_reads_non_finite_is_no_batch_change(tmp_path: Path):
    """A float batch register reading ±inf or NaN (a PLC in fault) is no reading: the batch
    runs on, nothing raises out of the cycle (int(inf) once ended the agent at batch end)."""
    run = plantrun.start(tmp_path, _config(tmp_path, "{batch: plc.batch}"), plant_text=PLANT,
                         period=2.0, step=0.5)  # fmt: skip
    try:
        for batch, minutes in ((101, 10), (math.inf, 5), (102, 10), (-math.inf, 3),
                               (math.nan, 3), (0, 5)):  # fmt: skip
            run.plc["batch"] = batch
            run.run_for(minutes * 60)
    finally:
        run.close()
    windows = run.of("balance")
    assert [b["batch"] for b in windows] == ["101", "102"]
    assert [b["status"] for b in windows] == ["ok", "ok"]
    telemetry = run.of("telemetry")[-1]["points"]
    assert telemetry["plc.batch"]["value"] == 0


def test_a_shift_the_wall_clock_stepped_back_in_is_inconclusive(tmp_path: Path):
    """NTP set the clock back an hour during the 14:00-22:00 shift: by the monotonic clock the
    shift lasted 9 h. Its kilograms are not the shift's: inconclusive, never a wrong 'ok'.
    The next shift is judged again."""
    config = _config(tmp_path, '{calendar: ["06:00", "14:00", "22:00"], timezone: Europe/Berlin}')
    run = plantrun.start(tmp_path, config, plant_text=PLANT, period=5.0, step=1.0)
    try:
        run.run_for(7 * HOUR)  # 08:00 to 15:00 UTC: the first shift closes at 13:00
        run.wall_offset = -HOUR  # 15:00 becomes 14:00
        run.run_for(7.1 * HOUR)  # to 21:06 by the wall clock: the second shift closes
        run.run_for(8.1 * HOUR)  # the third shift, 21:00 to 05:00 UTC
    finally:
        run.close()
    windows = run.of("balance")
    assert [b["status"] for b in windows] == ["inconclusive", "inconclusive", "ok"]
    assert windows[1]["coverage"] == 0.0
