"""A Mosquitto with TLS on a free loopback port, with certificates made for it by openssl.

For the benchmarks (`massgate bench outbox`, `massgate bench e2e`): they measure against a
real broker over real TLS, as the gateway talks to one in the field, and clean up after.
"""

from __future__ import annotations

import getpass
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

LOOPBACK = "127.0.0.1"


class BrokerUnavailable(RuntimeError):
    """Mosquitto or openssl is missing, or the broker did not start; the message says which."""


def _tool(name: str, extra: tuple[str, ...] = ()) -> str:
    found = shutil.which(name) or next((p for p in extra if Path(p).exists()), None)
    if found is None:
        raise BrokerUnavailable(
            f"{name} is not installed; on Debian or Raspberry Pi OS: sudo apt-get install {name}"
        )
    return found


def make_certificates(directory: Path) -> tuple[Path, Path, Path]:
    """A throw-away CA and a broker certificate for 127.0.0.1; returns (ca, cert, key)."""
    openssl = _tool("openssl")
    ca, ca_key = directory / "ca.pem", directory / "ca.key"
    cert, key, csr = directory / "broker.pem", directory / "broker.key", directory / "broker.csr"
    ext = directory / "broker.ext"
    ext.write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    days = ["-days", "2"]
    sign = ["-out", cert, "-CAcreateserial", "-extfile", ext]
    steps = [
        [openssl, "req", "-x509", *ec, *days, "-keyout", ca_key, "-out", ca, "-subj", "/CN=CA"],
        [openssl, "req", *ec, "-keyout", key, "-out", csr, "-subj", "/CN=localhost"],
        [openssl, "x509", "-req", "-in", csr, "-CA", ca, "-CAkey", ca_key, *sign, *days],
    ]
    for step in steps:
        done = subprocess.run([str(a) for a in step], capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise BrokerUnavailable(f"openssl failed: {done.stderr.strip()}")
    return ca, cert, key


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


@dataclass
class LocalBroker:
    """`with LocalBroker() as broker:` a TLS Mosquitto at mqtts://127.0.0.1:<port>."""

    port: int = 0
    ca: Path | None = None
    _dir: tempfile.TemporaryDirectory[str] | None = None
    _process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"mqtts://{LOOPBACK}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    def __enter__(self) -> LocalBroker:
        binary = _tool("mosquitto", ("/usr/sbin/mosquitto",))
        self._dir = tempfile.TemporaryDirectory(prefix="massgate-broker-")
        work = Path(self._dir.name)
        self.ca, cert, key = make_certificates(work)
        self.port = self.port or free_port()
        conf = work / "mosquitto.conf"
        conf.write_text(
            "\n".join(
                [
                    "allow_anonymous true",
                    # Started as root, Mosquitto would become user 'mosquitto', who cannot
                    # read this private directory.
                    f"user {getpass.getuser()}",
                    "persistence false",
                    "log_dest stderr",
                    "log_type error",
                    f"listener {self.port} {LOOPBACK}",
                    f"certfile {cert}",
                    f"keyfile {key}",
                    "tls_version tlsv1.2",
                    "",
                ]
            )
        )
        log = (work / "mosquitto.log").open("wb")
        self._process = subprocess.Popen(
            [binary, "-c", str(conf)], stdout=log, stderr=subprocess.STDOUT
        )
        log.close()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                text = (work / "mosquitto.log").read_text(errors="replace")
                self.__exit__(None, None, None)
                raise BrokerUnavailable(f"mosquitto exited: {text.strip()}")
            try:
                with socket.create_connection((LOOPBACK, self.port), timeout=0.2):
                    return self
            except OSError:
                time.sleep(0.05)
        self.__exit__(None, None, None)
        raise BrokerUnavailable("mosquitto did not listen within 10 s")

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._process is not None:
            self._process.terminate()
            try:
                self._process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait(timeout=5)
            self._process = None
        if self._dir is not None:
            self._dir.cleanup()
            self._dir = None
