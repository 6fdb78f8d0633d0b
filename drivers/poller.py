"""What every driver's poller offers the runtime, whatever its protocol."""

from __future__ import annotations

import asyncio
from typing import Protocol

from .health import DeviceHealth


class Device(Protocol):
    @property
    def name(self) -> str: ...

    @property
    def endpoint(self) -> str: ...


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
