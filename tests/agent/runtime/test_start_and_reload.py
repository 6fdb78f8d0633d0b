"""A running agent never dies of a file someone edited, and one state directory has one agent.

A reload whose file is valid but cannot run here (a metrics port another program holds, a
database that does not open, a serial port that is not there, a state directory another
agent holds, a CA file gone since `check`) is refused like an invalid file: the pipeline
keeps running on the old configuration and the refusal is in the health snapshot behind
`massgate status`. A start that fails for such a reason is one line and exit 1. The state
lock is an flock, so an agent that cannot answer (SIGSTOP) still keeps a second one out.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from massgate.agent import config as config_module
from massgate.agent.config import Config
from massgate.agent.runtime.pipeline import Agent, run
from massgate.agent.runtime.statelock import AlreadyRunning, StateLocks
from massgate.agent.store.outbox import Outbox
from tests.conftest import NotifySocket, free_port, run_async, start_agent


def _write(tmp_path: Path, name: str, extra: str = "", *, state: str = "state") -> Path:
    """A valid configuration: one meter nobody answers for (the agent runs on regardless)."""
    path = tmp_path / name
    path.write_text(
        f"gateway: {{site: s, id: g, state_dir: {tmp_path / state}}}\n"
        "devices:\n"
        f"  - {{name: ft1, protocol: modbus_tcp, host: 127.0.0.1, port: {free_port()}, "
        "profile: coriolis, poll_interval: 200ms, timeout: 100ms}\n" + extra
    )
    return path


def _reload_refused(
    old: Config, new: Config, *, before_reload: Callable[[], None] = lambda: None
) -> Agent:
    """Run `old`, ask it to reload `new`, and return the agent once the refusal is in its
    health snapshot; fail if the run ended instead (a reload that was taken or a crash)."""
    seen: list[Agent] = []

    async def main() -> None:
        shutdown = asyncio.Event()
        reload = asyncio.Event()
        cycles = [0]

        def on_cycle(agent: Agent) -> None:
            if not seen:
                seen.append(agent)
                before_reload()
                reload.set()
            cycles[0] += 1
            # Refused, shown, and the pipeline still turning on the old configuration.
            if "reload_refused" in agent.health and cycles[0] > 3:
                shutdown.set()

        result = await asyncio.wait_for(
            run(old, shutdown=shutdown, reload=reload, load=lambda: new, on_cycle=on_cycle),
            timeout=60,
        )
        assert result is None, "the reload was taken"

    run_async(main())
    agent = seen[0]
    assert agent.config is old
    return agent


def test_a_metrics_port_another_program_holds_refuses_the_reload(tmp_path: Path):
    old = config_module.load(_write(tmp_path, "old.yaml"))
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        new = config_module.load(
            _write(tmp_path, "new.yaml", f"health:\n  metrics: 127.0.0.1:{port}\n")
        )
        agent = _reload_refused(old, new)
    assert f"127.0.0.1:{port}" in agent.reload_error
    assert "Address already in use" in agent.health["reload_refused"]


def test_a_database_that_does_not_open_refuses_the_reload(tmp_path: Path):
    old = config_module.load(_write(tmp_path, "old.yaml"))
    (tmp_path / "spool").mkdir()
    new = config_module.load(
        _write(tmp_path, "new.yaml", f"outbox:\n  path: {tmp_path / 'spool' / 'o.sqlite'}\n")
    )

    def spool_becomes_a_file() -> None:  # valid when checked, gone when used
        (tmp_path / "spool").rmdir()
        (tmp_path / "spool").write_text("not a directory")

    agent = _reload_refused(old, new, before_reload=spool_becomes_a_file)
    assert f"cannot make the lock file {tmp_path / 'spool'}" in agent.reload_error


def test_a_database_file_that_became_a_directory_refuses_the_reload(tmp_path: Path):
    old = config_module.load(_write(tmp_path, "old.yaml"))
    database = tmp_path / "state" / "other.sqlite"
    new = config_module.load(_write(tmp_path, "new.yaml", f"outbox:\n  path: {database}\n"))
    agent = _reload_refused(old, new, before_reload=database.mkdir)
    assert "unable to open database file" in agent.reload_error


def test_a_serial_port_that_is_not_there_refuses_the_reload(tmp_path: Path):
    old = config_module.load(_write(tmp_path, "old.yaml"))
    path = _write(tmp_path, "new.yaml")
    text = path.read_text().replace(
        "devices:\n", "lines:\n  - {name: rs485, port: /dev/ttyMASSGATE9}\ndevices:\n"
    )
    text += "  - {name: wt1, protocol: modbus_rtu, line: rs485, unit_id: 3, profile: load_cell}\n"
    path.write_text(text)
    agent = _reload_refused(old, config_module.load(path))
    assert "serial port /dev/ttyMASSGATE9 (lines: rs485) does not exist" in agent.reload_error


def test_a_state_directory_another_agent_holds_refuses_the_reload(tmp_path: Path):
    old = config_module.load(_write(tmp_path, "old.yaml"))
    new = config_module.load(_write(tmp_path, "new.yaml", state="other"))
    other = StateLocks()
    other.hold([tmp_path / "other" / "massgate.lock"])
    try:
        agent = _reload_refused(old, new)
    finally:
        other.release()
    assert "another massgate" in agent.reload_error


def test_a_ca_file_gone_since_check_refuses_the_reload(tmp_path: Path, pki):
    old = config_module.load(_write(tmp_path, "old.yaml"))
    ca = tmp_path / "ca.pem"
    ca.write_bytes(pki.ca.read_bytes())
    new = config_module.load(
        _write(
            tmp_path,
            "new.yaml",
            f"mqtt:\n  brokers: [mqtts://127.0.0.1:{free_port()}]\n  ca_file: {ca}\n",
        )
    )
    agent = _reload_refused(old, new, before_reload=ca.unlink)
    assert "No such file or directory" in agent.reload_error


def test_two_agents_in_one_process_are_refused_too(tmp_path: Path):
    config = config_module.load(_write(tmp_path, "a.yaml"))
    locks = StateLocks()
    locks.hold([config.gateway.state_dir / "massgate.lock"])
    try:
        with pytest.raises(AlreadyRunning, match=r"another massgate \(pid \d+\) holds"):
            run_async(asyncio.wait_for(run(config, shutdown=asyncio.Event()), timeout=30))
    finally:
        locks.release()


def _massgate(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "massgate.agent.commands.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def test_a_start_that_cannot_serve_metrics_is_one_line_and_exit_1(tmp_path: Path):
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        config = _write(tmp_path, "m.yaml", f"health:\n  metrics: 127.0.0.1:{port}\n")
        result = _massgate("run", str(config))
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert "ExceptionGroup" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if " ERROR " in line]
    assert len(errors) == 1, result.stderr
    assert (
        f"cannot run: cannot serve metrics on 127.0.0.1:{port}: Address already in use"
        in (errors[0])
    )


def test_a_stopped_agent_still_keeps_a_second_one_out(tmp_path: Path):
    """The first agent cannot answer anything (SIGSTOP): the flock decides, not a time-out."""
    config = _write(tmp_path, "m.yaml")
    log = tmp_path / "first.log"
    first = start_agent(config, log)
    try:
        deadline = time.monotonic() + 60
        while _massgate("status", str(config), "--json").returncode != 0:
            assert first.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)
        first.send_signal(signal.SIGSTOP)
        second = _massgate("run", str(config))
        assert second.returncode == 1, second.stderr
        assert f"another massgate (pid {first.pid}) holds" in second.stderr
        assert "Traceback" not in second.stderr
        # The second one touched nothing: the first one's status socket still answers.
        first.send_signal(signal.SIGCONT)
        status = _massgate("status", str(config), "--json")
        assert status.returncode == 0, status.stderr
        assert json.loads(status.stdout)["pid"] == first.pid
        first.send_signal(signal.SIGTERM)
        assert first.wait(timeout=60) == 0, log.read_text()
    finally:
        if first.poll() is None:
            first.send_signal(signal.SIGCONT)
            first.kill()
            first.wait()


def test_a_reload_keeps_integrating_the_streams_it_did_not_change(tmp_path: Path):
    """A valid reload with a backlog: it does not wait for the outbox to drain, and the
    streams it did not change go on integrating across it (no gap), so the kilograms agree
    with the plant's truth across the reload."""
    from massgate.agent.commands.demo import site_config
    from massgate.drivers.sim.plant import Plant
    from massgate.drivers.sim.server import SimulatedSite

    async def main() -> tuple[list[float], float, float, float]:
        plant = Plant()
        site = SimulatedSite(plant)
        served = await site.start()
        try:
            text = site_config(served, state_dir=tmp_path / "state", max_gap="2s")
            path = tmp_path / "m.yaml"
            path.write_text(text)
            first = config_module.load(path)
            path.write_text(text.replace("tolerance: {fixed: 0.5 kg", "tolerance: {fixed: 0.6 kg"))
            second = config_module.load(path)
            shutdown = asyncio.Event()
            reload = asyncio.Event()
            runs: list[Agent] = []
            started = time.monotonic()

            asked: list[bool] = []

            def on_cycle(agent: Agent) -> None:
                if not runs or runs[-1] is not agent:
                    runs.append(agent)
                elapsed = time.monotonic() - started
                if not asked and elapsed > 3.0:
                    asked.append(True)
                    reload.set()
                if len(runs) == 2 and elapsed > 7.0:
                    shutdown.set()

            config: Config | None = first
            reloads = 0
            while config is not None:
                config = await run(
                    config,
                    shutdown=shutdown,
                    reload=reload,
                    load=lambda: second,
                    on_cycle=on_cycle,
                    carried=carried,
                )
                reloads += config is not None
            assert reloads == 1
            feed = runs[-1].gateway.streams["feed"]
            assert runs[0].gateway.streams["feed"] is feed  # the same running total
            truth = plant.truth_between(feed.first_wall, feed.last_wall).lines["feed"]
            return [], feed.net, truth, float(feed.state[0])
        finally:
            await site.stop()

    from massgate.agent.runtime.pipeline import Carried

    carried = Carried()
    _, total, truth, _ = run_async(asyncio.wait_for(main(), 90))
    assert total == pytest.approx(truth, rel=0.005)
    box = Outbox(tmp_path / "state" / "state.sqlite", max_bytes=10**9, site="s", gateway="g")
    try:
        totals = [json.loads(m.payload) for m in box.take(10**5) if m.topic.endswith("/totals")]
    finally:
        box.close()
    gaps = [s["gap_s"] for t in totals for s in t["streams"]]
    assert gaps, totals
    assert all(g == 0 for g in gaps), gaps


