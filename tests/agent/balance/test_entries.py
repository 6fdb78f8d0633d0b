"""Quantities no meter reads (massgate enter): a manual stream's entries land in the window of
their time, a late one corrects the closed window it belongs to; tickets held against a meter
give a comparison with its significance. The plant is the built-in one: lorries' weighbridge
tickets (the manual stream) go into a yard node that FT-101 pumps out of."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from massgate.agent.commands.cli import main
from massgate.agent.runtime.commandserver import command_socket
from massgate.agent.runtime.gateway import Gateway
from tests.agent.balance import plantrun
from tests.agent.balance.test_balance_plant import DEVICES, PLANT
from tests.agent.balance.test_batch_commands import serving
from tests.agent.publish.test_payload_schemas import problems

CONFIG = (
    DEVICES.replace(
        "{name: feed_a, mass_flow: ft101.mass_flow, accuracy: 0.1 %}",
        "{name: feed_a, mass_flow: ft101.mass_flow, accuracy: 0.1 %, compare_entries: true}",
    )
    + """\
manual_streams:
  - {name: tickets, accuracy: 0.2 %, description: weighbridge WB-1}
nodes:
  - name: yard
    inputs: [tickets]
    outputs: [feed_a]
    window: {batch: command}
    tolerance: {relative: 0.5 %}
    persistence: 1 h
