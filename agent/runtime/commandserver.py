"""The local socket operators command the running agent through (`massgate batch`, `enter`): one
JSON request line per connection, one JSON answer, then close.

Beside the status socket, not on it: status is read by anyone in the massgate group and by
monitoring every few seconds, and a command changes what the agent records. Both are 0660 in
the state directory, so who may command follows the same group, and no network port is
opened. A request never reaches a device: it changes the gateway's own records only.
"""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path
from typing import Any

from ..config.model import COMMAND_SOCKET
from ..core.requests import MAX_REQUEST, Committed, Handler, once_durable, parse_request
from .statusserver import LocalServer, exchange

log = logging.getLogger(__name__)

READ_TIMEOUT = 10.0  # s a client may take to send its request


def command_socket(status_socket: Path) -> Path:
    return status_socket.with_name(COMMAND_SOCKET)


def send(path: Path, request: dict[str, Any], *, timeout: float = 10.0) -> dict[str, Any]:
    """The agent's answer to `request`; StatusUnavailable when no agent answers."""
    line = json.dumps(request, separators=(",", ":")).encode() + b"\n"
    return exchange(path, line, timeout=timeout, what="an answer to a command")


def _busy(_: dict[str, Any]) -> dict[str, Any]:
    return {"ok": False, "error": "the agent is starting or reloading its configuration; try again"}


class CommandServer(LocalServer):
    """Answers each request line on `path` with `handle(request)`, run on the event loop (so
    it never races the pipeline's cycle)."""

    what = "command socket"
    limit = MAX_REQUEST

    def __init__(
        self, path: Path, handle: Handler = _busy, committed: Committed | None = None
    ) -> None:
        super().__init__(path)
        self.handle = handle
        self.committed = committed  # None: answered at once (a gateway without a pipeline)

    def idle(self) -> None:
        """No gateway to command (a reload is between two)."""
        self.handle = _busy
        self.committed = None

    async def _answer(self, reader: asyncio.StreamReader) -> dict[str, Any]:
        try:
            line = await asyncio.wait_for(reader.readline(), READ_TIMEOUT)
        except TimeoutError:
            return {"ok": False, "error": f"no request within {READ_TIMEOUT:g} s"}
        except (ValueError, asyncio.LimitOverrunError):
            return {
                "ok": False,
                "error": f"a request is one JSON line of at most {MAX_REQUEST} bytes",
            }
        try:
            request = parse_request(line)
        except ValueError as exc:
            return {"ok": False, "error": str(exc)}
        request["via"] = "socket"  # not what the client says it is
        try:
            answer = self.handle(request)
            # Taken now, answered once on the disk: asked before anything else can run.
            committed = self.committed if answer.get("ok") is True else None
            return await once_durable(answer, committed() if committed is not None else None)
        except Exception:  # a bug must not end the agent, nor leave the client waiting
            log.exception("command %r failed", request.get("command"))
            return {
                "ok": False,
                "error": "the agent failed to carry out the command (see its journal)",
            }
