"""Tell systemd how the agent is doing, over the notify socket (sd_notify(3)).

The protocol is one datagram of newline-separated `KEY=value` lines to the AF_UNIX socket
named in $NOTIFY_SOCKET (a leading `@` is the abstract namespace). Writing it ourselves
spares a compiled dependency (libsystemd) on every gateway. Outside systemd NOTIFY_SOCKET is
unset and every call does nothing.
"""

from __future__ import annotations

import logging
import os
import socket

log = logging.getLogger(__name__)


class Notifier:
    """One notify socket, opened once; errors are logged once and never raised."""

    def __init__(self, address: str | None = None) -> None:
        address = os.environ.get("NOTIFY_SOCKET") if address is None else address
        self._address: str | None = None
        self._socket: socket.socket | None = None
        self._failed = False
        if address:
            # An abstract socket's name starts with a NUL byte in the address.
            self._address = "\0" + address[1:] if address.startswith("@") else address
            self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        self.watchdog = watchdog_interval()
        self._status = ""

    @property
    def enabled(self) -> bool:
        return self._socket is not None

    def send(self, **fields: str | int) -> bool:
        """Send `KEY=value` lines, e.g. send(READY=1, STATUS="running")."""
        if self._socket is None or self._address is None:
            return False
        message = "\n".join(f"{key}={value}" for key, value in fields.items())
        try:
            self._socket.sendto(message.encode(), self._address)
        except OSError as exc:
            if not self._failed:
                self._failed = True
                log.warning("systemd notify socket %s: %s", self._address.lstrip("\0"), exc)
            return False
        return True

    def ready(self, status: str) -> None:
        self._status = status
        self.send(READY=1, STATUS=status, MAINPID=os.getpid())

    def status(self, status: str) -> None:
        """Send STATUS only when it changed: `systemctl status` shows the latest."""
        if status != self._status:
            self._status = status
            self.send(STATUS=status)

    def reloading(self) -> None:
        self.send(RELOADING=1, STATUS="reloading the configuration")

    def stopping(self) -> None:
        self.send(STOPPING=1, STATUS="stopping: saving totals and flushing the outbox")

    def pet(self) -> None:
        self.send(WATCHDOG=1)

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close()
            self._socket = None


def watchdog_interval() -> float | None:
    """WatchdogSec in seconds when systemd asks this process to be watched, else None."""
    usec = os.environ.get("WATCHDOG_USEC")
    pid = os.environ.get("WATCHDOG_PID")
    if not usec or (pid and pid != str(os.getpid())):
        return None
    try:
        seconds = int(usec) / 1e6
    except ValueError:
        return None
    return seconds if seconds > 0 else None
