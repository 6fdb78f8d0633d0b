"""What a device's poller tells the operator: up or down, since when, how often it failed.

A meter that stops answering fails at every poll, for hours. The journal gets one ERROR when
it goes down, a WARNING summary every `SUMMARY_EVERY` while it stays down (how many polls
failed, which errors), and one INFO when it recovers, instead of a line per poll.
"""

from __future__ import annotations

import logging
import time
from collections import Counter

log = logging.getLogger("massgate.drivers")

SUMMARY_EVERY = 600.0  # s between "still failing" lines for one device


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


class DeviceHealth:
    """Counts and log lines of one device's polls; `last_error` is None while it answers."""

    def __init__(self, name: str, endpoint: str, *, summary_every: float = SUMMARY_EVERY) -> None:
        self.name = name
        self.endpoint = endpoint
        self.summary_every = summary_every
        self.good = 0
        self.failed = 0
        self.last_good: float | None = None  # wall time of the last good poll
        self.first_good: float | None = None  # ... and of the first, in this process
        self.last_error: str | None = None
        self.down_since: float | None = None  # wall time of the first failure in this run
        self.stopped = False  # given up for good (a configuration error)
        # When the last poll finished, good or failed, and how long a healthy poller may
        # take between two (its interval, its timeouts, its retries): the watchdog's measure.
        self.last_attempt = time.monotonic()
        self.stall_after = 60.0
        self._down_mono = 0.0
        self._next_summary = 0.0
        self._recent: Counter[str] = Counter()  # errors since the last line about them
        self._failed_while_down = 0

    @property
    def up(self) -> bool:
        return self.good > 0 and self.last_error is None

    def ok(self) -> None:
        """A good poll (or a connected session)."""
        self.good += 1
        self.last_good = time.time()
        self.first_good = self.first_good or self.last_good
        self.last_attempt = time.monotonic()
        if self.last_error is None:
            return
        down = time.monotonic() - self._down_mono
        log.info(
            "%s: reading again after %s down (%d failed polls); the last error was: %s",
            self.name,
            _duration(down),
            self._failed_while_down,
            self.last_error,
            extra={"device": self.name},
        )
        self.last_error = None
        self.down_since = None
        self._recent.clear()
        self._failed_while_down = 0

    def fail(self, message: str) -> None:
        """A failed poll: logged when the device goes down, then summarized."""
        self.failed += 1
        now = time.monotonic()
        self.last_attempt = now
        first = self.last_error is None
        self.last_error = message
        self._failed_while_down += 1
        if first:
            self.down_since = time.time()
            self._down_mono = now
            self._next_summary = now + self.summary_every
            log.error(
                "%s (%s): %s; further failures are summarized every %s until it answers",
                self.name,
                self.endpoint,
                message,
                _duration(self.summary_every),
                extra={"device": self.name},
            )
            return
        self._recent[message] += 1
        if now >= self._next_summary:
            self._next_summary = now + self.summary_every
            kinds = "; ".join(f"{n}× {m}" for m, n in self._recent.most_common(3))
            more = len(self._recent) - 3
            log.warning(
                "%s (%s): still not answering after %s: %d failed polls (%s%s)",
                self.name,
                self.endpoint,
                _duration(now - self._down_mono),
                self._failed_while_down,
                kinds,
                f"; and {more} other errors" if more > 0 else "",
                extra={"device": self.name},
            )
            self._recent.clear()

    def beat(self) -> None:
        """Alive without a poll: a subscription that is quiet because nothing changed."""
        self.last_attempt = time.monotonic()

    def stop(self, message: str) -> None:
        """Retrying cannot help: the device stays down, and says why, until the config changes."""
        self.stopped = True
        self.last_error = message
        self.down_since = self.down_since or time.time()
        log.error("%s: stopped polling: %s", self.name, message, extra={"device": self.name})

    def snapshot(self) -> dict[str, object]:
        return {
            "up": self.up,
            "good": self.good,
            "failed": self.failed,
            "last_good": self.last_good,
            "first_good": self.first_good,
            "down_since": self.down_since,
            "last_error": self.last_error,
            "stopped": self.stopped,
        }
