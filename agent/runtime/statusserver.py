"""The local socket `massgate status` reads: one JSON snapshot per connection, then close.

A Unix socket rather than a state file: nothing is written to the SD card every second, the
answer is live, and who may ask follows the file permissions of the state directory. It is
not a lock: agent/runtime/statelock.py keeps a second agent off the state directory before this
socket is opened, so a socket file found here was left by an agent that is gone.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..core.preflight import socket_path_problem


class StatusUnavailable(OSError):
    """No agent answers on the socket; the message says why, in the operator's words."""


def fetch(path: Path, *, timeout: float = 5.0) -> dict[str, Any]:
    """The running agent's snapshot, or StatusUnavailable."""
    return exchange(path, None, timeout=timeout, what="a status snapshot")


def exchange(
    path: Path, request: bytes | None, *, timeout: float = 5.0, what: str = "an answer"
) -> dict[str, Any]:
    """Send `request` (if any) on the agent's socket `path` and read its JSON answer to the
    end; StatusUnavailable, in the operator's words, when no agent answers."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        try:
            sock.connect(str(path))
            if request is not None:
                sock.sendall(request)
            chunks = []
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        except FileNotFoundError as exc:
            raise StatusUnavailable(
                f"{path} does not exist: massgate is not running with this configuration "
                "(systemctl status massgate; journalctl -u massgate)"
            ) from exc
        except ConnectionRefusedError as exc:
            raise StatusUnavailable(
                f"nothing answers on {path}: massgate is not running (it was stopped or killed); "
                "systemctl status massgate"
            ) from exc
        except PermissionError as exc:
            raise StatusUnavailable(
                f"no permission to open {path}: run as root or as a member of the massgate group"
            ) from exc
        except TimeoutError as exc:
            raise StatusUnavailable(
                f"the agent did not answer on {path} within {timeout:g} s"
            ) from exc
        except OSError as exc:  # the agent closed on us mid-way (it stopped)
            raise StatusUnavailable(f"the agent on {path} hung up: {exc.strerror or exc}") from exc
    try:
        result: dict[str, Any] = json.loads(b"".join(chunks))
    except ValueError as exc:
        raise StatusUnavailable(f"the answer on {path} is not {what}: {exc}") from exc
    if not isinstance(result, dict):
        raise StatusUnavailable(f"the answer on {path} is not {what}")
    return result


class LocalServer:
    """A Unix socket in the state directory, 0660 (the massgate group), answering each
    connection with one JSON line from `_answer`, then closing it."""

    what = "socket"
    limit = 2**16  # bytes of a line read from a client

    def __init__(self, path: Path) -> None:
        self.path = path
        self._server: asyncio.AbstractServer | None = None

    async def start(self) -> None:
        if (problem := socket_path_problem(self.path)) is not None:
            raise OSError(f"{self.what}: {problem}")
        # We hold the state lock: a socket here was left by an agent that was killed.
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._server = await asyncio.start_unix_server(
            self._serve, path=str(self.path), limit=self.limit
        )
        # The group (massgate) may ask; others may not.
        os.chmod(self.path, 0o660)

    async def _answer(self, reader: asyncio.StreamReader) -> dict[str, Any]:
        raise NotImplementedError

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            answer = await self._answer(reader)
            writer.write(json.dumps(answer, separators=(",", ":")).encode() + b"\n")
            await writer.drain()
        except (ConnectionError, OSError):
            pass  # the client went away; nothing to tell it
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError, OSError):
                await writer.wait_closed()

    async def close(self) -> None:
        if self._server is None:
            return
        self._server.close()
        await self._server.wait_closed()
        self._server = None
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()


class StatusServer(LocalServer):
    """Serves `get()` as JSON to every connection on `path`."""

    what = "status socket"

    def __init__(self, path: Path, get: Callable[[], dict[str, Any]]) -> None:
        super().__init__(path)
        self.get = get

    async def _answer(self, reader: asyncio.StreamReader) -> dict[str, Any]:
        return self.get()
