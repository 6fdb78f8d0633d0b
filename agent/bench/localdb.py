"""A throw-away PostgreSQL server on a free loopback port, for `massgate ingest`'s tests and
benchmark: initdb on a temporary directory, postgres listening on 127.0.0.1 only, trust for
loopback, stopped and removed after.

PostgreSQL refuses to run as root; as root, both programs run as the `postgres` user (which
Debian's package makes) on a directory that user owns.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

from .localbroker import LOOPBACK, free_port

START_WITHIN = 30.0  # s for a new cluster to accept connections
SUPERUSER = "massgate"


class DatabaseUnavailable(RuntimeError):
    """PostgreSQL is missing, or the server did not start; the message says which."""


def bindir() -> Path:
    """Where initdb and postgres are: Debian's newest version, else pg_config's, else PATH."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=_version)
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    if initdb is not None:
        return Path(initdb).parent
    raise DatabaseUnavailable(
        "PostgreSQL's server is not installed; on Debian: sudo apt-get install postgresql"
    )


def _version(path: str) -> tuple[int, ...]:
    version = Path(path).parent.parent.name
    return tuple(int(p) for p in version.split(".") if p.isdigit())


class LocalPostgres:
    """`with LocalPostgres() as db:` a server at db.url (database `massgate`, superuser
    `massgate`, no password over loopback)."""

    def __init__(self, directory: Path | None = None) -> None:
        self._parent = directory
        self.workdir: Path | None = None
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None
        self._user: pwd.struct_passwd | None = None

    def url(self, database: str = "massgate") -> str:
        return f"postgresql://{SUPERUSER}@{LOOPBACK}:{self.port}/{database}"

    @property
    def _uid(self) -> int | None:
        return self._user.pw_uid if self._user is not None else None

    @property
    def _gid(self) -> int | None:
        return self._user.pw_gid if self._user is not None else None

    @property
    def _groups(self) -> list[int] | None:
        return [] if self._user is not None else None

    def start(self) -> None:
        bin_ = bindir()
        if os.geteuid() == 0:
            try:
                self._user = pwd.getpwnam("postgres")
            except KeyError:
                raise DatabaseUnavailable(
                    "running as root, and there is no 'postgres' user to run PostgreSQL as"
                ) from None
        # Not under pytest's tmp_path: that is private to root, and postgres must reach it.
        self.workdir = Path(tempfile.mkdtemp(prefix="massgate-pg-", dir=self._parent))
        if self._user is not None:
            os.chown(self.workdir, self._user.pw_uid, self._user.pw_gid)
        data = self.workdir / "data"
        log = self.workdir / "postgres.log"
        env = {**os.environ, "LC_ALL": "C", "LANG": "C"}
        done = subprocess.run(
            [
                str(bin_ / "initdb"),
                "-D",
                str(data),
                "-U",
                SUPERUSER,
                "--auth=trust",
                "--encoding=UTF8",
                "--no-locale",
                "--no-sync",
            ],
            cwd=self.workdir,
            env=env,
            capture_output=True,
            text=True,
            check=False,
            user=self._uid,
            group=self._gid,
            extra_groups=self._groups,
        )
        if done.returncode != 0:
            raise DatabaseUnavailable(f"initdb failed: {done.stderr.strip() or done.stdout}")
        self.port = free_port()
        with log.open("wb") as out:
            self.process = subprocess.Popen(
                [
                    str(bin_ / "postgres"),
                    "-D",
                    str(data),
                    "-p",
                    str(self.port),
                    "-k",
                    str(self.workdir),
                    "-c",
                    f"listen_addresses={LOOPBACK}",
                ],
                cwd=self.workdir,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                user=self._uid,
                group=self._gid,
                extra_groups=self._groups,
            )
        self._wait_ready(log)

    def _wait_ready(self, log: Path) -> None:
        import psycopg  # noqa: PLC0415  # the ingest extra, only where a database is started

        deadline = time.monotonic() + START_WITHIN
        while True:
            assert self.process is not None
            if self.process.poll() is not None:
                text = log.read_text(errors="replace").strip()
                self.process = None
                raise DatabaseUnavailable(f"postgres exited: {text}")
            try:
                with psycopg.connect(self.url("postgres"), connect_timeout=2, autocommit=True) as c:
                    c.execute(f"CREATE DATABASE {SUPERUSER}")
                return
            except psycopg.OperationalError as exc:
                if time.monotonic() > deadline:
                    self.stop()
                    raise DatabaseUnavailable(
                        f"postgres did not accept connections within {START_WITHIN:g} s: {exc}"
                    ) from None
                time.sleep(0.1)

    def create_database(self, name: str) -> str:
        """A new empty database on this server; returns its URL."""
        import psycopg  # noqa: PLC0415

        with psycopg.connect(self.url("postgres"), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            # SIGINT: "fast" shutdown (SIGTERM would wait for every client to leave).
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        self.process = None
        if self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)
            self.workdir = None

    def __enter__(self) -> LocalPostgres:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
