"""The `health` section's checks: the status socket's path and the metrics endpoint."""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Any

from ..core import preflight
from ..core.yamlsource import (
    Invalid,
    Section,
    text,
)
from .model import COMMAND_SOCKET


def check_socket(s: Section, socket: Path, user: Any) -> None:
    # The command socket (massgate batch) lies beside the status socket, one letter longer.
    for path in (socket, socket.with_name(COMMAND_SOCKET)):
        if (problem := preflight.socket_path_problem(path)) is not None:
            s.fail("socket", problem)
            return
    try:
        preflight.writable_dir(socket.parent, user=user)
    except preflight.PreflightError as exc:
        s.fail("socket", str(exc))


def loopback_address(value: Any) -> tuple[str, int]:
    """host:port of the metrics endpoint; only a loopback address (it has no authentication)."""
    host, sep, port_text = text(value).rpartition(":")
    host = host.strip("[]")
    if not sep or not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise Invalid(f"expected host:port such as 127.0.0.1:9108, got {value!r}")
    if host == "localhost":
        host = "127.0.0.1"
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise Invalid(
            f"{host} is not a loopback address: the metrics endpoint has no authentication, "
            "so it listens on 127.0.0.1 or ::1 only (put a reverse proxy with TLS in front "
            "to reach it from elsewhere)"
        )
    return host, int(port_text)
