"""The outbox's commits run on its writer thread: a card slow to write stalls no poll."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import pytest

from massgate.agent import config as config_module
from massgate.agent.runtime.pipeline import Agent, run
from massgate.agent.store.outbox import Outbox
from massgate.drivers.modbus.poller import DevicePoller
from tests.conftest import free_port, run_async

POLLS = 5  # polls that must happen while a commit waits for the card
BOUND = 20.0  # s a commit waits at most (reached only where the commit stalls the loop)


def _config(tmp_path: Path, device: str = "", rest: str = "") -> config_module.Config:
    """One Coriolis meter that nobody serves (its polls fail fast), and `rest`."""
    path = tmp_path / "m.yaml"
    path.write_text(
        f"gateway: {{site: s, id: g, state_dir: {tmp_path / 'state'}}}\ndevices:\n"
        f"  - {{name: ft, protocol: modbus_tcp, host: 127.0.0.1, port: {free_port()}, "
        f"profile: coriolis{device}}}\n" + rest
    )
    return config_module.load(path)


def test_a_commit_waiting_for_the_card_stalls_no_poll(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = _config(
        tmp_path,
        ", poll_interval: 50ms, timeout: 20ms, degrade_after: 1000",
        "telemetry: {interval: 100ms}\n",
    )
    held = threading.Event()  # a commit is waiting for the card
    card = threading.Event()  # the card has written it
    waited_out: list[bool] = []
    polls_while_held = [0]
    real_put, real_poll = Outbox.put, DevicePoller.poll

    def slow_put(self: Outbox, records, **kwargs):  # type: ignore[no-untyped-def]
        if records and not held.is_set():
            held.set()
            waited_out.append(not card.wait(BOUND))
        return real_put(self, records, **kwargs)

    async def poll(self: DevicePoller):  # type: ignore[no-untyped-def]
        if held.is_set() and not card.is_set():
            polls_while_held[0] += 1
            if polls_while_held[0] >= POLLS:
                card.set()
        return await real_poll(self)

    monkeypatch.setattr(Outbox, "put", slow_put)
    monkeypatch.setattr(DevicePoller, "poll", poll)

    async def main() -> None:
        shutdown = asyncio.Event()

        def on_cycle(agent: Agent) -> None:
            if card.is_set() and agent.outbox.depth() > 0:
                shutdown.set()

        await asyncio.wait_for(run(config, shutdown=shutdown, on_cycle=on_cycle), 120)

    run_async(main())
    assert waited_out == [False], "the loop was stalled by the commit: no poll ran meanwhile"
    assert polls_while_held[0] >= POLLS


def test_a_failure_after_the_commit_does_not_commit_the_records_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Only a commit that failed puts the cycle's records back for the next one."""
    from types import SimpleNamespace

    from massgate.agent.core.samples import Batch, Quality
    from massgate.agent.runtime.gateway import Gateway
    from massgate.agent.runtime.supervise import process_batches
    from massgate.agent.store.writer import Writer

    config = _config(tmp_path)
    outbox = Outbox(config.outbox.path, max_bytes=1 << 20, site="s", gateway="g")
    writer = Writer()
    agent = SimpleNamespace(
        config=config, gateway=Gateway(config, outbox), outbox=outbox, writer=writer
    )

    def broken_flush(self: Outbox) -> float:
        raise RuntimeError("a bug after the commit")

    async def main() -> None:
        batches: asyncio.Queue[Batch] = asyncio.Queue()
        batches.put_nowait(Batch("ft", 1.0, 1.8e9, {"ft.mass_flow": 1.0}, Quality.GOOD))
        with monkeypatch.context() as patched:
            patched.setattr(Outbox, "flush", broken_flush)
            with pytest.raises(RuntimeError, match="after the commit"):
                await process_batches(agent, batches, final=False)  # type: ignore[arg-type]
        assert agent.gateway.pending == []
        await process_batches(agent, batches, final=False)  # type: ignore[arg-type]

    try:
        run_async(main())
        outbox.sync()
        kinds = [m.topic.rsplit("/", 1)[1] for m in outbox.take(100)]
        assert kinds.count("telemetry") == 1, kinds
    finally:
        writer.close()
        outbox.close()


