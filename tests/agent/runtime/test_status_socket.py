"""The status socket replaces a socket a killed agent left behind, and nothing else: a file
or a directory at its path (a slip in health.socket) is refused, never deleted."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from massgate.agent.runtime.statusserver import StatusServer, fetch
from tests.conftest import run_async


def _serve_once(path: Path) -> dict[str, object]:
    async def main() -> dict[str, object]:
        server = StatusServer(path, lambda: {"ok": True})
        await server.start()
        try:
            import asyncio

            return await asyncio.to_thread(fetch, path, timeout=5.0)
        finally:
            await server.close()

    result: dict[str, object] = run_async(main())
    return result


def test_a_socket_left_by_a_killed_agent_is_replaced(tmp_path: Path):
    path = tmp_path / "status.sock"
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(path))
    stale.close()  # the file stays, as after SIGKILL
    assert _serve_once(path) == {"ok": True}


@pytest.mark.parametrize("kind", ["file", "directory"])
def test_a_file_or_directory_at_the_path_is_refused_and_kept(tmp_path: Path, kind: str):
    path = tmp_path / "massgate.yaml"
    if kind == "file":
        path.write_text("gateway: {site: s, id: g}\n")
    else:
        path.mkdir()
    with pytest.raises(OSError, match="not a socket" if kind == "file" else "is a directory"):
        _serve_once(path)
    assert path.exists()
    if kind == "file":
        assert path.read_text() == "gateway: {site: s, id: g}\n"