def test_a_reload_that_passes_its_checks_and_cannot_start_runs_the_old_one_again(
    tmp_path: Path,
):
    """What the checks before a reload cannot see (here an outbox written by a newer
    massgate: it opens, but its schema is not this release's) stops the new configuration at
    its start. The process does not end: the configuration that ran before runs again, and
    says why in the health snapshot and the journal."""
    import sqlite3

    config = _write(tmp_path, "m.yaml")
    before = config.read_text()
    newer = tmp_path / "newer.sqlite"
    db = sqlite3.connect(newer)
    db.execute("PRAGMA user_version = 999")
    db.close()
    log = tmp_path / "agent.log"
    # systemd's end of the notify socket: READY=1 and every STATUS decide, not a poll.
    notify = NotifySocket(tmp_path / "notify.sock")
    agent = start_agent(config, log, {**os.environ, "NOTIFY_SOCKET": str(notify.path)})
    try:
        notify.wait(lambda m: m.get("READY") == "1", timeout=60)
        config.write_text(before + f"outbox:\n  path: {newer}\n")
        agent.send_signal(signal.SIGHUP)
        # The configuration that ran before is up again, and says the reload was refused.
        notify.wait(lambda m: "last reload refused" in m.get("STATUS", ""), timeout=60)
        done = _massgate("status", str(config), "--json")
        assert done.returncode == 0, done.stderr
        snap = json.loads(done.stdout)
        refused = str(snap["reload_refused"])
        assert "could not start" in refused
        assert "newer massgate" in refused
        assert snap["pid"] == agent.pid
        assert (tmp_path / "state" / "state.sqlite").exists(), "the old outbox runs again"
        agent.send_signal(signal.SIGTERM)
        assert agent.wait(timeout=60) == 0, log.read_text()
    finally:
        notify.close()
        if agent.poll() is None:
            agent.kill()
            agent.wait()
    text = log.read_text()
    assert "reload refused" in text
    assert "Traceback" not in text
    db = sqlite3.connect(newer)
    assert db.execute("PRAGMA user_version").fetchone()[0] == 999, "the newer file untouched"
    db.close()


