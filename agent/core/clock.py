"""Whether the wall clock can be believed, and which boot this is.

A Raspberry Pi has no real-time clock: it boots at the time fake-hwclock saved at its last
shutdown and steps forward when NTP answers. Records say whether the clock was synchronized
when they were made (`clock_synced`), so a consumer knows which timestamps to doubt.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import time
from pathlib import Path

# systemd-timesyncd touches this file once the clock is synchronized (systemd ≥ 239).
TIMESYNC_FLAG = Path("/run/systemd/timesync/synchronized")
BOOT_ID = Path("/proc/sys/kernel/random/boot_id")
_TIME_ERROR = 5  # adjtimex(2): the clock is not synchronized
_STA_UNSYNC = 0x0040
_STATUS_OFFSET = 40  # struct timex: int modes, long offset, freq, maxerror, esterror; int status
_CHECK_EVERY = 10.0  # s: the state changes once per boot or so

_cache: list[tuple[float, bool]] = []  # (monotonic time of the check, its answer)


@functools.cache
def _libc() -> ctypes.CDLL | None:
    """The C library, looked up once: find_library runs `ldconfig -p` in a child process,
    which every clock check (every 10 s, on the event loop) used to fork anew. The process's
    own symbols (CDLL(None)) include libc's wherever Python is linked to it."""
    try:
        return ctypes.CDLL(None, use_errno=True)
    except OSError:
        name = ctypes.util.find_library("c")
        try:
            return ctypes.CDLL(name, use_errno=True) if name is not None else None
        except OSError:
            return None


def _kernel_synced() -> bool | None:
    """The kernel's view (set by chrony, ntpd and timesyncd alike), or None if unknown."""
    libc = _libc()
    if libc is None:
        return None
    try:
        timex = ctypes.create_string_buffer(512)  # modes = 0: read only
        state = libc.adjtimex(timex)
    except (OSError, AttributeError):
        return None
    if state < 0:
        return None
    status = int.from_bytes(timex.raw[_STATUS_OFFSET : _STATUS_OFFSET + 4], "little", signed=True)
    return state != _TIME_ERROR and not status & _STA_UNSYNC


def synced() -> bool:
    """Whether the wall clock is synchronized to a time source (checked every 10 s)."""
    now = time.monotonic()
    if _cache and now - _cache[0][0] < _CHECK_EVERY:
        return _cache[0][1]
    result = TIMESYNC_FLAG.exists() or bool(_kernel_synced())
    _cache[:] = [(now, result)]
    return result


@functools.cache
def boot_id() -> str | None:
    """This boot's id: monotonic times of one boot compare across process restarts.
    Read once: it is the same for the life of the process (totals are saved every second)."""
    try:
        return BOOT_ID.read_text(encoding="ascii").strip() or None
    except OSError:
        return None
