"""A simulated plant day with batches: a reactor on load cells runs twelve batches of a
recipe (charge, react with a purge to the flare, discharge, idle), its pumps switched by the
recipe's steps and the batch and campaign ids in a PLC's registers. Each batch's charge
comes by lorry, weighed on the weighbridge and entered per delivery against the charge
meter. The charge meter's zero has shifted by 7.2 kg/h (found while the reactor idles); the
product meter reads 1.5 % high from the seventh batch on. Yields and losses against the
plant's truth, every event raised once, every entry audited."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from massgate.agent.balance.yields import Grouping, latest, summarize
from massgate.drivers.sim.faults import Fault
from tests.agent.balance import plantrun
from tests.agent.publish.test_payload_schemas import problems

PLANT = """\
seed: 5
fluid: {density: 1000 kg/m3, at: 20 degC, expansion: 2e-4 1/K}
temperature: 25 degC
vessels:
  - {name: R-1, kind: hopper, mass: 500 kg, description: reactor on load cells}
lines:
  - {name: charge, from: outside, to: R-1, flow: 3 kg/s}
  - {name: product, from: R-1, to: outside, flow: 2.5 kg/s}
  - {name: purge, from: R-1, to: outside, flow: 0.05 kg/s, description: to the flare}
meters:
  - {name: ft201, profile: coriolis, line: charge, accuracy: 0.1 %}
  - {name: ft202, profile: coriolis, line: product, accuracy: 0.1 %}
  - {name: ft203, profile: coriolis, line: purge, accuracy: 0.5 %}
  - {name: wt201, profile: load_cell, vessel: R-1, accuracy: 0.5 kg}
faults: []
"""
CONFIG = """\
gateway: {site: s, id: g, state_dir: state}
devices:
  - {name: ft201, protocol: modbus_tcp, host: 127.0.0.1, port: 5020, profile: coriolis}
  - {name: ft202, protocol: modbus_tcp, host: 127.0.0.1, port: 5021, profile: coriolis}
  - {name: ft203, protocol: modbus_tcp, host: 127.0.0.1, port: 5022, profile: coriolis}
  - {name: wt201, protocol: modbus_tcp, host: 127.0.0.1, port: 5023, profile: load_cell}
  - name: plc
    protocol: modbus_tcp
    host: 127.0.0.1
    port: 5030
    points:
      - {name: batch, address: 0, type: uint16, unit: count}
      - {name: campaign, address: 1, type: uint16, unit: count}
streams:
  - {name: charge, mass_flow: ft201.mass_flow, accuracy: 0.1 %, low_flow_cutoff: 0.05 kg/s,
     zero_stability: 1 kg/h, compare_entries: true}
  - {name: product, mass_flow: ft202.mass_flow, accuracy: 0.1 %, low_flow_cutoff: 0.05 kg/s,
     zero_stability: 1 kg/h}
  - {name: purge, mass_flow: ft203.mass_flow, accuracy: 0.5 %, low_flow_cutoff: 0.01 kg/s}
inventories:
  - {name: r1, mass: wt201.net_weight, accuracy: 0.5 kg}
nodes:
  - name: reactor
    inputs: [charge]
    outputs: [product, {stream: purge, class: emission}]
    inventories: [r1]
    theoretical_yield: 98.5 %
    window: {batch: plc.batch, campaign: plc.campaign}
    tolerance: {relative: 0.5 %, fixed: 5 kg}
    persistence: 0s
    drift: false
    zero_check: {settle: 2 min, over: 5 min}
"""
BATCH = 7200.0  # s: a batch every two hours
CHARGE, REACT, DISCHARGE = 1800.0, 1800.0, 2124.0  # s: 5400 kg in, 90 kg purged, 5310 out
RUN = CHARGE + REACT + DISCHARGE + 36.0  # the batch register is cleared 36 s after discharge
ZERO = 7.2 / 3600  # kg/s: the charge meter's shifted zero
BIAS_FROM = 6  # the seventh batch
START = 60.0  # s the plant idles before the first batch (the agent's first readings)
POLL = 5.0  # s between the gateway's cycles: a day of plant in a quarter of a minute


def _recipe(run: plantrun.PlantRun, batches: int) -> None:
    """Each line's pump runs only in its step; everything stands still while idle."""
    for line in ("charge", "purge", "product"):
        run.plant.faults.add(Fault(kind="stop", target=line, start=0.0, end=START))
    for b in range(batches):
        base = START + b * BATCH
        steps = {
            "charge": [(base + CHARGE, base + BATCH)],
            "purge": [(base, base + CHARGE), (base + CHARGE + REACT, base + BATCH)],
            "product": [(base, base + CHARGE + REACT),
                        (base + CHARGE + REACT + DISCHARGE, base + BATCH)],
        }  # fmt: skip
        for line, stops in steps.items():
            for start, end in stops:
                run.plant.faults.add(Fault(kind="stop", target=line, start=start, end=end))


def _body(run: plantrun.PlantRun, kind: str) -> list[dict[str, Any]]:
    return [r.body for r in run.records if r.kind == kind]


