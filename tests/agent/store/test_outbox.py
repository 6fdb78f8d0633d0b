"""The store-and-forward contract, on a file and in memory."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from massgate.agent.core.records import Record
from massgate.agent.store.outbox import Outbox


@pytest.fixture(params=["file", "memory"])
def outbox(request: pytest.FixtureRequest, tmp_path: Path):
    path = tmp_path / "state.sqlite" if request.param == "file" else ":memory:"
    box = Outbox(path, max_bytes=10_000_000, site="s", gateway="g")
    yield box
    box.close()


def _records(kind: str, n: int, start: int = 0) -> list[Record]:
    return [Record(kind, {"i": start + i}, 1_800_000_000.0 + i) for i in range(n)]


def test_put_take_ack(outbox: Outbox):
    b = outbox.last_seq()  # seq b + i is the i-th record put
    seqs = outbox.put(_records("totals", 3) + _records("alarm", 2))
    assert seqs == [b + 1, b + 2, b + 3, b + 4, b + 5]
    taken = outbox.take(10)
    # Alarms first, then oldest first within a priority.
    assert [m.seq - b for m in taken] == [4, 5, 1, 2, 3]
    assert taken[0].topic == "massgate/s/g/alarm"
    payload = json.loads(taken[0].payload)
    assert payload["seq"] == b + 4
    assert payload["schema"] == 1
    assert payload["kind"] == "alarm"
    assert payload["epoch"] == outbox.epoch
    assert payload["created"].endswith("Z")
    assert [m.seq - b for m in outbox.take(2, exclude={b + 4, b + 5})] == [1, 2]
    outbox.ack([b + 4, b + 1])
    # Deleted with the next commit; gone for take() and depth() at once.
    assert [m.seq - b for m in outbox.take(10)] == [5, 2, 3]
    assert outbox.depth() == 3
    assert outbox.acked_waiting() == 2
    outbox.put([])  # nothing to commit: the deletions still wait
    assert outbox.acked_waiting() == 2
    outbox.put(_records("totals", 1, 3))
    assert outbox.acked_waiting() == 0
    assert outbox.conn.execute("SELECT count(*) FROM outbox").fetchone()[0] == 4
    assert outbox.last_seq() == b + 6


def test_sequence_numbers_survive_a_restart(tmp_path: Path):
    path = tmp_path / "state.sqlite"
    first = Outbox(path, max_bytes=10_000_000, site="s", gateway="g")
    seqs = first.put(_records("balance", 3))
    first.ack(seqs)
    last = first.put(_records("balance", 1))[0]
    epoch = first.epoch
    first.close()
    second = Outbox(path, max_bytes=10_000_000, site="s", gateway="g")
    assert second.put(_records("balance", 1)) == [last + 1]
    assert json.loads(second.take(2)[1].payload)["epoch"] == epoch
    second.close()


def test_a_lost_database_never_repeats_a_sequence_number(tmp_path: Path):
    path = tmp_path / "state.sqlite"
    first = Outbox(path, max_bytes=10_000_000, site="s", gateway="g")
    used = first.put(_records("totals", 1000))
    epoch = first.epoch
    first.close()
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    second = Outbox(path, max_bytes=10_000_000, site="s", gateway="g")
    fresh = second.put(_records("totals", 1))
    assert fresh[0] > max(used)
    assert second.epoch != epoch
    second.close()


def test_totals_commit_with_records(outbox: Outbox):
    outbox.put(_records("totals", 1), totals={"feed": {"state": [1.0], "reported": [0, 0, 0]}})
    assert outbox.load_totals() == {"feed": {"state": [1.0], "reported": [0, 0, 0]}}


def test_full_outbox_drops_lowest_priority_oldest_first(tmp_path: Path):
    box = Outbox(tmp_path / "s.sqlite", max_bytes=2_000, site="s", gateway="g")
    box.put(_records("alarm", 3) + _records("balance", 3))
    box.put(_records("telemetry", 10))
    kept = {json.loads(m.payload)["kind"] for m in box.take(100)}
    assert {"alarm", "balance"} <= kept
    assert box.size() <= 2_000
    dropped = box.dropped()
    assert dropped.get("telemetry", 0) > 0
    assert "alarm" not in dropped
    assert "balance" not in dropped
    remaining = [json.loads(m.payload) for m in box.take(100) if b"telemetry" in m.payload]
    survivors = [r["i"] for r in remaining]
    assert survivors == sorted(survivors)
    assert not survivors or survivors[-1] == 9
    box.close()


def test_a_corrupt_file_is_moved_aside(tmp_path: Path, caplog: pytest.LogCaptureFixture):
    path = tmp_path / "state.sqlite"
    path.write_bytes(b"this is not a database" * 100)
    box = Outbox(path, max_bytes=10_000_000, site="s", gateway="g")
    assert box.put(_records("alarm", 1)) == [box.last_seq()]
    assert box.moved_aside is not None
    assert "not a database" in (box.moved_aside_reason or "")
    box.close()
    aside = list(tmp_path.glob("state.sqlite.corrupt-*"))
    assert len(aside) == 1
    assert aside[0].read_bytes().startswith(b"this is not")
    assert "moved aside" in caplog.text


def test_take_continues_after_a_key_and_skips_what_is_out(outbox: Outbox):
    """The publisher's refill: after a retake for an alarm moved its cursor past totals that
    are still in flight, continuing from the cursor must not hand those totals over again."""
    totals = outbox.put(_records("totals", 4))
    first = outbox.take(2)
    assert [m.seq for m in first] == totals[:2]
    alarm = outbox.put(_records("alarm", 1))
    retake = outbox.take(1, exclude={m.seq for m in first})
    assert [m.seq for m in retake] == alarm
    cursor = (retake[0].priority, retake[0].seq)
    rest = outbox.take(10, after=cursor, exclude={m.seq for m in first})
    assert [m.seq for m in rest] == totals[2:]
    # A run of skipped records longer than one read is stepped over, not returned as empty.
    assert [m.seq for m in outbox.take(1, after=cursor, exclude=set(totals[:3]))] == [totals[3]]


def test_what_runs_every_second_reads_an_index_not_the_backlog(tmp_path):
    """oldest_age (the status, every second), max-age expiry and take() run on the event
    loop; a scan of the outbox there took 210-407 ms at 300 k records. The plans must read
    a range of outbox_evict (priority, seq), the one index the outbox keeps up."""
    from massgate.agent.store.outbox import OLDEST

    outbox = Outbox(tmp_path / "o.sqlite", max_bytes=10**9, site="s", gateway="g")
    try:
        outbox.put([Record("telemetry", {"i": i}, 1_800_000_000.0 + i) for i in range(100)])
        plans = {  # query: how each of its reads of the outbox must go
            OLDEST: "INDEX outbox_evict (priority=?)",
            "SELECT seq FROM outbox WHERE priority = 0 AND created >= 1 ORDER BY seq LIMIT 1": (
                "INDEX outbox_evict (priority=?)"
            ),
            "SELECT count(*), coalesce(sum(size), 0) FROM outbox WHERE priority = 0 AND seq < 9": (
                "INDEX outbox_evict (priority=? AND seq<?)"
            ),
            "DELETE FROM outbox WHERE priority = 0 AND seq < 9": (
                "INDEX outbox_evict (priority=? AND seq<?)"
            ),
            "SELECT seq, priority, kind, payload, packed FROM outbox "
            "WHERE priority = 0 AND seq > 1 AND seq <= 9 ORDER BY seq LIMIT 5": (
                "INDEX outbox_evict (priority=? AND seq>? AND seq<?)"
            ),
        }
        for query, name in plans.items():
            plan = [row[3] for row in outbox.conn.execute("EXPLAIN QUERY PLAN " + query)]
            assert not any(step.startswith("SCAN outbox") for step in plan), (name, plan)
            assert not any("TEMP B-TREE" in step for step in plan), (name, plan)  # no sort
            reads = [step for step in plan if step.startswith(("SEARCH outbox", "SCAN outbox"))]
            assert reads, (name, plan)
            assert all(step.endswith(name) for step in reads), (name, plan)
        assert outbox.oldest_age(now=1_800_000_100.0) == 100.0

        def steps(query: str) -> int:
            """SQLite's virtual-machine steps for one run of the query."""
            count = [0]

            def tick() -> int:
                count[0] += 1
                return 0

            outbox.conn.set_progress_handler(tick, 1)
            try:
                outbox.conn.execute(query).fetchall()
            finally:
                outbox.conn.set_progress_handler(None, 0)
            return count[0]

        nothing_due = (
            "SELECT seq FROM outbox WHERE priority = 0 AND created >= 1 ORDER BY seq LIMIT 1"
        )
        small = {q: steps(q) for q in (OLDEST, nothing_due)}
        outbox.put([Record("telemetry", {"i": i}, 1_800_000_100.0 + i) for i in range(10_000)])
        for query, before in small.items():
            assert steps(query) <= before + 20, "the work grew with the backlog: " + query
        indexes = {
            name
            for (name,) in outbox.conn.execute(
                "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'outbox'"
            )
        }
        assert indexes == {"outbox_evict"}, "every index is written at every commit"
    finally:
        outbox.close()


