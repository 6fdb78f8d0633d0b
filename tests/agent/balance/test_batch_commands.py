"""Batches by command: `massgate batch start|end` through the agent's command socket to the
gateway; who did it in the batch's record; refusals; a batch that goes on after a restart;
a command socket that answers every malformed request and never fails."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from massgate.agent.commands.cli import main
from massgate.agent.core.requests import MAX_REQUEST, Handler
from massgate.agent.runtime.commandserver import CommandServer, send
from tests.agent.balance import plantrun
from tests.agent.balance.test_balance_plant import DEVICES, PLANT
from tests.agent.publish.test_payload_schemas import problems

NODES = """\
nodes:
  - name: tank
    inputs: [feed_b]
    outputs: [product]
    inventories: [t100]
    window: {batch: command}
    tolerance: {relative: 0.5 %}
    persistence: 0s
  - name: line
    inputs: [feed_a]
    outputs: [feed_b]
    window: 10 min
    persistence: 0s
"""
CONFIG = DEVICES + NODES


@contextlib.contextmanager
def serving(path: Path, handle: Handler) -> Iterator[CommandServer]:
    """A command server on its own event loop thread, as the agent's runs on its own."""
    loop = asyncio.new_event_loop()
    server = CommandServer(path, handle)
    ready = threading.Event()

    def run() -> None:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(server.start())
        ready.set()
        loop.run_forever()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    assert ready.wait(30)
    try:
        yield server
    finally:
        asyncio.run_coroutine_threadsafe(server.close(), loop).result(30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(30)
        loop.close()


def _batch(config: Path, *args: str) -> int:
    return main(["batch", *args[:1], str(config), *args[1:]])


def test_a_batch_started_and_ended_by_command_is_judged_with_who_did_it(
    tmp_path: Path, capsys, caplog
):
    config = tmp_path / "config.yaml"
    with plantrun.running(tmp_path, CONFIG, PLANT) as run:
        socket_path = run.gateway.config.health.socket.with_name("command.sock")
        with serving(socket_path, run.gateway.command):
            run.run_for(300)
            before = run.plant.truth().lines["feed"]
            args = ["--node", "tank", "--batch", "C7-012", "--campaign", "C7", "--by", "alice"]
            with caplog.at_level("INFO"):
                assert _batch(config, "start", *args) == 0
            assert capsys.readouterr().out == "node tank: batch C7-012 begins with the next cycle\n"
            # A second start while it runs, and an end of nothing elsewhere, are refused.
            assert _batch(config, "start", "--node", "tank", "--batch", "C7-013") == 1
            assert "batch C7-012 is running on node tank: end it first" in capsys.readouterr().err
            run.run_for(1200)
            after = run.plant.truth().lines["feed"]
            with caplog.at_level("INFO"):
                assert _batch(config, "end", "--node", "tank", "--by", "bob") == 0
            assert _batch(config, "end", "--node", "tank") == 1
            assert "no batch is running on node tank" in capsys.readouterr().err
            run.run_for(60)
            # A node whose windows are not batches by command.
            assert _batch(config, "end", "--node", "line") == 2
            assert "need window: {batch: command}" in capsys.readouterr().err
            assert _batch(config, "end", "--node", "tnak") == 2
            assert "no node named 'tnak'" in capsys.readouterr().err
            assert _batch(config, "start", "--node", "tank", "--batch", "a\tb") == 2
            assert "holds a control character" in capsys.readouterr().err
        published = [json.loads(m.payload) for m in run.outbox.take(10**6)]
    (window,) = [b for b in run.of("balance") if b["node"] == "tank"]
    assert (window["batch"], window["campaign"]) == ("C7-012", "C7")
    (record,) = [p for p in published if p["kind"] == "balance" and p["node"] == "tank"]
    assert problems("balance", record) == []
    assert record["accounting"]["outputs_kg"] == {"product": window["out_kg"]}
    assert (window["started_by"], window["ended_by"]) == ("alice", "bob")
    assert window["status"] == "ok"
    # The window runs from the cycle after the start to the cycle after the end (one 2 s
    # poll each): 1200 s of feed.
    assert window["in_kg"] == pytest.approx(after - before, rel=5e-3)
    journal = [r.getMessage() for r in caplog.records if "batch C7-012" in r.getMessage()]
    assert journal == [
        "node tank: batch C7-012 started by alice (via socket)",
        "node tank: batch C7-012 ended by bob (via socket)",
    ]


def test_a_batch_running_at_a_restart_goes_on(tmp_path: Path, caplog):
    first = plantrun.start(tmp_path, CONFIG, plant_text=PLANT, period=2.0, step=0.5)
    try:
        answer = first.gateway.command(
            {"command": "batch", "node": "tank", "action": "start", "batch": "B1", "by": "carol"}
        )
        assert answer["ok"], answer
        first.run_for(600)
    finally:
        first.close()  # the agent stops (the totals and its batch are saved)
    with caplog.at_level("WARNING"):
        second = plantrun.beside(first, tmp_path, CONFIG, gateway="g")
    assert "node tank: batch B1 (started by carol) goes on after the restart" in caplog.text
    second.now = first.now
    try:
        second.run_for(600)
        assert second.gateway.command(
            {"command": "batch", "node": "tank", "action": "end", "by": "dave"}
        ) == {"ok": True, "message": "node tank: batch B1 ends with the next cycle"}
        second.run_for(60)
    finally:
        second.close()
    (window,) = [b for b in second.of("balance") if b["node"] == "tank"]
    assert (window["batch"], window["started_by"], window["ended_by"]) == ("B1", "carol", "dave")
    assert window["in_kg"] == pytest.approx(600 * 2.0, rel=0.02)
    # Ended: a third start finds no batch to resume.
    third = plantrun.beside(second, tmp_path, CONFIG, gateway="g")
    try:
        assert all(n.batch is None for n in third.gateway.nodes)
    finally:
        third.close()


@pytest.mark.parametrize(
    ("request_", "error"),
    [
        ({"command": "open"}, "unknown command 'open' (batch, enter)"),
        ({"command": "enter", "stream": "x"}, "no manual or compared stream named 'x' (none)"),
        ({"command": "batch", "node": "tank", "action": "pause"}, "unknown action 'pause'"),
        ({"command": "batch", "node": "x", "action": "end"}, "no node named 'x'"),
        ({"command": "batch", "node": "tank", "action": "start"}, "batch: give a name or id"),
        (
            {"command": "batch", "node": "tank", "action": "start", "batch": "x" * 65},
            "at most 64 characters",
        ),
        ({"command": "batch", "node": "tank", "action": "start", "batch": 7}, "give a name"),
        ({"command": "batch", "node": "line", "action": "end"}, "has a rolling window"),
    ],
)
def test_a_bad_request_is_answered_with_why(tmp_path: Path, request_: dict[str, Any], error: str):
    with plantrun.running(tmp_path, CONFIG, PLANT) as run:
        answer = run.gateway.command(request_)
    assert answer["ok"] is False
    assert error in answer["error"]


def _raw(path: Path, data: bytes) -> dict[str, Any]:
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(30)
        sock.connect(str(path))
        sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    result: dict[str, Any] = json.loads(answer)
    return result


def test_the_command_socket_answers_what_is_not_a_request_and_survives_a_bug(tmp_path: Path):
    path = tmp_path / "command.sock"
    seen: list[dict[str, Any]] = []

    def handle(request: dict[str, Any]) -> dict[str, Any]:
        seen.append(request)
        if request.get("boom"):
            raise RuntimeError("a bug")
        return {"ok": True}

    with serving(path, handle) as server:
        assert _raw(path, b"not json\n")["error"].startswith("a request is one JSON object")
        assert _raw(path, b"[1, 2]\n")["error"] == "a request is one JSON object"
        assert "at most" in _raw(path, b"x" * (MAX_REQUEST + 10) + b"\n")["error"]
        assert _raw(path, b'{"boom": true}\n')["error"].startswith("the agent failed")
        assert send(path, {"command": "x", "via": "mqtt"}) == {"ok": True}
        server.idle()  # a reload is between two gateways
        assert "reloading" in send(path, {"command": "x"})["error"]
    # The server says where a request came from, whatever the client claims.
    assert seen == [{"boom": True, "via": "socket"}, {"command": "x", "via": "socket"}]
    assert not path.exists()


def test_a_misspelt_batch_source_says_what_it_may_be(tmp_path: Path):
    from massgate.agent import config as config_module
    from massgate.agent.core.yamlsource import ConfigError

    with pytest.raises(ConfigError) as err:
        config_module.loads(CONFIG.replace("{batch: command}", "{batch: comand}"),
                            path=tmp_path / "c.yaml")  # fmt: skip
    assert [str(p) for p in err.value.problems] == [
        f"{tmp_path / 'c.yaml'}:{CONFIG.count(chr(10), 0, CONFIG.index('{batch: command}')) + 1}: "
        "nodes[0].window.batch: 'comand' is not a tag; tags are written <device>.<point>; or "
        "'command' for batches by massgate batch start|end"
    ]


def test_a_command_that_comes_while_the_agent_stops_is_refused_not_lost(tmp_path: Path):
    with plantrun.running(tmp_path, CONFIG, PLANT) as run:
        run.run_for(60)
        # The pipeline has begun its last cycle: what a command recorded now would not be
        # committed, so the operator is told to try again (the next agent takes it).
        run.gateway.stopping = True
        before = len(run.gateway.pending)
        start = {"command": "batch", "node": "tank", "action": "start", "batch": "C7-1"}
        answer = run.gateway.command({**start, "by": "alice"})
        assert answer == {
            "ok": False,
            "error": "the agent is stopping or reloading its configuration; try again",
        }
        assert len(run.gateway.pending) == before
        assert all(n.batch is None for n in run.gateway.nodes)


def test_a_command_taken_but_not_on_the_disk_says_so(tmp_path: Path, capsys):
    """The answer waits for the commit; when the records are held in memory (a full disk),
    the command is still taken, exit 0, and the operator is warned."""
    config = tmp_path / "config.yaml"

    def held() -> asyncio.Future[str | None]:
        done: asyncio.Future[str | None] = asyncio.get_running_loop().create_future()
        done.set_result("held in memory, not on the disk (full): 3 records wait")
        return done

    with plantrun.running(tmp_path, CONFIG, PLANT) as run:
        socket_path = run.gateway.config.health.socket.with_name("command.sock")
        with serving(socket_path, run.gateway.command) as server:
            server.committed = held
            assert _batch(config, "start", "--node", "tank", "--batch", "C7-9") == 0
    out, err = capsys.readouterr()
    assert out == "node tank: batch C7-9 begins with the next cycle\n"
    assert err == (
        "massgate batch start: warning: held in memory, not on the disk (full): 3 records wait\n"
    )