"""
)
assert "compare_entries" in CONFIG


def _command(run: plantrun.PlantRun, **request: Any) -> dict[str, Any]:
    return run.gateway.command(request)


def _at(run: plantrun.PlantRun, seconds: float) -> float:
    """The wall time `seconds` into the plant run."""
    return plantrun.WALL0 + seconds


def test_entries_land_in_their_window_and_a_late_one_corrects_it(tmp_path: Path):
    clock = {"now": plantrun.WALL0}

    def step(run: plantrun.PlantRun, seconds: float) -> None:
        run.run_for(seconds)
        clock["now"] = _at(run, run.now)

    with plantrun.running(tmp_path, CONFIG, PLANT) as run:
        run.gateway.clock = lambda: clock["now"]  # the plant's wall clock
        start = {"command": "batch", "node": "yard", "action": "start", "by": "op"}
        end = {"command": "batch", "node": "yard", "action": "end", "by": "op"}
        step(run, 300)
        assert _command(run, **start, batch="B1")["ok"]
        moved = run.plant.truth().lines["feed"]
        step(run, 1200)
        b1 = run.plant.truth().lines["feed"] - moved
        assert _command(run, **end)["ok"]
        step(run, 60)
        # B1 closed with no ticket: all it pumped out looks missing, outside tolerance.
        (first,) = [b for b in run.of("balance") if b["batch"] == "B1"]
        assert (first["in_kg"], first["status"], first["revision"]) == (0.0, "warning", 0)
        # The ticket of the lorry unloaded during B1, entered late.
        ticket = {"command": "enter", "stream": "tickets", "by": "weighmaster"}
        answer = _command(run, **ticket, kg=b1, time=_at(run, 900), ticket="WB-0001")
        assert answer["ok"], answer
        assert answer["message"].endswith("; 1 closed window(s) corrected")
        assert answer["entry"]["corrected"] == [
            {"node": "yard", "window_start": first["window_start"],
             "window_end": first["window_end"], "revision": 1}
        ]  # fmt: skip
        corrected = run.gateway.pending[-2].body
        assert (corrected["batch"], corrected["revision"]) == ("B1", 1)
        assert corrected["in_kg"] == pytest.approx(b1)
        assert corrected["status"] == "ok"
        assert abs(corrected["imbalance_kg"]) < 0.005 * b1
        # Its uncertainty now counts the ticket's ±0.2 % too.
        assert corrected["uncertainty_kg"] > first["uncertainty_kg"]
        # The same ticket twice, a time to come, a metered stream without a delivery span.
        again = _command(run, **ticket, kg=b1, time=_at(run, 900), ticket="WB-0001")
        assert "ticket WB-0001 of tickets was entered at" in again["error"]
        future = _command(run, **ticket, kg=1.0, time=clock["now"] + 3600)
        assert "is in the future" in future["error"]
        assert (
            "from: expected a number"
            in _command(run, command="enter", stream="feed_a", kg=1.0, time=clock["now"], by="x")[
                "error"
            ]
        )
        assert (
            "is metered: entries are held against its meter"
            in _command(run, command="enter", stream="product", kg=1.0, time=clock["now"], by="x")[
                "error"
            ]
        )
        assert "expected a number" in _command(run, **ticket, kg="12 t", time=clock["now"])["error"]
        # B2: its ticket comes while it runs: in its window from the start, no correction.
        assert _command(run, **start, batch="B2")["ok"]
        moved = run.plant.truth().lines["feed"]
        step(run, 600)
        b2 = run.plant.truth().lines["feed"] - moved
        answer = _command(run, **ticket, kg=b2, time=_at(run, run.now - 300), ticket="WB-0002")
        assert answer["entry"]["corrected"] == []
        assert _command(run, **end)["ok"]
        step(run, 60)
        published = [json.loads(m.payload) for m in run.outbox.take(10**6)]
    (second,) = [b for b in run.of("balance") if b["batch"] == "B2"]
    assert (second["revision"], second["status"]) == (0, "ok")
    assert second["in_kg"] == pytest.approx(b2)
    entries = [p for p in published if p["kind"] == "entry"]
    assert [e["ticket"] for e in entries] == ["WB-0001", "WB-0002"]
    for payload in entries + [p for p in published if p["kind"] == "balance"]:
        assert problems(payload["kind"], payload) == [], payload
    # The report counts B1 once, as corrected.
    from massgate.agent.balance.yields import Grouping, latest, summarize

    groups, _ = summarize(latest(run.of("balance")), Grouping("batch"))
    assert [(g.key, g.windows, round(g.in_kg, 3)) for g in groups] == [
        ("B1", 1, round(b1, 3)),
        ("B2", 1, round(second["in_kg"], 3)),
    ]
    # The entries are kept with the totals: a restart has them.
    again = plantrun.beside(run, tmp_path, CONFIG, gateway="g")
    try:
        kept = again.gateway.manual["tickets"]
        assert [e.ticket for e in kept.entries] == ["WB-0001", "WB-0002"]
        assert kept.total == pytest.approx(b1 + b2)
    finally:
        again.close()


def test_a_ticket_is_held_against_the_meter_of_the_same_delivery(tmp_path: Path, capsys):
    config = tmp_path / "config.yaml"
    with plantrun.running(tmp_path, CONFIG, PLANT) as run:
        run.plant.wall_offset = plantrun.WALL0  # the plant's wall clock is the gateway's
        run.gateway.clock = lambda: plantrun.WALL0 + run.now
        run.run_for(600)
        socket_path = command_socket(run.gateway.config.health.socket)
        before = run.plant.truth_between(_at(run, 100), _at(run, 400)).lines["feed"]
        args = ["enter", str(config), "--stream", "feed_a", "--by", "weighmaster"]
        span = ["--from", "2027-01-15T08:01:40Z", "--to", "2027-01-15T08:06:40Z"]
        with serving(socket_path, run.gateway.command):
            assert main([*args, *span, "--quantity", f"{before:.3f} kg", "--ticket", "A"]) == 0
            assert "kg metered: " in capsys.readouterr().out
            heavy = f"{before * 1.02:.3f} kg"
            assert main([*args, *span, "--quantity", heavy, "--ticket", "B", "--json"]) == 0
            entry = json.loads(capsys.readouterr().out)
            # A ticket is held against the meter once.
            assert main([*args, *span, "--quantity", heavy, "--ticket", "B"]) == 1
            assert "ticket B of feed_a was entered at" in capsys.readouterr().err
            # Before the meter was read: refused, saying what is kept.
            early = ["--from", "2027-01-15T07:00:00Z", "--to", "2027-01-15T07:10:00Z"]
            assert main([*args, *early, "--quantity", "1 t"]) == 1
            assert "is not kept (kept: 2027-01-15T08:00:0" in capsys.readouterr().err
            assert main([*args, "--quantity", "1 t"]) == 2
            assert "give the delivery's --from and --to" in capsys.readouterr().err
            assert main(["enter", str(config), "--stream", "tickets", "--quantity", "1 t",
                         *span]) == 2  # fmt: skip
            assert "--from and --to are for a meter's" in capsys.readouterr().err
        run.run_for(2)  # the cycle that commits them
        # A reload carries the meter's last 12 h with the meter (the pipeline's Carried):
        # a ticket for a delivery before the reload is still held against it.
        carried, histories = dict(run.gateway.streams), dict(run.gateway.history)
        reloaded = Gateway(run.gateway.config, run.outbox, carried=carried, histories=histories)
        reloaded.clock = run.gateway.clock
        ticket = {"command": "enter", "stream": "feed_a", "kg": before, "by": "w", "ticket": "C"}
        answer = reloaded.command({**ticket, "from": _at(run, 100), "to": _at(run, 400)})
        assert answer["ok"] is True, answer
        assert answer["entry"]["comparison"]["metered_kg"] == pytest.approx(before, rel=2e-3)
    first, second = [r.body for r in run.records if r.kind == "entry"]
    assert second == entry  # what --json printed is the record
    assert first["comparison"]["metered_kg"] == pytest.approx(before, rel=2e-3)
    assert abs(first["comparison"]["z"]) < 2.576
    assert first["comparison"]["significant"] is False
    assert entry["comparison"]["relative"] == pytest.approx(0.02, abs=2e-3)
    assert entry["comparison"]["significant"] is True
    assert entry["from"] == "2027-01-15T08:01:40.000000Z"


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        ("{name: tickets, accuracy: 0.2 %", "{name: feed_b, accuracy: 0.2 %",
         "'feed_b' is already a metered stream"),
        ("inputs: [tickets]", "inputs: [tickest]", "no stream named 'tickest'"),
        ("window: {batch: command}", "window: 10 min",
         "tickets is a manual stream: its entries come in lumps"),
        ("    persistence: 1 h\n", "    persistence: 1 h\n    basis: dry\n",
         "each stream: tickets, feed_a names no 'moisture'"),
        ("{name: tickets, accuracy: 0.2 %", "{name: tickets, accuracy: 2 kg",
         "a fraction is expected"),
        ("    persistence: 1 h\n",
         "    persistence: 1 h\nbalance:\n  reconciliation: {window: 10 min}\n",
         "tickets is a manual stream: reconciliation weighs meters"),
    ],
)  # fmt: skip
def test_manual_stream_configuration_errors(tmp_path: Path, old: str, new: str, message: str):
    from massgate.agent import config as config_module
    from massgate.agent.core.yamlsource import ConfigError

    assert old in CONFIG
    with pytest.raises(ConfigError) as err:
        config_module.loads(CONFIG.replace(old, new), path=tmp_path / "c.yaml")
    assert message in str(err.value)


STOCK = (
    DEVICES.replace(
        "inventories:\n",
        "inventories:\n  - {name: pallets, count: entry, unit_mass: 50 kg, accuracy: 1 kg}\n",
    )
    + """\
