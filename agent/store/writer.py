"""The outbox's writer thread: every SQLite call of the running agent, in the order made.

A commit with a sync waits for the card (5 to 100 ms on an SD card, more when it is busy
with its own garbage collection), and a checkpoint for two; on the event loop that would be
a stall of every poll and of the publisher. The runtime hands each call on the outbox to
this one thread instead and awaits it (or, for acknowledgements, does not wait at all):
one thread, so the outbox is never used by two at once and its transactions are the same
as before, and first in, first out, so an acknowledgement handed over before a take is
seen by that take. What status and health read (depth, bytes, the oldest record, the last
sequence number, syncs) the outbox keeps in plain attributes, read without SQLite.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")


class Writer:
    """One thread that runs the calls it is given, one after the other."""

    def __init__(self) -> None:
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="outbox-writer")

    async def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run `fn` on the writer thread and wait for it; its exception is raised here."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, functools.partial(fn, *args, **kwargs))

    def submit(self, fn: Callable[..., object], *args: Any, **kwargs: Any) -> None:
        """Run `fn` on the writer thread and go on; an exception is logged, not lost."""
        future = self._pool.submit(fn, *args, **kwargs)
        future.add_done_callback(_said)

    def close(self) -> None:
        """Wait for every call handed over, then end the thread."""
        self._pool.shutdown(wait=True)


def _said(future: Future[object]) -> None:
    exc = future.exception()
    if exc is not None:
        log.error("outbox: a deferred call failed: %r", exc, exc_info=exc)
