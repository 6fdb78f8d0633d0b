"""An operator's request to the running agent, as it arrives on the command socket or the
broker's command topic: one JSON object of bounded size. The checks both ways share."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any

MAX_REQUEST = 64 * 1024  # bytes in one request

# The gateway's side: what carries a request out (Gateway.command), and what its answer
# waits for (Gateway.committed: the commit of what it recorded).
Handler = Callable[[dict[str, Any]], dict[str, Any]]
Committed = Callable[[], Awaitable[str | None]]


def parse_request(data: bytes) -> dict[str, Any]:
    """The request object in `data`. Raises ValueError saying what is wrong with it."""
    if len(data) > MAX_REQUEST:
        raise ValueError(f"a request is one JSON object of at most {MAX_REQUEST} bytes")
    try:
        request = json.loads(data)
    except ValueError as exc:  # also bytes that are not UTF-8
        raise ValueError(f"a request is one JSON object: {exc}") from None
    if not isinstance(request, dict):
        raise ValueError("a request is one JSON object")
    return request


KEEP_ANSWERED = 86400.0  # s a request id is remembered: a sender's retry comes well within
MAX_ANSWERED = 1000  # ids remembered at most (saved with the running totals: kept small)


class Answered:
    """The ids of requests carried out, each with when and what was said: a request sent
    again with the same id (a sender's retry after a lost answer, MQTT's at-least-once) is
    answered again, not carried out again. A refused request is not remembered, so that
    the same id may go again once what was wrong is put right."""

    def __init__(self, saved: object = None) -> None:
        self.kept: dict[str, tuple[float, str]] = {}
        if isinstance(saved, dict) and isinstance(saved.get("ids"), list):
            for item in saved["ids"]:
                if isinstance(item, list) and len(item) == 3:
                    key, at, message = item
                    if isinstance(key, str) and isinstance(at, int | float):
                        self.kept[key] = (float(at), str(message))

    def get(self, key: str, now: float) -> tuple[float, str] | None:
        found = self.kept.get(key)
        return found if found is not None and found[0] >= now - KEEP_ANSWERED else None

    def add(self, key: str, now: float, message: str) -> None:
        self.kept.pop(key, None)
        self.kept[key] = (now, message)
        # Oldest first (dicts keep their order): the expired and the surplus go.
        for old in list(self.kept):
            if len(self.kept) <= MAX_ANSWERED and self.kept[old][0] >= now - KEEP_ANSWERED:
                break
            del self.kept[old]

    def saved(self) -> dict[str, object]:
        return {"ids": [[key, at, message] for key, (at, message) in self.kept.items()]}


DURABLE_WITHIN = 5.0  # s a command's answer waits for its records to reach the disk


async def once_durable(
    answer: dict[str, Any], committed: Awaitable[str | None] | None
) -> dict[str, Any]:
    """`answer`, given once `committed` says the command's records are on the disk (None:
    nothing to wait for). The answer still says ok when they are not after all: the agent
    holds them and goes on trying; a warning says so, and the journal says why."""
    if committed is None:
        return answer
    try:
        note = await asyncio.wait_for(committed, DURABLE_WITHIN)
    except TimeoutError:
        note = f"not yet on the disk after {DURABLE_WITHIN:g} s (see the agent's journal)"
    return answer if note is None else {**answer, "warning": note}
