"""The whole pipeline on real parts: pymodbus slaves → agent → Mosquitto over TLS → subscriber.

Kilograms are held to the simulated plant's truth, the leak alarm to its timing, and what was
committed to what arrived, by sequence number.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import sqlite3
import time
from datetime import datetime
from pathlib import Path

from massgate.agent import config as config_module
from massgate.agent.commands.demo import site_config
from massgate.agent.runtime.pipeline import Agent, run
from massgate.drivers.sim.plant import Plant
from massgate.drivers.sim.plantspec import builtin
from massgate.drivers.sim.server import SimulatedSite
from tests.conftest import Broker, Subscriber, run_async

PERSISTENCE = 3.0
LEAK_AT = 12.0
LEAK_RATE = 1.0  # kg/s, about half the product flow
RUN_LIMIT = 45.0


def _wall(iso: str) -> float:
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


def test_pipeline_kilograms_alarm_and_delivery(
    broker: Broker, subscriber: Subscriber, tmp_path: Path
) -> None:
    plant = Plant(dataclasses.replace(builtin(), seed=7))
    state_dir = tmp_path / "state"
    seen: dict[str, float] = {}

    async def main() -> None:
        site = SimulatedSite(plant)
        served = await site.start()
        try:
            path = tmp_path / "site.yaml"
            path.write_text(
                site_config(
                    served,
                    state_dir=state_dir,
                    broker=broker.url,
                    ca=str(broker.pki.ca),
                    window="8s",
                    evaluate_every="500ms",
                    persistence=f"{PERSISTENCE:g}s",
                    totals_interval="2s",
                    poll_interval="100ms",
                )
            )
            config = config_module.load(path)
            shutdown = asyncio.Event()
            started = time.monotonic()

            def on_cycle(agent: Agent) -> None:
                elapsed = time.monotonic() - started
                if elapsed >= LEAK_AT and not plant.open_leaks():
                    plant.open_leak("product", LEAK_RATE)
                    seen["leak_wall"] = time.time()
                raised = [e for e in agent.gateway.alarms if e.event == "raised"]
                if raised and "raised" not in seen:
                    seen["raised"] = elapsed
                if ("raised" in seen and elapsed > seen["raised"] + 2.0) or elapsed > RUN_LIMIT:
                    shutdown.set()

            await run(config, shutdown=shutdown, on_cycle=on_cycle)
        finally:
            await site.stop()

    run_async(main())
    assert "raised" in seen, "the leak never raised the alarm"

    # Delivery: every committed record was acknowledged and arrived, none twice in this run.
    db = sqlite3.connect(state_dir / "state.sqlite")
    meta = dict(db.execute("SELECT key, value FROM meta").fetchall())
    committed = set(range(int(meta["first_seq"]), int(meta["next_seq"])))
    left = db.execute("SELECT count(*) FROM outbox").fetchone()[0]
    db.close()
    assert left == 0, f"{left} records were still in the outbox after shutdown"

    def all_arrived() -> bool:
        seqs = {m["seq"] for _, m, _ in subscriber.messages if "seq" in m}
        return seqs == committed

    assert subscriber.wait_for(all_arrived), "not every committed record reached the subscriber"
    seqs = [m["seq"] for _, m, _ in subscriber.messages if "seq" in m]
    assert len(seqs) == len(committed), (
        f"{len(seqs) - len(committed)} duplicates in a run without faults"
    )

    # Kilograms against truth, per stream, over exactly the periods the records cover.
    totals = subscriber.records("totals")
    assert len(totals) >= 5
    for stream, accuracy in (("feed", 0.002), ("product", 0.005)):
        periods = [s for t in totals for s in t["streams"] if s["stream"] == stream]
        periods = [p for p in periods if p["period_start"] is not None]
        for before, after in itertools.pairwise(periods):
            assert before["period_end"] == after["period_start"], (
                "totals periods must be contiguous"
            )
        reported = sum(p["mass_kg"] for p in periods)
        truth = plant.truth_between(
            _wall(periods[0]["period_start"]), _wall(periods[-1]["period_end"])
        )
        expected = truth.lines[stream]
        assert expected > 30.0
        assert abs(reported - expected) <= accuracy * expected, (stream, reported, expected)

    # The balance: healthy before the leak, alarm only after the persistence time.
    balances = subscriber.records("balance")
    assert balances
    before_leak = [
        b
        for b in balances
        if _wall(b["window_end"]) < seen["leak_wall"] and b["status"] != "inconclusive"
    ]
    assert len(before_leak) >= 4, "expected healthy, conclusive windows before the leak"
    assert all(b["status"] == "ok" for b in before_leak), [b["status"] for b in before_leak]
    alarms = subscriber.records("alarm")
    raised = [a for a in alarms if a["event"] == "raised"]
    assert len(raised) == 1, alarms
    alarm = raised[0]
    since, at = _wall(alarm["since"]), _wall(alarm["at"])
    assert since >= seen["leak_wall"], "the imbalance was outside tolerance before the leak"
    assert at - since >= PERSISTENCE - 1e-3, "raised before the persistence time"
    assert at - since <= PERSISTENCE + 1.0, "raised long after the persistence time"
    assert alarm["balance"]["imbalance_kg"] > alarm["balance"]["tolerance_kg"]
    exceeded = [b for b in balances if since <= _wall(b["window_end"]) < at]
    assert exceeded
    assert all(b["status"] == "warning" for b in exceeded)

    # Status: retained birth, then the clean-shutdown 'offline'.
    statuses = [m for t, m, _ in subscriber.messages if t.endswith("/status")]
    assert statuses[0]["status"] == "online"
    assert subscriber.wait_for(
        lambda: (
            [m for t, m, _ in subscriber.messages if t.endswith("/status")][-1]["status"]
            == "offline"
        )
    )
