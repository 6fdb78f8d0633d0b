"""A virtual serial cable: two pseudo-terminals joined by socat, like two ends of RS-485.

The agent opens one end as its serial port and the simulated slaves the other, so RTU
framing, timeouts and CRC checks run over a real tty, not over a mock.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import termios
import time
from pathlib import Path
from types import TracebackType


class PtyPairError(RuntimeError):
    pass


class PtyPair:
    """`with PtyPair() as (master_end, slave_end): ...` starts socat and always stops it."""

    def __init__(self, directory: Path | None = None, *, start_timeout: float = 5.0) -> None:
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self.directory = directory
        self.start_timeout = start_timeout
        self.process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> tuple[str, str]:
        socat = shutil.which("socat")
        if socat is None:
            raise PtyPairError("socat is not installed (Debian: apt-get install socat)")
        if self.directory is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="massgate-pty-")
            self.directory = Path(self._tmp.name)
        a, b = self.directory / "master", self.directory / "slave"
        self.process = subprocess.Popen(
            [socat, f"pty,raw,echo=0,link={a}", f"pty,raw,echo=0,link={b}"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + self.start_timeout
        # socat makes each link before it sets its pty raw without echo: a client that opened
        # one at once could read its own request back. Ready is both links there and raw.
        while not (a.exists() and b.exists() and _raw(a) and _raw(b)):
            if self.process.poll() is not None:
                err = self.process.stderr.read().decode() if self.process.stderr else ""
                self._cleanup()
                raise PtyPairError(f"socat exited: {err.strip()}")
            if time.monotonic() > deadline:
                self._cleanup()
                raise PtyPairError("socat did not create its pseudo-terminals in time")
            time.sleep(0.01)
        return str(a), str(b)

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._cleanup()

    def _cleanup(self) -> None:
        if self.process is not None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
            if self.process.stderr is not None:
                self.process.stderr.close()
            self.process = None
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None


def _raw(end: Path) -> bool:
    """The pty behind `end` neither echoes nor collects lines (socat has applied raw)."""
    try:
        fd = os.open(end, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
    except OSError:
        return False
    try:
        return not termios.tcgetattr(fd)[3] & (termios.ECHO | termios.ICANON)
    finally:
        os.close(fd)
