"""The whole upstream path on real parts: the simulated plant on pymodbus slaves, two agents
(one meters the feed, the other the product and the tank's level), a TLS Mosquitto that is
restarted midway, and `massgate ingest run` with a node across both gateways, SIGKILLed midway
and started again. The database's kilograms are held to the plant's truth, every record is
accounted for, and the tank's balance is judged on both gateways' data."""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import itertools
import json
import os
import signal
import sqlite3
import subprocess
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import psycopg
from paho.mqtt.enums import CallbackAPIVersion

from massgate.agent.commands.sim import tcp_devices
from massgate.drivers.sim.plant import Plant
from massgate.drivers.sim.plantspec import builtin
from massgate.drivers.sim.server import SimulatedSite
from tests.conftest import Broker, run_async, until_async

LIMIT = 90.0  # s any one phase may take at most
within = functools.partial(until_async, limit=LIMIT)  # a phase's condition, the plant serving
CLI = [sys.executable, "-m", "massgate.agent.commands.cli"]
WATER = (
    "{model: linear, reference: 998.2 kg/m3, at: 20 degC, expansion: 2.1e-4 1/K, "
    "temperature: tt102.temperature}"
)


def agent_config(gateway: str, devices: list[str], body: str, broker: Broker, state: Path) -> str:
    return f"""\
gateway: {{site: north, id: {gateway}, state_dir: {state}}}
mqtt: {{brokers: ["{broker.url}"], ca_file: {broker.pki.ca}}}
devices:
{chr(10).join(devices)}
{body}
totals: {{interval: 1s, engine: python}}
telemetry: {{interval: 5s}}
"""


SKID_1 = """\
streams:
  - {name: feed, mass_flow: ft101.mass_flow, accuracy: 0.2 %, max_gap: 5s}
"""
SKID_2 = f"""\
streams:
  - {{name: product, volume_flow: ft102.volume_flow, density: {WATER}, accuracy: 0.5 %,
     max_gap: 5s}}
inventories:
  - {{name: t100, level: lt100.level, area: 1.0 m2, density: {WATER}, accuracy: 1 mm}}
"""


def ingest_config(broker: Broker, database: str) -> str:
    return f"""\
mqtt: {{brokers: ["{broker.url}"], ca_file: {broker.pki.ca}, client_id: ingest-site}}
database: {{url: "{database}"}}
take: {{sites: [north]}}
balances:
  every: 0.5 s
  publish: true
  nodes:
    - name: tank_t100
      inputs: [skid-1/feed]
      outputs: [skid-2/product]
      inventories: [skid-2/t100]
      window: 10 s
      evaluate_every: 1 s
      tolerance: {{fixed: 0.5 kg, relative: 0.5 %, sigma: 3}}
      persistence: 3 s
"""


def last_seq(state: Path) -> int:
    """The last sequence number an agent committed (its outbox's meta)."""
    db = sqlite3.connect(state / "state.sqlite")
    try:
        (next_seq,) = db.execute("SELECT value FROM meta WHERE key = 'next_seq'").fetchone()
    finally:
        db.close()
    return int(next_seq) - 1


def _wall(stamp: str) -> float:
    return datetime.fromisoformat(stamp).timestamp()


class Database:
    def __init__(self, url: str) -> None:
        self.url = url

    def one(self, sql: str, *args: Any) -> Any:
        try:
            with psycopg.connect(self.url) as conn:
                row = conn.execute(sql, args).fetchone()
        except psycopg.errors.UndefinedTable:
            return None  # not made yet
        return row[0] if row else None

    def all(self, sql: str, *args: Any) -> list[tuple[Any, ...]]:
        with psycopg.connect(self.url) as conn:
            return conn.execute(sql, args).fetchall()

    def judged_to(self) -> float:
        at = self.one(
            "SELECT extract(epoch FROM evaluated_to) FROM massgate.site_progress "
            "WHERE node = 'tank_t100'"
        )
        return float(at) if at is not None else 0.0