def test_the_running_agent_answers_commands_on_its_socket_until_it_stops(tmp_path: Path):
    """The command socket beside the status socket reaches the running gateway; it is gone
    once the agent stops."""
    from massgate.agent.commands.demo import site_config
    from massgate.agent.runtime.commandserver import send
    from massgate.agent.runtime.statusserver import StatusUnavailable
    from massgate.drivers.sim.plant import Plant
    from massgate.drivers.sim.server import SimulatedSite

    async def main() -> tuple[dict[str, object], Path]:
        site = SimulatedSite(Plant())
        served = await site.start()
        try:
            path = tmp_path / "m.yaml"
            path.write_text(site_config(served, state_dir=tmp_path / "state"))
            config = config_module.load(path)
            shutdown, cycled = asyncio.Event(), asyncio.Event()
            agent = asyncio.create_task(
                run(config, shutdown=shutdown, on_cycle=lambda _: cycled.set())
            )
            await cycled.wait()
            where = config.health.socket.with_name("command.sock")
            request = {"command": "batch", "node": "tank_t100", "action": "end"}
            answer = await asyncio.to_thread(send, where, request)
            shutdown.set()
            await agent
            return answer, where
        finally:
            await site.stop()

    answer, where = run_async(asyncio.wait_for(main(), 90))
    assert answer == {"ok": False, "error": "node tank_t100 has a rolling window, not batches"}
    with pytest.raises(StatusUnavailable, match="massgate is not running"):
        send(where, {"command": "batch"})
