"""A task that raises is restarted with backoff and counted; the others are unaffected.

DESIGN: only a configuration error ends the process. A bug that fires in one poller, in the
processing cycle or in the publisher is logged once with its traceback, counted under
`restarts` in the health snapshot, and the task starts again.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest

from massgate.agent import config as config_module
from massgate.agent.runtime.pipeline import Agent, run
from massgate.drivers.modbus.poller import DevicePoller
from tests.conftest import free_port, run_async


def test_a_poller_and_a_cycle_that_raise_are_restarted_and_counted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
):
    path = tmp_path / "m.yaml"
    path.write_text(
        f"gateway: {{site: s, id: g, state_dir: {tmp_path / 'state'}}}\ndevices:\n"
        + "".join(
            f"  - {{name: {name}, protocol: modbus_tcp, host: 127.0.0.1, port: {free_port()}, "
            "profile: coriolis, poll_interval: 100ms, timeout: 50ms, degrade_after: 1000}\n"
            for name in ("buggy", "steady")
        )
    )
    config = config_module.load(path)
    real_poll = DevicePoller.poll

    async def poll(self: DevicePoller):  # a bug that fires in one device's poller only
        if self.device.name == "buggy":
            raise RuntimeError("a bug in the buggy poller")
        return await real_poll(self)

    monkeypatch.setattr(DevicePoller, "poll", poll)
    seen: list[Agent] = []

    async def main() -> None:
        shutdown = asyncio.Event()

        def on_cycle(agent: Agent) -> None:
            if not seen:
                seen.append(agent)
                real_cycle = agent.gateway.cycle
                calls = [0]

                def cycle(*args, **kwargs) -> None:  # fails once, then works
                    calls[0] += 1
                    if calls[0] == 2:
                        raise ValueError("a bug in the cycle")
                    real_cycle(*args, **kwargs)

                agent.gateway.cycle = cycle  # type: ignore[method-assign]
            steady = next(p for p in agent.pollers if p.device.name == "steady")
            if agent.restarts.get("poll-buggy", 0) >= 2 and steady.polls >= 10:
                shutdown.set()

        await asyncio.wait_for(run(config, shutdown=shutdown, on_cycle=on_cycle), timeout=60)

    caplog.set_level(logging.INFO)
    run_async(main())
    agent = seen[0]
    assert agent.restarts["poll-buggy"] >= 2
    assert agent.restarts["cycle"] == 1
    assert "poll-steady" not in agent.restarts
    assert agent.health["restarts"]["poll-buggy"] >= 1
    tracebacks = [r for r in caplog.records if r.exc_info and "buggy" in r.getMessage()]
    assert len(tracebacks) == 1, [r.getMessage() for r in tracebacks]  # once, then one line
    assert any("failed again" in r.getMessage() for r in caplog.records)