def test_a_day_of_batches_against_the_plants_truth(tmp_path: Path):
    wall = plantrun.WALL0
    truths: list[dict[str, float]] = []
    answers = []
    run = plantrun.start(tmp_path, CONFIG, plant_text=PLANT, period=POLL, step=1.0)
    try:
        run.plant.wall_offset = wall
        run.gateway.clock = lambda: wall + run.now
        _recipe(run, 12)
        run.plant.faults.add(Fault(kind="zero", target="ft201", magnitude=ZERO))
        run.plant.faults.add(Fault(kind="bias", target="ft202", start=START + BIAS_FROM * BATCH,
                                   magnitude=0.015))  # fmt: skip
        run.plc.update(batch=0, campaign=0)
        run.run_for(START - POLL)
        for b in range(12):
            base = START + b * BATCH
            # The PLC sets the batch register a poll before the recipe starts the pumps.
            run.plc.update(batch=101 + b, campaign=1 + b // 6)
            run.run_for(POLL + RUN)
            run.plc.update(batch=0)
            run.run_for(POLL)  # the poll that reads the batch register cleared ends the window
            truth = run.plant.truth_between(wall + base, wall + base + RUN + POLL)
            truths.append(truth.lines)
            # The lorry's ticket: what it delivered, by the weighbridge (the fourth one 2 %
            # heavy: a ticket for another lorry's load, say).
            charged = truth.lines["charge"] * (1.02 if b == 3 else 1.0)
            answers.append(run.gateway.command({
                "command": "enter", "stream": "charge", "kg": charged, "by": "weighmaster",
                "ticket": f"WB-{b + 1:03d}", "from": wall + base, "to": wall + base + CHARGE + 5,
                "uncertainty_kg": 10.0,
            }))  # fmt: skip
            run.run_for(BATCH - RUN - 2 * POLL)
        published = [json.loads(m.payload) for m in run.outbox.take(10**7)]
    finally:
        run.close()
    assert all(a["ok"] for a in answers), answers

    # Twelve batches, each in its campaign.
    windows = latest(_body(run, "balance"))
    assert [(w["batch"], w["campaign"]) for w in windows] == [
        (str(101 + b), str(1 + b // 6)) for b in range(12)
    ]
    for b, (w, truth) in enumerate(zip(windows, truths, strict=True)):
        outputs = w["accounting"]["outputs_kg"]
        assert w["in_kg"] == pytest.approx(truth["charge"], rel=2e-3), b
        assert outputs["emission"] == pytest.approx(truth["purge"], rel=5e-3), b
        bias = 1.015 if b >= BIAS_FROM else 1.0
        assert outputs["product"] == pytest.approx(truth["product"] * bias, rel=2e-3), b
        assert w["accounting"]["yield"] == pytest.approx(
            truth["product"] * bias / truth["charge"], rel=3e-3
        )
        assert w["accounting"]["theoretical_yield"] == 0.985
        if b < BIAS_FROM:
            # The true yield is 5310 / 5400 = 98.3 %: the recipe's 98.5 % less 11 kg.
            assert w["status"] == "ok", b
            assert w["accounting"]["yield_gap_kg"] == pytest.approx(0.985 * 5400 - 5310, abs=15)
            assert abs(w["imbalance_kg"]) < 3 * w["uncertainty_kg"] + 5
        else:
            # The product meter reads 80 kg more than left: more out than came in.
            assert w["status"] == "alarm", b
            assert w["imbalance_kg"] == pytest.approx(-0.015 * truth["product"], rel=0.15)

    # Events: the balance alarm raised once (at the seventh batch, never cleared), the shifted
    # zero once (at the first idle), nothing else.
    alarms = _body(run, "alarm")
    assert [(a["event"], a.get("zero_check", {}).get("stream")) for a in alarms] == [
        ("zero_drift", "charge"),
        ("raised", None),
    ]
    zero, raised = alarms
    assert zero["zero_check"]["offset_kg_h"] == pytest.approx(7.2, rel=1e-3)
    assert raised["balance"]["batch"] == str(101 + BIAS_FROM)
    assert "an output meter reading high" in raised["hint"]

    # Every ticket a record, each against its meter: only the fourth is significant.
    entries = _body(run, "entry")
    assert [e["ticket"] for e in entries] == [f"WB-{b + 1:03d}" for b in range(12)]
    assert [e["comparison"]["significant"] for e in entries] == [b == 3 for b in range(12)]
    for e, truth in zip(entries, truths, strict=True):
        # The charge meter counted its shifted zero too (7.2 kg/h for half an hour); a pump
        # starting or stopping between two polls is integrated as a ramp, up to one poll of
        # its flow off at each end.
        assert e["comparison"]["metered_kg"] == pytest.approx(
            truth["charge"] + ZERO * CHARGE, abs=3.0 * POLL
        )
    for payload in published:
        assert problems(payload["kind"], payload) == [], payload

    # The day by campaign: the first campaign's yield is the plant's, its losses the purge.
    groups, _ = summarize(windows, Grouping("campaign"))
    first = groups[0].body()
    charged = sum(t["charge"] for t in truths[:6])
    assert first["yield"] == pytest.approx(sum(t["product"] for t in truths[:6]) / charged,
                                           rel=2e-3)  # fmt: skip
    assert first["known_loss_kg"] == pytest.approx(sum(t["purge"] for t in truths[:6]), rel=5e-3)
    assert abs(first["unaccounted_kg"]) < 3 * first["unaccounted_uncertainty_kg"] + 30
    assert groups[1].body()["statuses"] == {"alarm": 6}
