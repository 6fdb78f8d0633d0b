"""Supervision: a task that raised is logged once, counted and started again with backoff;
only a configuration a driver calls impossible (FatalError) ends the agent."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from massgate.drivers.base import FatalError, Poller

from ..core.records import Record
from ..core.samples import Batch

if TYPE_CHECKING:  # the pipeline imports this module
    from .pipeline import Agent

log = logging.getLogger(__name__)

RESTART_FIRST = 1.0  # s before a task that raised is started again; doubles ...
RESTART_MAX = 60.0  # ... up to this; a task that then ran a minute starts from the first again


async def supervised(
    name: str, start: Callable[[], Any], agent: Agent, stop: asyncio.Event
) -> None:
    """Run `start()` until it returns; restart it with backoff after an unexpected exception.

    One bad device, record or broker must not end the process (DESIGN, "runtime"): the first
    failure of a task is logged with its traceback, later ones in one line; every one is
    counted in `agent.restarts` for `massgate status`.
    """
    delay = RESTART_FIRST
    while True:
        began = time.monotonic()
        try:
            await start()
            return
        except Exception as exc:
            count = agent.restarts.get(name, 0) + 1
            agent.restarts[name] = count
            if time.monotonic() - began > RESTART_MAX:
                delay = RESTART_FIRST
            if count == 1:
                log.exception("%s failed unexpectedly; restarting it in %g s", name, delay)
            else:
                log.error("%s failed again (%d restarts): %r; restarting in %g s",
                          name, count, exc, delay)  # fmt: skip
        if stop.is_set():
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=delay)
        if stop.is_set():
            return
        delay = min(delay * 2, RESTART_MAX)


async def guarded_cycle(agent: Agent, batches: asyncio.Queue[Batch]) -> None:
    """One processing cycle; an unexpected exception is logged, counted and the next cycle
    tries again (the records it made are kept for it, see process_batches)."""
    try:
        await process_batches(agent, batches, final=False)
    except Exception as exc:
        count = agent.restarts.get("cycle", 0) + 1
        agent.restarts["cycle"] = count
        if count == 1:
            log.exception("the processing cycle failed unexpectedly; the next one tries again")
        elif count % 100 == 0:
            log.error("the processing cycle failed again (%d times): %r", count, exc)


async def poll_device(poller: Poller, stop: asyncio.Event) -> None:
    try:
        await poller.run(stop)
    except FatalError as exc:
        # One misconfigured device must not stop the others; it stays down and says why.
        poller.health.stop(str(exc))


async def process_batches(agent: Agent, batches: asyncio.Queue[Batch], *, final: bool) -> None:
    """Ingest what the drivers sent, run the cycle on the event loop, and commit what it made
    on the outbox's writer thread (store/writer.py), so that no poll waits for the card."""
    while True:
        try:
            agent.gateway.ingest(batches.get_nowait())
        except asyncio.QueueEmpty:
            break
    mono = time.monotonic()
    agent.gateway.cycle(mono, time.time(), final=final)
    records, totals = agent.gateway.take_pending(mono)
    waiting = agent.gateway.take_waiting()  # commands whose records these are
    # The first values wait for no timed sync: they go as soon as they are committed.
    sync, agent.gateway.sync_now = agent.gateway.sync_now, False
    try:
        # Group commit: one transaction for the cycle's records and the totals they report.
        await agent.writer.call(agent.outbox.put, records, totals=totals, sync=sync)
    except BaseException:
        # Not committed: the records go again with the next cycle, never lost on the way.
        agent.gateway.not_committed(records, totals, waiting, sync=sync)
        raise
    if waiting:
        held = agent.outbox.held()
        note = f"held in memory, not on the disk (full): {held} records wait" if held else None
        for waiter in waiting:
            if not waiter.done():
                waiter.set_result(note)
    # Committed: whatever fails from here on must not put the records back.
    await agent.writer.call(housekeeping, agent, records)


def housekeeping(agent: Agent, records: list[Record]) -> None:
    """On the writer thread, after the cycle's commit: what is due (a timed sync, deletions,
    archive pruning)."""
    outbox = agent.outbox
    # The sync that makes records durable (and so sendable) when no synced commit came.
    outbox.flush()
    if any(r.kind == "hourly" for r in records):
        outbox.prune_archive("hourly", time.time() - agent.config.hourly_retention)
        # Balance records are many (one per node a minute): pruned once an hour, like hourly.
        for kind in ("balance", "alarm", "reconciliation"):
            outbox.prune_archive(kind, time.time() - agent.config.balance_retention)
