"""What every driver offers the runtime, whatever its protocol, and the two ways it can fail."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from massgate.agent.core.samples import Quality

from .health import DeviceHealth

# Where a configuration entry is, for a cross-check's message: (section, index, key) →
# (line, path). The agent's configuration hands one to each driver's Parser.cross_check.
Where = Callable[[str, int, str | None], tuple[int, str]]


class RetryableError(Exception):
    """The device or link may recover: no reply, timeout, busy, connection refused."""


class FatalError(Exception):
    """Retrying cannot help: the configuration asks for something the device does not have."""


class Point(Protocol):
    """One value a device gives: its tag (<device>.<point>), its unit, where a total wraps."""

    @property
    def tag(self) -> str: ...

    @property
    def unit(self) -> str: ...

    @property
    def rollover(self) -> float: ...


class Device(Protocol):
    @property
    def name(self) -> str: ...

    @property
    def endpoint(self) -> str: ...

    @property
    def driver(self) -> str:
        """The package in drivers/ that reads it (the registry's key)."""
        ...

    @property
    def points(self) -> tuple[Point, ...]: ...


class Poller(Protocol):
    health: DeviceHealth

    @property
    def device(self) -> Device: ...

    @property
    def up(self) -> bool: ...

    @property
    def polls(self) -> int: ...

    async def run(self, stop: asyncio.Event) -> None:
        """Read until `stop` is set; raise FatalError only when retrying cannot help."""


async def _nothing() -> None:
    return None


@dataclass(frozen=True, slots=True)
class Opened:
    """A driver's pollers for the devices of one configuration, and how to let go of what they
    share (a serial line, a TCP connection) once every poller has stopped."""

    pollers: list[Poller]
    close: Callable[[], Awaitable[None]] = _nothing


def meter_alarms(
    flags: Sequence[tuple[str, str]],
    values: Mapping[str, float],
    quality: Quality,
    error: str | None,
) -> tuple[Quality, str | None, tuple[str, ...]]:
    """A reply's quality, error and active alarms under the meter's own alarm flags.

    `flags` are (tag, "bad" | "uncertain") of the points marked `alarm` in its profile. A
    flag reading 1 is the meter saying its values are in doubt: the reply's quality is at
    least that. A flag that could not be read (NaN) or was not read raises nothing.
    """
    raised = [(tag, alarm) for tag, alarm in flags if values.get(tag, 0.0) >= 0.5]
    if not raised:
        return quality, error, ()
    worst = Quality.BAD if any(alarm == "bad" for _, alarm in raised) else Quality.UNCERTAIN
    said = "meter alarm: " + ", ".join(f"{tag} ({alarm})" for tag, alarm in raised)
    return (
        max(quality, worst),
        said if error is None else f"{error}; {said}",
        tuple(tag for tag, _ in raised),
    )