def test_a_tank_across_two_gateways_through_a_broker_restart_and_a_killed_ingest(
    pki: Any, database: str, tmp_path: Path
):
    broker = Broker(pki, tmp_path, pki.server_cert, pki.server_key, persistent=True)
    broker.start()
    plant = Plant(dataclasses.replace(builtin(), seed=11))
    db = Database(database)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    processes: dict[str, subprocess.Popen[bytes]] = {}
    logs = {name: tmp_path / f"{name}.log" for name in ("ingest", "skid-1", "skid-2")}

    def start(name: str, *args: str) -> None:
        with logs[name].open("ab") as log:
            processes[name] = subprocess.Popen(
                [*CLI, *args], env=env, stdout=log, stderr=subprocess.STDOUT
            )

    def said(name: str) -> str:
        return logs[name].read_text() if logs[name].exists() else ""

    # The site's results as the ingest publishes them (balances.publish).
    published: list[dict[str, Any]] = []
    watcher = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    watcher.tls_set(ca_certs=str(broker.pki.ca))
    watcher.on_connect = lambda c, *_: c.subscribe("massgate/north/site/balance/#", qos=1)
    watcher.on_message = lambda c, u, m: published.append(json.loads(m.payload))

    async def main() -> None:
        site = SimulatedSite(plant)
        served = await site.start()
        try:
            devices = tcp_devices(served, poll_interval="100ms")
            mine = {
                "skid-1": [d for d in devices if "name: ft101," in d],
                "skid-2": [d for d in devices if any(f"name: {m}," in d for m in
                                                     ("ft102", "tt102", "lt100"))],
            }  # fmt: skip
            for gateway, body in (("skid-1", SKID_1), ("skid-2", SKID_2)):
                path = tmp_path / f"{gateway}.yaml"
                state = tmp_path / f"state-{gateway}"
                path.write_text(agent_config(gateway, mine[gateway], body, broker, state))
            ingest = tmp_path / "ingest.yaml"
            ingest.write_text(ingest_config(broker, database))
            start("ingest", "ingest", "run", str(ingest))
            assert await within(lambda: "ingest: subscribed" in said("ingest")), said("ingest")
            start("skid-1", "run", str(tmp_path / "skid-1.yaml"))
            start("skid-2", "run", str(tmp_path / "skid-2.yaml"))

            # The tank is judged on both gateways' totals.
            assert await within(lambda: db.judged_to() > 0), said("ingest")
            first = db.judged_to()
            assert await within(lambda: db.judged_to() > first + 10)
            # The broker goes away and comes back (its sessions kept on disk).
            await asyncio.to_thread(broker.restart)
            mark = db.judged_to()
            assert await within(lambda: db.judged_to() > mark + 10), said("ingest")
            # The ingest is killed, with records in flight, and started again.
            processes["ingest"].kill()
            processes["ingest"].wait()
            start("ingest", "ingest", "run", str(ingest))
            watcher.connect("127.0.0.1", broker.port)
            watcher.loop_start()
            mark = db.judged_to()
            assert await within(lambda: db.judged_to() > mark + 10), said("ingest")
            assert await within(lambda: len(published) >= 5)
            for gateway in ("skid-1", "skid-2"):
                processes[gateway].send_signal(signal.SIGTERM)
            for gateway in ("skid-1", "skid-2"):
                assert await asyncio.to_thread(processes[gateway].wait, LIMIT) == 0, said(gateway)

            # Everything the gateways made is stored; the tank is judged up to their end.
            made = {g: last_seq(tmp_path / f"state-{g}") for g in ("skid-1", "skid-2")}

            def all_in() -> bool:
                rows = db.all("SELECT gateway, missing, last_seq FROM massgate.accounting")
                return {g: n for g, m, n in rows if m == 0} == made

            assert await within(all_in), db.all("SELECT * FROM massgate.accounting")
            ends = db.all(
                "SELECT gateway, extract(epoch FROM max(period_end)) FROM massgate.totals "
                "GROUP BY gateway"
            )
            last = min(float(end) for _, end in ends)
            assert await within(lambda: db.judged_to() >= last - 1.0), (db.judged_to(), last)
        finally:
            watcher.disconnect()
            watcher.loop_stop()
            for process in processes.values():
                if process.poll() is None:
                    process.send_signal(signal.SIGTERM)
            for process in processes.values():
                try:
                    process.wait(30)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
            await site.stop()
            broker.stop()

    run_async(main())

    # Every record accounted for, none stored twice.
    assert db.all("SELECT sum(unexplained), sum(missing) FROM massgate.accounting") == [(0, 0)]
    # Kilograms against the plant's truth, per stream, over the periods the records cover.
    for gateway, stream, accuracy in (("skid-1", "feed", 0.002), ("skid-2", "product", 0.005)):
        periods = db.all(
            "SELECT period_start, period_end, mass_kg FROM massgate.totals WHERE gateway = %s "
            "AND stream = %s AND period_start IS NOT NULL ORDER BY seq",
            gateway,
            stream,
        )
        for before, after in itertools.pairwise(periods):
            assert before[1] == after[0], "totals periods are contiguous"
        reported = sum(mass for _, _, mass in periods)
        truth = plant.truth_between(periods[0][0].timestamp(), periods[-1][1].timestamp())
        assert truth.lines[stream] > 30.0
        assert abs(reported - truth.lines[stream]) <= accuracy * truth.lines[stream], (
            stream,
            reported,
            truth.lines[stream],
        )
    # The tank across the two gateways: judged every second, balanced, never alarmed.
    windows = db.all(
        "SELECT status, payload FROM massgate.site_balances WHERE node = 'tank_t100' "
        "ORDER BY window_end"
    )
    ends = [_wall(p["window_end"]) for _, p in windows]
    assert ends == [ends[0] + i for i in range(len(ends))]
    statuses = [s for s, _ in windows]
    print(f"{len(statuses)} windows: {statuses.count('ok')} ok")
    assert statuses.count("ok") >= len(statuses) - 12, statuses  # the first window fills
    assert set(statuses) <= {"ok", "inconclusive"}, statuses
    assert db.all("SELECT count(*) FROM massgate.site_alarms WHERE event = 'raised'") == [(0,)]
    # What the tank took in, window by window, is what the feed line moved (the meter's
    # accuracy, and the interpolation within a one-second totals period at each end).
    for _, payload in windows[-5:]:
        truth = plant.truth_between(_wall(payload["window_start"]), _wall(payload["window_end"]))
        assert abs(payload["in_kg"] - truth.lines["feed"]) <= 0.01 * truth.lines["feed"], payload
    # What was published is what was stored.
    stored = {p["window_end"] for _, p in windows}
    assert {p["window_end"] for p in published} <= stored
    assert {p["node"] for p in published} == {"tank_t100"}
    # What `massgate ingest report` says of it, as JSON and as a table.
    report = [*CLI, "ingest", "report", str(tmp_path / "ingest.yaml")]
    done = subprocess.run([*report, "--json"], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    said_json = json.loads(done.stdout)
    assert said_json["unexplained"] == 0
    (node,) = said_json["site_balances"]
    assert (node["node"], node["status"], node["alarms"]) == ("tank_t100", "ok", 0)
    table = subprocess.run(report, capture_output=True, text=True, check=False).stdout
    assert "node across gateways" in table
    assert "tank_t100" in table
