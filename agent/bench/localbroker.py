"""A Mosquitto with TLS on a free loopback port, and the throw-away PKI for it.

The one Mosquitto launcher of the benchmarks (`massgate bench outbox`, `massgate bench e2e`)
and the tests: they measure and test against a real broker over real TLS, as the gateway
talks to one in the field, and clean up after.
"""

from __future__ import annotations

import getpass
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

from .pki import Pki, make_pki

LOOPBACK = "127.0.0.1"
START_WITHIN = 10.0  # s for Mosquitto to listen


class BrokerUnavailable(RuntimeError):
    """Mosquitto is missing, or the broker did not start; the message says which."""


def mosquitto_binary() -> str:
    found = shutil.which("mosquitto") or (
        "/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None
    )
    if found is None:
        raise BrokerUnavailable(
            "mosquitto is not installed; on Debian or Raspberry Pi OS: "
            "sudo apt-get install mosquitto"
        )
    return found


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


@dataclass
class Mosquitto:
    """A Mosquitto process with one TLS listener on a loopback port (a free one unless set).

    `persistent` keeps a durable subscriber's session and its queued messages across a
    restart; `extra` are broker options, `listener_extra` options of the listener.
    """

    pki: Pki
    workdir: Path
    cert: Path
    key: Path
    port: int = 0
    persistent: bool = False
    extra: tuple[str, ...] = ()
    listener_extra: tuple[str, ...] = ()
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    log_path: Path | None = None

    @property
    def url(self) -> str:
        return f"mqtts://{LOOPBACK}:{self.port}"

    @property
    def ca(self) -> Path:
        return self.pki.ca

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    def _conf(self) -> str:
        authenticated = any(line.startswith("password_file") for line in self.extra)
        storage = (
            ("persistence true", f"persistence_location {self.workdir}/")
            if self.persistent
            else ("persistence false",)
        )
        return "\n".join(
            [
                "per_listener_settings false",
                f"allow_anonymous {'false' if authenticated else 'true'}",
                *storage,
                "max_queued_messages 0",
                *self.extra,
                # Started as root, Mosquitto would become user 'mosquitto', who cannot read
                # this private directory.
                f"user {getpass.getuser()}",
                "log_dest stderr",
                "log_type error",
                "log_type warning",
                f"listener {self.port} {LOOPBACK}",
                f"cafile {self.pki.ca}",
                f"certfile {self.cert}",
                f"keyfile {self.key}",
                "tls_version tlsv1.2",
                *self.listener_extra,
                "",
            ]
        )

    def start(self) -> None:
        """Start, and return once it listens; BrokerUnavailable when it does not."""
        if not self.port:
            self.port = free_port()
        conf = self.workdir / f"mosquitto-{self.port}.conf"
        conf.write_text(self._conf())
        self.log_path = self.workdir / f"mosquitto-{self.port}.log"
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                [mosquitto_binary(), "-c", str(conf)], stdout=log, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + START_WITHIN
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                text = self.log_path.read_text(errors="replace").strip()
                self.process = None
                raise BrokerUnavailable(f"mosquitto exited: {text}")
            try:
                with socket.create_connection((LOOPBACK, self.port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise BrokerUnavailable(f"mosquitto did not listen within {START_WITHIN:g} s")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)
        self.process = None

    def restart(self) -> None:
        """Stop and start again on the same port."""
        self.stop()
        self.start()


class LocalBroker:
    """`with LocalBroker() as broker:` a TLS Mosquitto at mqtts://127.0.0.1:<port> with a
    PKI of its own, both gone after the block."""

    def __init__(self) -> None:
        self._dir: tempfile.TemporaryDirectory[str] | None = None
        self._broker: Mosquitto | None = None

    @property
    def broker(self) -> Mosquitto:
        assert self._broker is not None, "use LocalBroker in a with block"
        return self._broker

    @property
    def url(self) -> str:
        return self.broker.url

    @property
    def port(self) -> int:
        return self.broker.port

    @property
    def ca(self) -> Path:
        return self.broker.ca

    @property
    def pid(self) -> int | None:
        return self.broker.pid

    def __enter__(self) -> LocalBroker:
        self._dir = tempfile.TemporaryDirectory(prefix="massgate-broker-")
        work = Path(self._dir.name)
        pki = make_pki(work / "pki")
        self._broker = Mosquitto(pki, work, pki.server_cert, pki.server_key)
        try:
            self._broker.start()
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._broker is not None:
            self._broker.stop()
            self._broker = None
        if self._dir is not None:
            self._dir.cleanup()
            self._dir = None
