"""Every topic's payload has a JSON Schema in agent/schemas; real payloads, made by the
pipeline on the simulated plant with faults that raise every kind of event, are held to them."""

from __future__ import annotations

import json
from collections import Counter
from importlib import resources
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft202012Validator
from referencing import Registry, Resource

from massgate.agent.publish.publisher import Publisher
from massgate.agent.runtime.gateway import outbox_reset_record
from massgate.agent.store.outbox import Outbox
from massgate.drivers.sim.faults import Fault
from tests.agent.balance import plantrun
from tests.agent.balance.test_balance_plant import MAGMETER_CONFIG, MAGMETER_PLANT
from tests.conftest import mqtt_config

KINDS = ("telemetry", "totals", "hourly", "audit", "balance", "alarm", "reconciliation")
ON_DEMAND = ("entry",)  # made by an operator's command, not by the plant


def _schemas() -> dict[str, dict[str, Any]]:
    folder = resources.files("massgate.agent") / "schemas"
    found = {}
    for entry in folder.iterdir():
        if entry.name.endswith(".schema.json"):
            found[entry.name.removesuffix(".schema.json")] = json.loads(entry.read_text())
    return found


SCHEMAS = _schemas()
REGISTRY = Registry().with_resources(
    (s["$id"], Resource.from_contents(s)) for s in SCHEMAS.values()
)


def validator(kind: str) -> Draft202012Validator:
    return Draft202012Validator(SCHEMAS[kind], registry=REGISTRY)


def problems(kind: str, payload: dict[str, Any]) -> list[str]:
    return [f"{list(e.absolute_path)}: {e.message}" for e in validator(kind).iter_errors(payload)]


def test_every_topic_has_a_valid_schema():
    assert set(SCHEMAS) == {*KINDS, *ON_DEMAND, "envelope", "status"}
    for schema in SCHEMAS.values():
        Draft202012Validator.check_schema(schema)


def test_real_payloads_of_every_kind_match_their_schema(tmp_path: Path):
    run = plantrun.start(tmp_path, MAGMETER_CONFIG, plant_text=MAGMETER_PLANT, period=2.0, step=0.5)
    # A biased meter (a gross error, raised and cleared by reconciliation), then a leak
    # (node alarms, drift), and past a UTC hour (hourly records).
    run.plant.faults.add(Fault(kind="bias", target="ft103", start=1800, magnitude=0.02))
    run.plant.faults.add(Fault(kind="leak", target="feed", start=2400, magnitude=0.04))
    # A meter in doubt for a minute (its totals say how many samples).
    run.plant.faults.add(
        Fault(kind="alarm", target="ft101", start=3600, end=3660, point="drive_gain_high")
    )
    try:
        run.run_for(3700)
        payloads = [json.loads(m.payload) for m in run.outbox.take(10**7)]
    finally:
        run.close()
    seen = Counter(p["kind"] for p in payloads)
    assert set(seen) == set(KINDS), seen
    events = Counter((a["event"], "gross_error" in a) for a in payloads if a["kind"] == "alarm")
    assert {("raised", True), ("raised", False), ("drift", False)} <= set(events), events
    for payload in payloads:
        assert problems(payload["kind"], payload) == [], payload
    under = Counter[str]()
    for totals in (p for p in payloads if p["kind"] == "totals"):
        for stream in totals["streams"]:
            under.update(stream.get("meter_alarms", {}))
            assert stream["stream"] == "feed_a" or "meter_alarms" not in stream
    assert under == {"ft101.drive_gain_high": 30}  # 60 s, a sample every 2 s


def test_status_and_outbox_reset_payloads_match_their_schemas(tmp_path: Path):
    path = tmp_path / "state.sqlite"
    path.write_bytes(b"not a database" * 100)
    outbox = Outbox(path, max_bytes=10_000_000, site="s", gateway="g")
    outbox_reset_record(outbox)
    (reset,) = [json.loads(m.payload) for m in outbox.take(10)]
    assert problems("alarm", reset) == []
    config = mqtt_config(8883, ca=None)
    publisher = Publisher(outbox, config, "s", "g")
    online = json.loads(publisher.status_payload("online"))
    offline = json.loads(publisher.status_payload("offline", reason="stopped"))
    outbox.close()
    assert problems("status", online) == []
    assert problems("status", offline) == []


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (lambda p: p.update(surprise=1), "Unevaluated properties"),
        (lambda p: p.pop("imbalance_kg"), "'imbalance_kg' is a required property"),
        (lambda p: p.update(seq="12"), "is not of type 'integer'"),
        (lambda p: p.update(created="2027-01-15 08:00"), "does not match"),
        (lambda p: p.pop("clock_synced"), "'clock_synced' is a required property"),
    ],
)
def test_the_schemas_refuse_what_the_agent_does_not_send(change: Any, expected: str):
    payload = {
        "schema": 1,
        "kind": "balance",
        "site": "s",
        "gateway": "g",
        "epoch": "0123456789abcdef",
        "seq": 7,
        "created": "2027-01-15T08:00:00.000000Z",
        "clock_synced": True,
        "node": "tank",
        "window": "rolling",
        "batch": None,
        "window_start": "2027-01-15T07:50:00.000000Z",
        "window_end": "2027-01-15T08:00:00.000000Z",
        **dict.fromkeys(
            (
                "in_kg",
                "out_kg",
                "generation_kg",
                "consumption_kg",
                "inventory_start_kg",
                "inventory_end_kg",
                "delta_inventory_kg",
                "imbalance_kg",
                "relative",
                "uncertainty_kg",
                "tolerance_kg",
                "coverage",
            ),
            0.0,
        ),
        "status": "ok",
        "alarm_active": False,
        "cusum": {"high": 0.0, "low": 0.0},
    }
    assert problems("balance", payload) == []
    change(payload)
    found = problems("balance", payload)
    assert any(expected in p for p in found), found
