"""Yield and losses per window and summed per batch, shift, day and campaign.

The plant is the built-in tank with a scrap line: T-100 is fed at 2 kg/s, emptied by the
product pump (about 1.95 kg/s) and by a reject pump at 0.05 kg/s whose meter the node counts as
scrap. The batch and campaign registers are a PLC's.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from massgate.agent import config as config_module
from massgate.agent.balance.yields import Grouping, summarize
from massgate.agent.core.yamlsource import ConfigError
from tests.agent.balance import plantrun
from tests.agent.balance.test_balance_plant import BUILTIN, DEVICES

PLANT = BUILTIN.replace(
    "meters:\n",
    "  - {name: reject, from: T-100, to: outside, flow: 0.05 kg/s}\n\nmeters:\n",
).replace(
    "  - {name: lt100,",
    "  - {name: ft103, profile: coriolis, line: feed, accuracy: 0.1 %}\n"
    "  - {name: ft104, profile: coriolis, line: reject, accuracy: 0.1 %}\n  - {name: lt100,",
)
assert PLANT.count("ft104") == 1
PLC = (
    "  - {name: ft104, protocol: modbus_tcp, host: 127.0.0.1, port: 5025, profile: coriolis}\n"
    "  - {name: plc, protocol: modbus_tcp, host: 127.0.0.1, port: 5030, points: "
    "[{name: batch, address: 0, type: uint16, unit: count}, "
    "{name: campaign, address: 1, type: uint16, unit: count}]}\n"
)
NODE = """\
nodes:
  - name: tank
    inputs: [feed_b]
    outputs: [product, {{stream: scrap, class: scrap}}]
    inventories: [t100]
    theoretical_yield: 98 %
    window: {window}
    tolerance: {{relative: 0.5 %}}
    persistence: 0s