def test_a_commands_answer_waits_for_the_commit_of_what_it_recorded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An entry is answered once its record is committed: not while it is in memory, nor
    after a commit that failed (it waits for the next one)."""
    import time
    from types import SimpleNamespace

    from massgate.agent.core.samples import Batch
    from massgate.agent.runtime.gateway import Gateway
    from massgate.agent.runtime.supervise import process_batches
    from massgate.agent.store.writer import Writer

    config = _config(
        tmp_path,
        rest="streams:\n  - {name: feed, mass_flow: ft.mass_flow, accuracy: 0.1 %}\n"
        "manual_streams:\n  - {name: tickets, accuracy: 0.2 %}\n"
        "nodes:\n  - {name: yard, inputs: [tickets], outputs: [feed], window: {batch: command},\n"
        "     tolerance: {relative: 1 %}, persistence: 1 h}\n",
    )
    outbox = Outbox(config.outbox.path, max_bytes=1 << 20, site="s", gateway="g")
    writer = Writer()
    agent = SimpleNamespace(
        config=config, gateway=Gateway(config, outbox), outbox=outbox, writer=writer
    )

    def card_gone(self: Outbox, records, **kwargs):  # type: ignore[no-untyped-def]
        raise OSError("the card is gone")

    def entries() -> list[str]:
        outbox.sync()
        return [m.topic for m in outbox.take(1000) if m.topic.endswith("/entry")]

    async def main() -> None:
        batches: asyncio.Queue[Batch] = asyncio.Queue()
        request = {"command": "enter", "stream": "tickets", "kg": 1200.0, "by": "op"}
        answer = agent.gateway.command({**request, "id": "r1", "time": time.time()})
        assert answer["ok"] is True, answer
        waiter = agent.gateway.committed()
        assert agent.gateway.sync_now  # the commit that holds it is synced
        assert not waiter.done()  # in memory only: no answer yet
        with monkeypatch.context() as patched:
            patched.setattr(Outbox, "put", card_gone)
            with pytest.raises(OSError, match="card is gone"):
                await process_batches(agent, batches, final=False)  # type: ignore[arg-type]
        assert not waiter.done()  # the commit failed: it waits for the next one
        assert entries() == []
        await process_batches(agent, batches, final=False)  # type: ignore[arg-type]
        assert waiter.done()
        assert waiter.result() is None  # on the disk, nothing to warn of
        assert entries() == ["massgate/s/g/entry"]

    try:
        run_async(main())
        # The id went with the same commit: a restart knows it.
        assert "r1" in Gateway(config, outbox).answered.kept
    finally:
        writer.close()
        outbox.close()


def test_the_state_beside_the_totals_is_saved_when_it_changes_not_with_every_save(
    tmp_path: Path,
) -> None:
    """Batches, entries, request ids and alarms change by a command or an event: the save
    every 10 s of the running totals does not rewrite them (a card's wear)."""
    from massgate.agent.runtime.gateway import Gateway

    config = _config(
        tmp_path,
        rest="streams:\n  - {name: feed, mass_flow: ft.mass_flow, accuracy: 0.1 %}\n"
        "manual_streams:\n  - {name: tickets, accuracy: 0.2 %}\n"
        "nodes:\n  - {name: yard, inputs: [tickets], outputs: [feed], "
        "window: {batch: command},\n"
        "     tolerance: {relative: 1 %}, persistence: 1 h}\n",
    )
    outbox = Outbox(config.outbox.path, max_bytes=1 << 20, site="s", gateway="g")
    try:
        gateway = Gateway(config, outbox)
        _, first = gateway.take_pending(0.0)
        assert first is not None
        assert {"feed", "manual/tickets", "alarm/yard"} <= set(first)
        _, later = gateway.take_pending(20.0)  # the next timed save: the totals alone
        assert later is not None
        assert set(later) == {"feed"}
        start = {"command": "batch", "node": "yard", "action": "start", "batch": "B1"}
        assert gateway.command({**start, "by": "op"})["ok"] is True
        _, after = gateway.take_pending(21.0)  # a command: saved with the next commit
        assert after is not None
        assert {"feed", "batch/yard", "manual/tickets", "alarm/yard"} <= set(after)
    finally:
        outbox.close()