nodes:
  - name: store
    inputs: [feed_a]
    inventories: [pallets]
    window: {batch: command}
    tolerance: {fixed: 50 kg, relative: 0.5 %}
    persistence: 0s
"""
)


def test_a_stocktake_of_work_in_progress_closes_the_batch(tmp_path: Path, capsys):
    """The feed is palletized at 50 kg a pallet; nobody counts pallets automatically. The
    store is counted at the batch's start and end (massgate enter --inventory --count)."""
    config = tmp_path / "config.yaml"
    with plantrun.running(tmp_path, STOCK, PLANT) as run:
        socket_path = command_socket(run.gateway.config.health.socket)
        args = ["enter", str(config), "--inventory", "pallets", "--by", "storeman"]
        start = {"command": "batch", "node": "store", "action": "start", "by": "op", "batch": "S1"}
        with serving(socket_path, run.gateway.command):
            assert main([*args, "--count", "0"]) == 0
            assert capsys.readouterr().out == "pallets: 0 units, 0 kg, from now on\n"
            run.run_for(4)
            assert run.gateway.command(start)["ok"]
            before = run.plant.truth().lines["feed"]
            run.run_for(1200)
            pallets = round((run.plant.truth().lines["feed"] - before) / 50)
            assert main([*args, "--count", str(pallets), "--ticket", "ST-2"]) == 0
            capsys.readouterr()
            assert run.gateway.command({**start, "action": "end"})["ok"]
            run.run_for(4)
            assert main([*args, "--count", "-1"]) == 2
            assert "--count, the units counted" in capsys.readouterr().err
            assert main([*args, "--count", "3", "--quantity", "2 t"]) == 2
            assert "no --quantity, --time or --from" in capsys.readouterr().err
            assert main(["enter", str(config), "--stream", "feed_a", "--count", "3"]) == 2
            assert main(["enter", str(config), "--inventory", "nowhere", "--count", "3"]) == 2
            assert "no inventory counted by entry named 'nowhere' (pallets)" in (
                capsys.readouterr().err
            )
        published = [json.loads(m.payload) for m in run.outbox.take(10**6)]
    (window,) = [b for b in run.of("balance") if b["node"] == "store"]
    assert window["delta_inventory_kg"] == pallets * 50
    assert abs(window["imbalance_kg"]) <= 25 + 1
    assert window["status"] == "ok"
    stocktakes = [p for p in published if p["kind"] == "entry"]
    assert [(e["inventory"], e["count"], e["ticket"]) for e in stocktakes] == [
        ("pallets", 0, None),
        ("pallets", pallets, "ST-2"),
    ]
    for payload in stocktakes:
        assert problems("entry", payload) == [], payload
    # The last count stands after a restart.
    again = plantrun.beside(run, tmp_path, STOCK, gateway="g")
    try:
        assert again.gateway.inventories["pallets"].mass_at(0.0) == pallets * 50
    finally:
        again.close()
