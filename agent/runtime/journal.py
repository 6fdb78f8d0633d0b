"""Log lines the way the people who run the gateway read them.

Under systemd, stderr is connected to the journal ($JOURNAL_STREAM names it). There each
record goes to journald's native socket with its syslog priority and fields of its own:
`journalctl -u massgate -p warning` shows problems only, `MASSGATE_DEVICE=ft101` one
meter's story. Should that socket refuse a record, the line goes to stderr with a `<N>`
priority prefix, which journald also understands. Outside systemd: timestamped plain lines.

The native protocol (systemd's "Native Journal Protocol") is a datagram of `KEY=value`
lines; a value with a newline is sent as `KEY\\n<64-bit little-endian length><value>\\n`.
"""

from __future__ import annotations

import logging
import os
import socket
import struct
import sys
from typing import TextIO

JOURNAL_SOCKET = "/run/systemd/journal/socket"
PLAIN_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"

# Record attributes (`log.warning(..., extra={"device": name})`) that become journal fields.
FIELDS = ("device", "node", "stream", "broker")
_TRACEBACK = logging.Formatter()


def priority(level: int) -> int:
    """syslog priority of a logging level: 3 error, 4 warning, 6 info, 7 debug."""
    if level >= logging.CRITICAL:
        return 2
    if level >= logging.ERROR:
        return 3
    if level >= logging.WARNING:
        return 4
    if level >= logging.INFO:
        return 6
    return 7


def _field(key: str, value: str) -> bytes:
    data = value.encode("utf-8", "replace")
    if b"\n" in data:
        return key.encode() + b"\n" + struct.pack("<Q", len(data)) + data + b"\n"
    return key.encode() + b"=" + data + b"\n"


class JournalHandler(logging.Handler):
    """Sends each record to journald's native socket; falls back to a prefixed stderr line."""

    def __init__(
        self,
        path: str = JOURNAL_SOCKET,
        *,
        identifier: str = "massgate",
        stream: TextIO | None = None,
    ) -> None:
        super().__init__()
        self.path = path
        self.identifier = identifier
        self.socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        self.fallback = PrefixHandler(stream)

    def encode(self, record: logging.LogRecord) -> bytes:
        message = record.getMessage()
        if record.exc_info:
            message += "\n" + _TRACEBACK.formatException(record.exc_info)
        parts = [
            _field("MESSAGE", message),
            _field("PRIORITY", str(priority(record.levelno))),
            _field("SYSLOG_IDENTIFIER", self.identifier),
            _field("MASSGATE_LOGGER", record.name),
            _field("CODE_FILE", record.pathname),
            _field("CODE_LINE", str(record.lineno)),
        ]
        if record.funcName:
            parts.append(_field("CODE_FUNC", record.funcName))
        for name in FIELDS:
            value = getattr(record, name, None)
            if value is not None:
                parts.append(_field(f"MASSGATE_{name.upper()}", str(value)))
        return b"".join(parts)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.socket.sendto(self.encode(record), self.path)
        except OSError:
            # journald restarting, or a record bigger than a datagram: never lose the line.
            self.fallback.emit(record)

    def close(self) -> None:
        self.socket.close()
        super().close()


class PrefixHandler(logging.StreamHandler[TextIO]):
    """stderr lines with the `<N>` priority prefix journald reads; no timestamp (it adds one)."""

    def __init__(self, stream: TextIO | None = None) -> None:
        super().__init__(stream if stream is not None else sys.stderr)
        self.setFormatter(logging.Formatter("%(name)s: %(message)s"))

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        prefix = f"<{priority(record.levelno)}>"
        # journald reads the prefix per line: every line of a traceback keeps its priority.
        return "\n".join(prefix + line for line in text.splitlines())


def under_journal(stream: TextIO | None = None) -> bool:
    """True when `stream` (stderr) is the journal stream systemd connected."""
    value = os.environ.get("JOURNAL_STREAM", "")
    device, _, inode = value.partition(":")
    if not device or not inode:
        return False
    try:
        st = os.fstat((stream or sys.stderr).fileno())
    except (OSError, ValueError):
        return False
    return f"{st.st_dev}:{st.st_ino}" == value


def setup(verbose: bool, *, journal_socket: str = JOURNAL_SOCKET) -> logging.Handler:
    """Install the one root handler: the journal's under systemd, plain lines elsewhere."""
    handler: logging.Handler
    if under_journal():
        if os.path.exists(journal_socket):
            handler = JournalHandler(journal_socket)
        else:
            handler = PrefixHandler()
    else:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter(PLAIN_FORMAT))
    root = logging.getLogger()
    for old in root.handlers[:]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    # pymodbus logs every failed connect, every unexpected frame (with a hex dump) and every
    # timeout at WARNING or ERROR: with one misbehaving slave, hundreds of lines a minute. The
    # driver says the same once per device, then a summary (drivers/health.py); -v brings
    # pymodbus's detail back.
    logging.getLogger("pymodbus").setLevel(logging.DEBUG if verbose else logging.CRITICAL)
    # asyncua narrates every node it creates and every session at INFO: noise in the journal.
    if not verbose:
        logging.getLogger("asyncua").setLevel(logging.WARNING)
        # On the handler: a logger's filters do not apply to what its children log, and
        # asyncua logs from asyncua.client.ua_session and the like.
        handler.addFilter(_quiet_libraries)
    return handler


def _quiet_libraries(record: logging.LogRecord) -> bool:
    if record.name.startswith("asyncua"):
        return _quiet_asyncua(record)
    if record.name == "asyncio":
        return _quiet_device_protocols(record)
    return True


# What asyncua warns about on every connect although nothing is wrong: a server may revise
# the session timeout and the subscription's intervals, and says so in the values it returns.
_ROUTINE = (
    "Requested session timeout",
    "Requested secure channel timeout",
    "Revised values",
    "close_session was called but connection is closed",
    "close_secure_channel was called but connection is closed",
)


def _quiet_asyncua(record: logging.LogRecord) -> bool:
    """asyncua's routine revisions are not warnings, and its tracebacks (a "Publish
    iteration crashed" at every server restart) are detail for -v: the driver says what
    happened to the device in one line."""
    if record.levelno < logging.ERROR and str(record.msg).startswith(_ROUTINE):
        return False
    record.exc_info = None
    record.exc_text = None
    return True


def _quiet_device_protocols(record: logging.LogRecord) -> bool:
    """asyncio reports an exception in a protocol's data_received with a traceback; from a
    device's reply (garbage pymodbus could not frame) that is the device's fault, which the
    driver reports once. Our own protocols' errors still reach the journal."""
    message = record.getMessage()
    return not (message.startswith("Fatal error: protocol") and "pymodbus" in message)