def _aging_outbox(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, *, wall: float
) -> tuple[dict[str, float], Outbox]:
    """An outbox whose telemetry may be an hour old at most, on clocks the test moves."""
    from types import SimpleNamespace

    from massgate.agent.store import outbox as outbox_module

    clock = {"wall": wall, "mono": 1000.0}
    monkeypatch.setattr(
        outbox_module,
        "time",
        SimpleNamespace(time=lambda: clock["wall"], monotonic=lambda: clock["mono"]),
    )
    outbox = Outbox(
        tmp_path / "o.sqlite", max_bytes=10**9, site="s", gateway="g", max_age={"telemetry": 3600}
    )
    return clock, outbox


def test_a_clock_that_steps_forward_does_not_expire_the_backlog_at_once(
    tmp_path, monkeypatch: pytest.MonkeyPatch
):
    """A gateway without RTC booted at an old time, then NTP stepped the clock forward by
    years: the records made before look years old. They count their age from the step."""
    clock, outbox = _aging_outbox(tmp_path, monkeypatch, wall=1_500_000_000.0)
    try:
        outbox.put([Record("telemetry", {"i": i}, clock["wall"]) for i in range(10)])
        clock["wall"] += 300_000_000.0  # NTP: from 2017 to 2026 in one step
        clock["mono"] += 5.0
        outbox.put([Record("telemetry", {"i": 10}, clock["wall"])])
        assert outbox.depth() == 11
        assert outbox.dropped() == {}
        clock["wall"] += 1800.0  # half an hour later: still younger than an hour
        clock["mono"] += 1800.0
        outbox.put([Record("telemetry", {"i": 11}, clock["wall"])])
        assert outbox.depth() == 12
        clock["wall"] += 1900.0  # an hour after the step: the old records are due
        clock["mono"] += 1900.0
        outbox.put([Record("telemetry", {"i": 12}, clock["wall"])])
        assert outbox.depth() == 2  # the one from half an hour ago and the new one
        assert outbox.dropped() == {"telemetry": 11}
    finally:
        outbox.close()


