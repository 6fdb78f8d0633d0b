"""One agent per state directory: an flock held for the life of the process.

Two agents on one outbox and one set of totals would publish every record twice and count
every kilogram twice; nothing else the gateway can do wrong is as bad. So the exclusion is a
lock the kernel keeps (`fcntl.flock` on `massgate.lock` in the state directory), taken
before anything else is opened and released only when the process ends, however it ends.
It does not depend on the first agent answering anything in time: a stopped, swapped-out or
busy agent still holds it. The status socket is only for status.

flock locks belong to an open file description, so even a second `run()` in the same
process is refused; a reload keeps the locks it already holds.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..config import Config
LOCK_NAME = "massgate.lock"


class AlreadyRunning(RuntimeError):
    """Another agent holds the lock: two agents must not share one outbox."""


def locks_of(config: Config) -> list[Path]:
    """The lock files of a configuration."""
    return lock_paths(
        state_dir=config.gateway.state_dir,
        outbox=config.outbox.path,
        socket=config.health.socket,
    )


def lock_paths(*, state_dir: Path, outbox: Path, socket: Path) -> list[Path]:
    """The lock files of a configuration: the state directory's, and one beside an outbox
    or a status socket kept elsewhere, so that no two agents share either."""
    paths = [state_dir / LOCK_NAME]
    for path in (outbox, socket):
        if path.parent.resolve() != state_dir.resolve():
            paths.append(path.with_name(path.name + ".lock"))
    return paths


class StateLocks:
    """The locks this process holds, by path."""

    def __init__(self) -> None:
        self._held: dict[Path, int] = {}

    def hold(self, paths: list[Path]) -> None:
        """Take every lock not yet held; AlreadyRunning (taking none) if one is taken."""
        taken: list[Path] = []
        try:
            for path in paths:
                key = path.resolve() if path.parent.exists() else path
                if key in self._held:
                    continue
                self._held[key] = _acquire(path)
                taken.append(key)
        except BaseException:
            for key in taken:
                os.close(self._held.pop(key))
            raise

    def release(self) -> None:
        for fd in self._held.values():
            with contextlib.suppress(OSError):
                os.close(fd)
        self._held.clear()


def _acquire(path: Path) -> int:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o640)
    except OSError as exc:
        raise OSError(exc.errno, f"cannot make the lock file {path}: {exc.strerror}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 64, 0).decode("ascii", errors="replace").strip()
        os.close(fd)
        who = f"pid {holder}" if holder.isdigit() else "another process"
        raise AlreadyRunning(
            f"another massgate ({who}) holds {path}: two agents must not share one state "
            "directory (systemctl status massgate)"
        ) from None
    except BaseException:
        os.close(fd)
        raise
    # The pid is for the message above and for people; the lock is the flock, not the text.
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd
