"""The agent as systemd runs it: `massgate run` in its own process against the simulated plant
and a TLS broker, with a notify socket and a watchdog. READY once the pipeline runs, STATUS,
WATCHDOG while it makes progress; `massgate status`, the status topic and the metrics
endpoint tell the same story; SIGHUP with a bad file is refused and the agent runs on, with
a good file it restarts its pipeline keeping its totals; a second agent on the same state is
refused; SIGTERM says STOPPING and exits 0."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

from massgate.agent.commands.demo import site_config
from tests.agent.commands.test_sim_command import _start_sim
from tests.conftest import Broker, NotifySocket, Subscriber, free_port, start_agent

WATCHDOG_USEC = 2_000_000


def _massgate(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "massgate.agent.commands.cli", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def _config(tmp_path: Path, devices_file: Path, broker: Broker, metrics_port: int) -> str:
    devices = [line for line in devices_file.read_text().splitlines() if "{name:" in line]
    # A meter nobody answers for: down the whole run, logged once.
    devices.append(
        f"  - {{name: ft900, protocol: modbus_tcp, host: 127.0.0.1, port: {free_port()}, "
        "profile: coriolis, poll_interval: 200ms, timeout: 200ms}"
    )
    text = site_config([], state_dir=tmp_path / "state", broker=broker.url, ca=str(broker.pki.ca))
    text = text.replace("devices:\n", "devices:\n" + "\n".join(devices) + "\n", 1)
    return text + f"  status_interval: 1s\nhealth:\n  metrics: 127.0.0.1:{metrics_port}\n"


def _status(config: Path) -> dict:
    result = _massgate("status", str(config), "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_agent_under_systemd_protocols(broker: Broker, subscriber: Subscriber, tmp_path: Path):
    sim, _ = _start_sim(
        ["--base-port", "0", "--config-out", str(tmp_path / "devices.yaml")], tmp_path / "sim.log"
    )
    notify = NotifySocket(tmp_path / "notify")
    metrics_port = free_port()
    config = tmp_path / "massgate.yaml"
    config.write_text(_config(tmp_path, tmp_path / "devices.yaml", broker, metrics_port))
    log = tmp_path / "agent.log"
    env = {k: v for k, v in os.environ.items() if k not in ("JOURNAL_STREAM", "WATCHDOG_PID")}
    env.update(NOTIFY_SOCKET=str(notify.path), WATCHDOG_USEC=str(WATCHDOG_USEC))
    agent = start_agent(config, log, env)
    try:
        ready = notify.wait(lambda m: m.get("READY") == "1", timeout=60)
        assert int(ready["MAINPID"]) == agent.pid
        assert "devices up" in ready["STATUS"]
        # Fed at a quarter of WatchdogSec while the pipeline makes progress.
        for _ in range(4):
            notify.wait(lambda m: m.get("WATCHDOG") == "1", timeout=WATCHDOG_USEC / 1e6)
        notify.wait(lambda m: "7/8 devices up" in m.get("STATUS", ""), timeout=30)

        # massgate status, as a person reads it and as JSON.
        status = _status(config)
        assert status["pid"] == agent.pid
        assert status["devices"]["ft101"]["up"]
        assert status["devices"]["ft101"]["last_good"] is not None
        assert status["devices"]["ft101"]["first_good"] <= status["devices"]["ft101"]["last_good"]
        down = status["devices"]["ft900"]
        assert not down["up"]
        assert down["failed_polls"] >= 3
        assert "cannot connect" in down["last_error"]
        assert status["broker"]["connected"]
        assert set(status["streams"]) == {"feed", "product"}
        assert "tank_t100" in status["nodes"]
        text = _massgate("status", str(config))
        assert text.returncode == 0, text.stderr
        assert "devices: 7 of 8 up" in text.stdout
        assert any("ft900" in ln and "DOWN" in ln for ln in text.stdout.splitlines())
        assert "broker: connected to mqtts://127.0.0.1" in text.stdout
        for heading in ("outbox:", "streams:", "nodes:", "alarms:"):
            assert heading in text.stdout

        # The same health on the status topic and the metrics endpoint.
        def status_topic_has_devices() -> bool:
            return any(
                "devices" in m and "ft900" in m["devices"] for m in subscriber.records("status")
            )

        assert subscriber.wait_for(status_topic_has_devices, timeout=15)
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10) as r:
            metrics = r.read().decode()
        assert 'massgate_device_up{device="ft101"} 1.0' in metrics
        assert 'massgate_device_up{device="ft900"} 0.0' in metrics
        assert "massgate_broker_connected 1.0" in metrics
        assert 'massgate_stream_mass_kg_total{direction="forward",stream="feed"}' in metrics

        # A second agent on the same state directory is refused before it opens the outbox.
        second = _massgate("run", str(config))
        assert second.returncode == 1
        assert f"another massgate (pid {agent.pid}" in second.stderr

        # SIGHUP with an invalid file: refused, problems logged, the agent runs on.
        good_text = config.read_text()
        config.write_text(
            good_text.replace("  - name: feed\n", "  - name: feed\n    acuracy: 1 %\n")
        )
        agent.send_signal(signal.SIGHUP)
        notify.wait(lambda m: "reload refused" in m.get("STATUS", ""), timeout=30)
        assert agent.poll() is None
        assert _status(config)["pid"] == agent.pid
        assert "reload_refused" in _status(config)

        # SIGHUP with a valid change: the pipeline restarts on it, the totals go on.
        before = _status(config)["streams"]["feed"]["forward_kg"]
        assert before > 0
        config.write_text(good_text.replace("accuracy: 0.2 %", "accuracy: 0.25 %"))
        agent.send_signal(signal.SIGHUP)
        notify.wait(lambda m: m.get("RELOADING") == "1", timeout=30)
        notify.wait(lambda m: m.get("READY") == "1", timeout=60)
        after = _status(config)
        assert "reload_refused" not in after
        assert after["streams"]["feed"]["forward_kg"] >= before
        assert after["broker"]["last_publish"] is not None  # not "never" after a reload
        # The audit re-ran on the new file: the changed accuracy is on record.
        assert subscriber.wait_for(
            lambda: any(
                "accuracy" in json.dumps(m["changes"]) for m in subscriber.records("audit")
            ),
            timeout=15,
        )

        agent.send_signal(signal.SIGTERM)
        notify.wait(lambda m: m.get("STOPPING") == "1", timeout=30)
        assert agent.wait(timeout=60) == 0
    finally:
        if agent.poll() is None:
            agent.kill()
            agent.wait()
        sim.send_signal(signal.SIGTERM)
        try:
            sim.wait(timeout=20)
        finally:
            if sim.poll() is None:
                sim.kill()
                sim.wait()
            assert sim.stdout is not None
            sim.stdout.close()
        notify.close()

    assert not (tmp_path / "state" / "status.sock").exists()
    lines = log.read_text().splitlines()
    # ft900 failed every poll of the run: one ERROR line, not one per poll.
    errors = [line for line in lines if " ERROR " in line and "ft900" in line]
    assert len(errors) == 1, errors
    refused = [line for line in lines if "reload refused" in line]
    assert any("acuracy: unknown key" in line for line in refused), refused
    after_stop = _massgate("status", str(config))
    assert after_stop.returncode == 3
    assert "massgate is not running" in after_stop.stderr