"""


def _config(window: str) -> str:
    devices = DEVICES.replace("streams:\n", PLC + "streams:\n", 1).replace(
        "inventories:\n",
        "  - {name: scrap, mass_flow: ft104.mass_flow, accuracy: 0.1 %}\ninventories:\n",
    )
    return devices + NODE.format(window=window)


def test_batches_carry_their_outputs_by_class_and_their_yield(tmp_path: Path, capsys):
    """Three batches in two campaigns: each batch record's product, scrap and yield against
    the plant's truth; the report sums them by batch and by campaign."""
    config = _config("{batch: plc.batch, campaign: plc.campaign}")
    truth: dict[str, dict[str, float]] = {}
    with plantrun.running(tmp_path, config, PLANT) as run:
        run.plc.update(batch=0, campaign=0)
        run.run_for(300)
        for batch, campaign, minutes in ((701, 7, 20), (702, 7, 15), (801, 8, 10), (0, 8, 5)):
            before = run.plant.truth().lines
            run.plc.update(batch=batch, campaign=campaign)
            run.run_for(minutes * 60)
            after = run.plant.truth().lines
            truth[str(batch)] = {line: after[line] - before[line] for line in after}
    windows = run.of("balance")
    assert [(b["batch"], b["campaign"]) for b in windows] == [
        ("701", "7"),
        ("702", "7"),
        ("801", "8"),
    ]
    for b in windows:
        moved = truth[b["batch"]]
        accounting = b["accounting"]
        assert set(accounting["outputs_kg"]) == {"product", "scrap"}
        # A window begins and ends one poll (2 s) after the register changed.
        assert accounting["outputs_kg"]["product"] == pytest.approx(moved["product"], rel=5e-3)
        assert accounting["outputs_kg"]["scrap"] == pytest.approx(moved["reject"], rel=5e-3)
        assert accounting["yield"] == pytest.approx(moved["product"] / moved["feed"], rel=5e-3)
        assert accounting["theoretical_yield"] == 0.98
        assert accounting["yield_gap_kg"] == pytest.approx(
            0.98 * b["in_kg"] - accounting["outputs_kg"]["product"]
        )
        assert accounting["known_loss_kg"] == accounting["outputs_kg"]["scrap"]
        assert accounting["unaccounted_kg"] == b["imbalance_kg"]
        assert abs(accounting["unaccounted_kg"]) < 3 * accounting["unaccounted_uncertainty_kg"]
        assert b["status"] == "ok"

    by_campaign, rolling = summarize(windows, Grouping("campaign"))
    assert rolling == []
    assert [(g.key, g.windows) for g in by_campaign] == [("7", 2), ("8", 1)]
    seven = by_campaign[0].body()
    product = truth["701"]["product"] + truth["702"]["product"]
    assert seven["outputs_kg"]["product"] == pytest.approx(product, rel=5e-3)
    assert seven["yield"] == pytest.approx(product / (truth["701"]["feed"] + truth["702"]["feed"]),
                                           rel=5e-3)  # fmt: skip
    assert seven["unaccounted_kg"] == pytest.approx(
        windows[0]["imbalance_kg"] + windows[1]["imbalance_kg"]
    )
    assert seven["unaccounted_uncertainty_kg"] == pytest.approx(
        (windows[0]["uncertainty_kg"] ** 2 + windows[1]["uncertainty_kg"] ** 2) ** 0.5
    )

    from massgate.agent.commands.cli import main

    path = str(tmp_path / "config.yaml")
    args = ["report", path, "--from", "2027-01-15T08:00Z", "--to", "2027-01-16T00:00Z"]
    assert main([*args, "--by", "batch"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0] == "node tank by batch: 3"
    assert "scrap kg" in out
    assert [line.split()[0] for line in out.splitlines()[2:]] == ["701", "702", "801"]
    assert main([*args, "--by", "campaign", "--json"]) == 0
    kept = json.loads(capsys.readouterr().out)
    assert [g["group"] for g in kept["groups"]] == ["7", "8"]
    assert kept["groups"][0] == seven
    # The batch ids' first two characters (70, 80) are the campaign when no tag says it.
    for b in windows:
        b["campaign"] = None
    by_prefix, _ = summarize(windows, Grouping("campaign", prefix=2))
    assert [(g.key, g.windows) for g in by_prefix] == [("70", 2), ("80", 1)]
    # --by shift needs shift times: this gateway has no calendar node.
    assert main([*args, "--by", "shift"]) == 2
    assert "give --shifts 06:00,14:00,22:00" in capsys.readouterr().err
    assert main([*args, "--by", "day", "--shifts", "25:00"]) == 2
    assert "not a list of times" in capsys.readouterr().err
    assert main([*args, "--by", "day", "--timezone", "Mars/Olympus"]) == 2
    assert "not a time zone" in capsys.readouterr().err


def test_shifts_and_days_sum_the_calendar_windows(tmp_path: Path, capsys):
    """Three shifts a day in Berlin; the production day begins at 06:00 local. The plant
    starts at 09:00 local (2027-01-15 08:00 UTC) and runs 30 h."""
    config = _config('{calendar: ["06:00", "14:00", "22:00"], timezone: Europe/Berlin}')
    run = plantrun.start(tmp_path, config, plant_text=PLANT, period=5.0, step=1.0)
    try:
        run.run_for(30 * 3600)
    finally:
        run.close()
    windows = run.of("balance")
    # Shifts ending 14:00, 22:00, 06:00, 14:00 local (the first one partial).
    assert len(windows) == 4
    shifts, _ = summarize(windows, Grouping("shift", ((6, 0), (14, 0), (22, 0)), "Europe/Berlin"))
    assert [g.key for g in shifts] == [
        "2027-01-15 06:00",
        "2027-01-15 14:00",
        "2027-01-15 22:00",
        "2027-01-16 06:00",
    ]
    from massgate.agent.commands.cli import main

    path = str(tmp_path / "config.yaml")
    args = ["report", path, "--from", "2027-01-15T00:00Z", "--to", "2027-01-17T00:00Z"]
    assert main([*args, "--by", "day", "--json"]) == 0
    days = json.loads(capsys.readouterr().out)["groups"]
    # The day of 2027-01-15 runs to 06:00 on the 16th: its three shifts.
    assert [(d["group"], d["windows"]) for d in days] == [("2027-01-15", 3), ("2027-01-16", 1)]
    first = days[0]
    assert first["in_kg"] == pytest.approx(sum(w["in_kg"] for w in windows[:3]))
    assert first["statuses"] == {"inconclusive": 1, "ok": 2}
    assert main([*args, "--by", "day"]) == 0
    out = capsys.readouterr().out
    assert "1 inconclusive, 2 ok" in out


def test_a_rolling_node_is_not_summed(tmp_path: Path, capsys):
    window = {"node": "tank", "window": "rolling", "batch": None, "window_start": None}
    windows = [{**window, "window_end": "2027-01-15T08:10:00Z"}]
    assert summarize(windows, Grouping("day")) == ([], ["tank"])


@pytest.mark.parametrize(
    ("outputs", "message"),
    [
        ("[product, {stream: scrap, class: scarp}]", "'scarp' is not an output class"),
        ("[product, {stream: scrap, kind: scrap}]", "an output is a stream's name or"),
        ("[product, {stream: product, class: scrap}]", "an output is listed twice: product"),
        ("[product, {stream: scarp, class: scrap}]", "no stream named 'scarp'"),
    ],
)
def test_output_classes_are_checked(outputs: str, message: str, tmp_path: Path):
    text = _config("10 min").replace("[product, {stream: scrap, class: scrap}]", outputs)
    with pytest.raises(ConfigError) as err:
        config_module.loads(text, path=tmp_path / "c.yaml")
    assert message in str(err.value)


def test_an_outer_node_keeps_the_classes_of_its_inner_nodes(tmp_path: Path):
    text = _config("10 min") + (
        "  - {name: line, inputs: [feed_a], outputs: [feed_b], window: 10 min, persistence: 0s}\n"
        "  - name: site\n    nodes: [line, tank]\n    window: 10 min\n    persistence: 0s\n"
    )
    config = config_module.loads(text, path=tmp_path / "c.yaml")
    terms = config_module.node_terms(config.nodes)
    assert terms["site"].outputs == ("product", "scrap")
    assert terms["site"].output_classes == (("scrap", "scrap"),)
    # The outer node may class it again: the reject is rework for the site.
    rework = "    outputs: [{stream: scrap, class: rework}]\n"
    again = text.replace("    nodes: [line, tank]\n", "    nodes: [line, tank]\n" + rework)
    terms = config_module.node_terms(config_module.loads(again, path=tmp_path / "c.yaml").nodes)
    assert terms["site"].output_classes == (("scrap", "rework"),)


def test_a_batch_without_data_sums_to_nothing_known_not_to_zero():
    window = {"node": "yard", "window": "batch", "batch": "C1-001", "campaign": None,
              "window_start": "2027-01-15T08:00:00Z", "window_end": "2027-01-15T09:00:00Z",
              "in_kg": None, "out_kg": None, "delta_inventory_kg": None, "imbalance_kg": None,
              "status": "inconclusive"}  # fmt: skip
    (group,), _ = summarize([window], Grouping("batch"))
    body = group.body()
    assert (body["windows"], body["windows_without_data"]) == (1, 1)
    assert body["in_kg"] is None
    assert body["unaccounted_kg"] is None
    assert body["outputs_kg"] == {}
