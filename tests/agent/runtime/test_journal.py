"""Log records as journald receives them over its native socket, and the fallbacks."""

from __future__ import annotations

import io
import logging
import os
import socket
import struct
from pathlib import Path

import pytest

from massgate.agent.runtime.journal import JournalHandler, PrefixHandler, under_journal


def parse_native(data: bytes) -> dict[str, str]:
    """journald's side of the native protocol: KEY=value lines and binary-safe fields."""
    fields: dict[str, str] = {}
    while data:
        line_end = data.index(b"\n")
        line = data[:line_end]
        if b"=" in line:
            key, value = line.split(b"=", 1)
            data = data[line_end + 1 :]
        else:
            key = line
            (size,) = struct.unpack("<Q", data[line_end + 1 : line_end + 9])
            value = data[line_end + 9 : line_end + 9 + size]
            assert data[line_end + 9 + size : line_end + 10 + size] == b"\n"
            data = data[line_end + 10 + size :]
        fields[key.decode()] = value.decode()
    return fields


def _record(level: int, message: str, **extra: str) -> logging.LogRecord:
    record = logging.LogRecord("massgate.drivers", level, __file__, 42, message, (), None)
    for key, value in extra.items():
        setattr(record, key, value)
    return record


def test_native_fields_priority_and_device(tmp_path: Path):
    path = tmp_path / "journal.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as journald:
        journald.bind(str(path))
        journald.settimeout(5)
        handler = JournalHandler(str(path))
        handler.emit(_record(logging.ERROR, "ft101 (tcp 127.0.0.1:502): no reply", device="ft101"))
        handler.emit(_record(logging.INFO, "line one\nline two", node="tank_t100"))
        handler.emit(_record(logging.WARNING, "plain"))
        first, second, third = (parse_native(journald.recv(65536)) for _ in range(3))
        handler.close()
    assert first["PRIORITY"] == "3"
    assert first["MESSAGE"] == "ft101 (tcp 127.0.0.1:502): no reply"
    assert first["MASSGATE_DEVICE"] == "ft101"
    assert first["SYSLOG_IDENTIFIER"] == "massgate"
    assert first["CODE_LINE"] == "42"
    assert second["PRIORITY"] == "6"
    assert second["MESSAGE"] == "line one\nline two"
    assert second["MASSGATE_NODE"] == "tank_t100"
    assert third["PRIORITY"] == "4"
    assert "MASSGATE_DEVICE" not in third


def test_without_journald_lines_carry_a_priority_prefix(tmp_path: Path):
    out = io.StringIO()
    handler = JournalHandler(str(tmp_path / "no-journald"), stream=out)
    handler.emit(_record(logging.ERROR, "first\nsecond"))
    handler.close()
    # Every line keeps its priority, so a traceback is not demoted to the unit's default.
    assert out.getvalue().splitlines() == ["<3>massgate.drivers: first", "<3>second"]
    out = io.StringIO()
    PrefixHandler(out).emit(_record(logging.DEBUG, "detail"))
    assert out.getvalue() == "<7>massgate.drivers: detail\n"


def test_under_journal_only_when_stderr_is_the_journal_stream(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    with (tmp_path / "stream").open("w") as stream, (tmp_path / "other").open("w") as other:
        st = os.fstat(stream.fileno())
        monkeypatch.setenv("JOURNAL_STREAM", f"{st.st_dev}:{st.st_ino}")
        assert under_journal(stream)
        assert not under_journal(other)  # stderr redirected elsewhere by hand
        monkeypatch.delenv("JOURNAL_STREAM")
        assert not under_journal(stream)


def test_library_tracebacks_and_routine_warnings_stay_out_of_the_journal(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
):
    """asyncua logs from child loggers (asyncua.client.ua_session...): the filter sits on the
    handler, where a logger's own filters would miss them. An OPC UA server restart wrote 25
    lines with a traceback; the driver's one line per event remains."""
    import logging

    from massgate.agent.runtime import journal

    monkeypatch.delenv("JOURNAL_STREAM", raising=False)
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        journal.setup(False)
        session = logging.getLogger("asyncua.client.ua_session.UaSession")
        try:
            raise ConnectionError("Connection is closed")
        except ConnectionError:
            session.exception("Publish iteration crashed; retrying in 1s")
        logging.getLogger("asyncua.client.client").warning(
            "Requested session timeout to be %dms, got %dms instead", 3600000, 600000
        )
        logging.getLogger("massgate.drivers").error("ua: session lost")
        err = capsys.readouterr().err
    finally:
        for handler in root.handlers[:]:
            root.removeHandler(handler)
        for handler in saved[0]:
            root.addHandler(handler)
        root.setLevel(saved[1])
    assert "Publish iteration crashed" in err
    assert "Traceback" not in err
    assert "Requested session timeout" not in err
    assert "ua: session lost" in err
