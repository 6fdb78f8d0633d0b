"""sd_notify over a real notify socket: what systemd would receive."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from massgate.agent.runtime.sdnotify import Notifier, watchdog_interval


def _receive(sock: socket.socket) -> dict[str, str]:
    data = sock.recv(4096).decode()
    return dict(line.split("=", 1) for line in data.splitlines())


def test_ready_status_watchdog_and_stopping_arrive(tmp_path: Path):
    path = tmp_path / "notify"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as systemd:
        systemd.bind(str(path))
        systemd.settimeout(5)
        notifier = Notifier(str(path))
        assert notifier.enabled
        notifier.ready("2/2 devices up")
        ready = _receive(systemd)
        assert ready["READY"] == "1"
        assert ready["STATUS"] == "2/2 devices up"
        assert int(ready["MAINPID"]) > 0
        notifier.status("2/2 devices up")  # unchanged: not sent again
        notifier.status("1/2 devices up")
        notifier.pet()
        notifier.reloading()
        notifier.stopping()
        got = [_receive(systemd) for _ in range(4)]
        notifier.close()
    assert got[0] == {"STATUS": "1/2 devices up"}
    assert got[1] == {"WATCHDOG": "1"}
    assert got[2]["RELOADING"] == "1"
    assert got[3]["STOPPING"] == "1"


def test_abstract_socket_address():
    name = f"massgate-test-{id(object())}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as systemd:
        systemd.bind("\0" + name)
        systemd.settimeout(5)
        notifier = Notifier("@" + name)
        notifier.pet()
        assert _receive(systemd) == {"WATCHDOG": "1"}
        notifier.close()


def test_outside_systemd_nothing_is_sent(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    notifier = Notifier()
    assert not notifier.enabled
    assert notifier.send(READY=1) is False


def test_a_vanished_socket_is_logged_once_and_never_raises(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
):
    notifier = Notifier(str(tmp_path / "gone"))
    for _ in range(3):
        assert notifier.send(WATCHDOG=1) is False
    notifier.close()
    assert len([r for r in caplog.records if "notify socket" in r.getMessage()]) == 1


def test_watchdog_interval_follows_the_environment(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("WATCHDOG_USEC", "30000000")
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    assert watchdog_interval() == 30.0
    monkeypatch.setenv("WATCHDOG_PID", "1")  # meant for another process
    assert watchdog_interval() is None
    monkeypatch.delenv("WATCHDOG_USEC")
    assert watchdog_interval() is None
