"""What feeds the watchdog: progress of the pollers and of the MQTT thread, judged on the
agent's real parts. A dead meter is not a hung agent; pollers that stopped finishing polls,
or an MQTT thread that ended, are."""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from massgate.agent import config as config_module
from massgate.agent.publish.link import BrokerLink, _Events
from massgate.agent.publish.publisher import Publisher
from massgate.agent.runtime.health import Progress
from massgate.agent.runtime.pipeline import _open_pollers
from massgate.agent.store.outbox import Outbox
from tests.conftest import free_port, mqtt_config

LIMIT = 20.0


def _pollers_of(tmp_path: Path, count: int) -> list:
    devices = "\n".join(
        f"  - {{name: d{i}, protocol: modbus_tcp, host: 127.0.0.1, port: {free_port()}, "
        "profile: coriolis, poll_interval: 1s}"
        for i in range(count)
    )
    path = tmp_path / "m.yaml"
    path.write_text(f"gateway: {{site: s, id: g, state_dir: {tmp_path}}}\ndevices:\n{devices}\n")
    return [p for o in _open_pollers(config_module.load(path), lambda b: None) for p in o.pollers]


def test_fed_while_some_poller_finishes_polls(tmp_path: Path, caplog: pytest.LogCaptureFixture):
    caplog.set_level(logging.INFO)
    pollers = _pollers_of(tmp_path, 2)
    agent = SimpleNamespace(pollers=pollers, publisher=None)
    progress = Progress(LIMIT)
    now = time.monotonic()
    for p in pollers:
        p.health.fail("no reply")  # failing is progress: the meter is dead, not the agent
    assert progress.check(agent, now) is None
    # One poller stuck, the other still finishing polls: fed.
    pollers[0].health.last_attempt = now - 1000
    assert progress.check(agent, now) is None
    # Both stuck beyond their own bound: not fed, and said once.
    pollers[1].health.last_attempt = now - 500
    reason = progress.check(agent, now)
    assert reason == "no device poll finished for 500 s"
    assert progress.check(agent, now) == reason
    said = [r for r in caplog.records if "watchdog not fed" in r.getMessage()]
    assert len(said) == 1
    assert said[0].levelno == logging.ERROR
    pollers[1].health.ok()
    assert progress.check(agent, time.monotonic()) is None
    assert any("watchdog fed again" in r.getMessage() for r in caplog.records)


def test_a_slow_poller_is_judged_by_its_own_interval(tmp_path: Path):
    (poller,) = _pollers_of(tmp_path, 1)
    agent = SimpleNamespace(pollers=[poller], publisher=None)
    bound = poller.health.stall_after
    assert bound > poller.device.poll_interval  # interval, timeouts and retries
    now = time.monotonic()
    poller.health.last_attempt = now - max(LIMIT / 2, bound) + 1
    assert Progress(LIMIT).check(agent, now) is None
    poller.health.last_attempt = now - max(LIMIT / 2, bound) - 1
    assert Progress(LIMIT).check(agent, now) is not None


def test_a_stopped_device_does_not_starve_the_watchdog(tmp_path: Path):
    (poller,) = _pollers_of(tmp_path, 1)
    poller.health.stop("illegal data address")
    poller.health.last_attempt = time.monotonic() - 10_000
    agent = SimpleNamespace(pollers=[poller], publisher=None)
    assert Progress(LIMIT).check(agent, time.monotonic()) is None


def test_an_ended_mqtt_thread_is_not_progress():
    loop = asyncio.new_event_loop()
    try:
        config = mqtt_config(free_port(), ca=None)
        publisher = Publisher(
            Outbox(":memory:", max_bytes=1 << 20, site="s", gateway="g"), config, "s", "g"
        )
        link = BrokerLink(
            config,
            status_topic="t",
            birth=b"",
            will=b"",
            events=_Events(lambda *a: None, lambda *a: None, lambda *a: None),
            loop=loop,
        )
        publisher._link = link  # a thread that was never started, as if it had died
        agent = SimpleNamespace(pollers=[], publisher=publisher)
        assert Progress(LIMIT).check(agent, time.monotonic()) == "the MQTT thread has ended"
        link.stopping.set()  # stopping on purpose is not a hang
        assert Progress(LIMIT).check(agent, time.monotonic()) is None
        link.close()
    finally:
        loop.close()


def test_an_agent_whose_pipeline_stalls_stops_feeding_the_watchdog(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """The real run(): WATCHDOG=1 while polls finish; when every poll hangs, it stops."""
    import socket

    from massgate.agent.runtime.pipeline import Agent, run
    from massgate.agent.runtime.sdnotify import Notifier
    from massgate.drivers.modbus.poller import DevicePoller
    from tests.conftest import run_async

    monkeypatch.setenv("WATCHDOG_USEC", "2000000")
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    path = tmp_path / "m.yaml"
    path.write_text(
        f"gateway: {{site: s, id: g, state_dir: {tmp_path / 'state'}}}\ndevices:\n"
        f"  - {{name: d, protocol: modbus_tcp, host: 127.0.0.1, port: {free_port()}, "
        "profile: coriolis, poll_interval: 100ms, timeout: 50ms, degrade_after: 1000, "
        "degraded_interval: 100ms}\n"  # the poller's own bound: 2 × 100 ms + 2 × 50 ms + 1 s
    )
    config = config_module.load(path)
    hang = asyncio.Event()  # set: every poll from now on never finishes
    real_poll = DevicePoller.poll

    async def poll(self: DevicePoller):
        if hang.is_set():
            await asyncio.Event().wait()  # a driver stuck for good (cancelled at shutdown)
        return await real_poll(self)

    monkeypatch.setattr(DevicePoller, "poll", poll)
    systemd = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    systemd.bind(str(tmp_path / "notify"))
    systemd.setblocking(False)
    pets: list[float] = []
    hung_at: list[float] = []
    shutdown = asyncio.Event()

    def on_cycle(agent: Agent) -> None:
        now = time.monotonic()
        while True:
            try:
                message = systemd.recv(65536).decode()
            except BlockingIOError:
                break
            if "WATCHDOG=1" in message.splitlines():
                pets.append(now)
        if len(pets) >= 4 and not hang.is_set():
            hang.set()
            hung_at.append(now)
        # Past the poller's bound and the watchdog's half-limit, and then 3 s more.
        if hung_at and now - hung_at[0] > 5.0:
            shutdown.set()

    async def main() -> None:
        notifier = Notifier(str(tmp_path / "notify"))
        try:
            await asyncio.wait_for(
                run(
                    config,
                    shutdown=shutdown,
                    on_cycle=on_cycle,
                    notifier=notifier,
                    graceful_timeout=1.0,
                ),
                timeout=60,
            )
        finally:
            notifier.close()

    try:
        run_async(main())
    finally:
        systemd.close()
    assert len(pets) >= 4
    late = [t - hung_at[0] for t in pets if t - hung_at[0] > 3.0]
    assert late == [], late  # fed while stuck: systemd would never restart a hung agent
