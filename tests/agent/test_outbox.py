"""The store-and-forward contract, on a file and in memory."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from massgate.agent.outbox import Outbox
from massgate.agent.records import Record


@pytest.fixture(params=["file", "memory"])
def outbox(request: pytest.FixtureRequest, tmp_path: Path):
    path = tmp_path / "state.sqlite" if request.param == "file" else ":memory:"
    box = Outbox(path, max_bytes=10_000_000, site="s", gateway="g")
    yield box
    box.close()


def _records(kind: str, n: int, start: int = 0) -> list[Record]:
    return [Record(kind, {"i": start + i}, 1_800_000_000.0 + i) for i in range(n)]


def test_put_take_ack(outbox: Outbox):
    seqs = outbox.put(_records("totals", 3) + _records("alarm", 2))
    assert seqs == [1, 2, 3, 4, 5]
    taken = outbox.take(10)
    # Alarms first, then oldest first within a priority.
    assert [m.seq for m in taken] == [4, 5, 1, 2, 3]
    assert taken[0].topic == "massgate/s/g/alarm"
    payload = json.loads(taken[0].payload)
    assert payload["seq"] == 4
    assert payload["schema"] == 1
    assert payload["kind"] == "alarm"
    assert payload["created"].endswith("Z")
    assert [m.seq for m in outbox.take(2, exclude={4, 5})] == [1, 2]
    outbox.ack([4, 1])
    assert [m.seq for m in outbox.take(10)] == [5, 2, 3]
    assert outbox.depth() == 3


def test_sequence_numbers_survive_a_restart(tmp_path: Path):
    path = tmp_path / "state.sqlite"
    first = Outbox(path, max_bytes=10_000_000, site="s", gateway="g")
    first.put(_records("balance", 3))
    first.ack([1, 2, 3])
    epoch = json.loads(first.put(_records("balance", 1)) and first.take(1)[0].payload)["epoch"]
    first.close()
    second = Outbox(path, max_bytes=10_000_000, site="s", gateway="g")
    assert second.put(_records("balance", 1)) == [5]
    assert json.loads(second.take(2)[1].payload)["epoch"] == epoch
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
    assert box.put(_records("alarm", 1)) == [1]
    box.close()
    aside = list(tmp_path.glob("state.sqlite.corrupt-*"))
    assert len(aside) == 1
    assert aside[0].read_bytes().startswith(b"this is not")
    assert "moved aside" in caplog.text
