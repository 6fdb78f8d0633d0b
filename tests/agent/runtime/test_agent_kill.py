"""The real agent (`massgate run` in its own process) killed with SIGKILL while it drains a
backlog, restarted, killed again: every sequence number arrives at least once, and the
duplicates are counted. And an unreadable database at start: moved aside, said, sent on."""

from __future__ import annotations

import signal
import sqlite3
import time
from collections import Counter
from pathlib import Path

from massgate.agent.core.records import Record
from massgate.agent.publish.link import ACK_POST
from massgate.agent.publish.publisher import AHEAD
from massgate.agent.store.outbox import ACK_BATCH, Outbox
from tests.conftest import Broker, Subscriber, free_port, start_agent

BACKLOG = 20_000
KILLS = 3
IN_FLIGHT = 20


def agent_config(tmp_path: Path, broker: Broker) -> Path:
    path = tmp_path / "agent.yaml"
    # The device answers nothing (nobody listens there): the agent keeps running and drains.
    path.write_text(
        f"""\
gateway: {{site: s, id: g, state_dir: {tmp_path / "state"}}}
devices:
  - {{name: ft101, protocol: modbus_tcp, host: 127.0.0.1, port: {free_port()}, profile: coriolis}}
outbox: {{drain_rate: 0}}
mqtt:
  brokers: [mqtts://127.0.0.1:{broker.port}]
  ca_file: {broker.pki.ca}
  in_flight: {IN_FLIGHT}
"""
    )
    return path


def unique(subscriber: Subscriber) -> set[int]:
    with subscriber.lock:
        return {m["seq"] for _, m, _ in subscriber.messages if "seq" in m}


def committed(state: Path) -> tuple[set[int], int]:
    db = sqlite3.connect(state)
    meta = dict(db.execute("SELECT key, value FROM meta").fetchall())
    left = db.execute("SELECT count(*) FROM outbox").fetchone()[0]
    db.close()
    return set(range(int(meta["first_seq"]), int(meta["next_seq"]))), int(left)


def test_sigkill_while_draining_loses_nothing(
    broker: Broker, subscriber: Subscriber, tmp_path: Path
):
    config = agent_config(tmp_path, broker)
    state = tmp_path / "state" / "state.sqlite"
    box = Outbox(state, max_bytes=256 * 1024 * 1024, site="s", gateway="g")
    for start_at in range(0, BACKLOG, 5000):
        box.put(
            [
                Record("telemetry", {"points": {"x": {"value": i, "quality": "good"}}}, 1.8e9 + i)
                for i in range(start_at, start_at + 5000)
            ]
        )
    box.close()
    log = tmp_path / "agent.log"
    kills = 0
    for k in range(1, KILLS + 1):
        agent = start_agent(config, log)
        try:
            target = k * BACKLOG // (KILLS + 1)
            assert subscriber.wait_for(lambda t=target: len(unique(subscriber)) >= t, 60), (
                log.read_text()
            )
        finally:
            agent.send_signal(signal.SIGKILL)
            agent.wait(timeout=10)
        kills += 1
    agent = start_agent(config, log)
    try:
        backlog_seqs, _ = committed(state)
        if not subscriber.wait_for(lambda: unique(subscriber) >= backlog_seqs, 60):
            missing = sorted(backlog_seqs - unique(subscriber))
            db = sqlite3.connect(state)
            still = db.execute("SELECT count(*) FROM outbox").fetchone()[0]
            raise AssertionError(
                f"{len(missing)} never arrived ({missing[:3]}..{missing[-3:]}); "
                f"{still} in the outbox\n{log.read_text()}"
            )
        time.sleep(0.5)  # let the agent commit a cycle of its own records, then stop it cleanly
    finally:
        agent.send_signal(signal.SIGTERM)
        assert agent.wait(timeout=30) == 0, log.read_text()
    seqs, left = committed(state)
    assert left == 0, f"{left} records still in the outbox after a clean stop"
    assert subscriber.wait_for(lambda: unique(subscriber) >= seqs, 15)
    with subscriber.lock:
        counts = Counter(m["seq"] for _, m, _ in subscriber.messages if "seq" in m)
    duplicates = sum(n - 1 for n in counts.values())
    print(
        f"SIGKILL x{kills} while draining: {len(seqs)} committed, {len(counts)} arrived, "
        f"{duplicates} duplicates"
    )
    assert set(counts) == seqs, "a sequence number never arrived, or one was invented"
    # A duplicate is a record sent before the kill whose deletion was not yet committed.
    assert duplicates <= kills * (ACK_BATCH + ACK_POST + AHEAD + IN_FLIGHT)


def test_an_unreadable_database_is_moved_aside_and_the_agent_says_so(
    broker: Broker, subscriber: Subscriber, tmp_path: Path
):
    config = agent_config(tmp_path, broker)
    state = tmp_path / "state" / "state.sqlite"
    state.parent.mkdir(parents=True)
    state.write_bytes(b"SQLite format 3\x00" + b"\xff" * 4000)  # a torn header
    log = tmp_path / "agent.log"
    agent = start_agent(config, log)
    try:

        def reset_alarm() -> bool:
            return any(a.get("event") == "outbox_reset" for a in subscriber.records("alarm"))

        assert subscriber.wait_for(reset_alarm, 30), log.read_text()
    finally:
        agent.send_signal(signal.SIGTERM)
        assert agent.wait(timeout=30) == 0, log.read_text()
    alarm = next(a for a in subscriber.records("alarm") if a.get("event") == "outbox_reset")
    aside = Path(alarm["aside"])
    assert aside.read_bytes().startswith(b"SQLite format 3\x00\xff")
    assert "moved aside" in log.read_text()
    _, left = committed(state)
    assert left == 0