def test_records_made_after_the_clock_stepped_back_expire_in_the_order_they_were_made(
    tmp_path, monkeypatch: pytest.MonkeyPatch
):
    """Their time stamps say they are older than the records before them; they are not."""
    clock, outbox = _aging_outbox(tmp_path, monkeypatch, wall=1_800_000_000.0)
    try:
        before = outbox.put([Record("telemetry", {"i": i}, clock["wall"]) for i in range(5)])
        clock["wall"] -= 1000.0  # the clock steps back by a quarter of an hour
        clock["mono"] += 1.0
        after = outbox.put([Record("telemetry", {"i": i}, clock["wall"]) for i in range(5, 10)])
        clock["wall"] += 4000.0  # the first five are 50 minutes old, the next five look older
        clock["mono"] += 4000.0
        outbox.put([])  # a put runs the expiry
        outbox.put([Record("telemetry", {"i": 10}, clock["wall"])])
        assert outbox.dropped() == {}
        assert {m.seq for m in outbox.take(100)} >= set(before + after)
        clock["wall"] += 700.0  # the first five are over an hour old now, and go
        clock["mono"] += 700.0
        outbox.put([Record("telemetry", {"i": 11}, clock["wall"])])
        assert outbox.dropped() == {"telemetry": 10}, "and the five made after them with them"
    finally:
        outbox.close()
