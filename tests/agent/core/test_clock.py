"""The wall clock's synchronization, as every record reports it."""

from __future__ import annotations

import ctypes.util

import pytest

from massgate.agent.core import clock


def test_the_clock_check_starts_no_process(monkeypatch: pytest.MonkeyPatch) -> None:
    """find_library("c") runs `ldconfig -p` in a child process; the check ran it every 10 s
    on the event loop (seen with strace on a running agent)."""
    clock._libc.cache_clear()

    def forks(name: str) -> str | None:
        raise AssertionError(f"find_library({name!r}) starts ldconfig")

    monkeypatch.setattr(ctypes.util, "find_library", forks)
    try:
        assert clock._kernel_synced() in (True, False)
        clock._cache.clear()
        assert clock.synced() in (True, False)
    finally:
        clock._libc.cache_clear()
