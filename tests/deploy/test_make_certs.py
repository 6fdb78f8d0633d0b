"""deploy/make-certs.sh makes a PKI that Mosquitto with deploy/mosquitto-tls.conf's TLS
settings (a client certificate required, its CN as the user name) accepts from a gateway
with its own certificate, and refuses from one without; running it again adds a gateway and
keeps the CA and the certificates already made."""

from __future__ import annotations

import dataclasses
import hashlib
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from massgate.agent.bench.pki import Pki
from massgate.agent.core.records import Record
from massgate.agent.publish.publisher import Publisher
from massgate.agent.store.outbox import Outbox
from tests.conftest import Broker, mqtt_config, publish_until

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "deploy" / "make-certs.sh"
RECORDS = 50


def _make(directory: Path, *gateways: str) -> subprocess.CompletedProcess[str]:
    args = ["--dir", str(directory), "--broker", "localhost", "--broker-ip", "127.0.0.1"]
    for gateway in gateways:
        args += ["--gateway", gateway]
    return subprocess.run(
        ["bash", str(SCRIPT), *args], capture_output=True, text=True, timeout=60, check=False
    )


def _tls_settings() -> tuple[str, ...]:
    """The client-certificate lines of the example broker configuration."""
    lines = (REPO / "deploy" / "mosquitto-tls.conf").read_text().splitlines()
    wanted = ("require_certificate", "use_identity_as_username")
    return tuple(line for line in lines if line.startswith(wanted))


@pytest.fixture
def site_pki(tmp_path: Path) -> Path:
    made = _make(tmp_path / "pki", "gw-1")
    assert made.returncode == 0, made.stderr
    return tmp_path / "pki"


@pytest.fixture
def mtls_broker(site_pki: Path, pki: Pki, tmp_path: Path) -> Iterator[Broker]:
    settings = _tls_settings()
    assert settings == ("require_certificate true", "use_identity_as_username true")
    b = Broker(
        dataclasses.replace(pki, ca=site_pki / "ca.pem"),
        tmp_path,
        site_pki / "broker.pem",
        site_pki / "broker.key",
        listener_extra=settings,
    )
    b.start()
    yield b
    b.stop()


def _outbox() -> Outbox:
    box = Outbox(":memory:", max_bytes=1 << 24, site="s", gateway="gw-1")
    box.put([Record("telemetry", {"points": {}}, 1.8e9 + i) for i in range(RECORDS)])
    return box


def test_a_gateway_with_its_certificate_publishes(mtls_broker: Broker, site_pki: Path):
    config = dataclasses.replace(
        mqtt_config(mtls_broker.port, ca=site_pki / "ca.pem"),
        client_cert=site_pki / "gateways" / "gw-1.pem",
        client_key=site_pki / "gateways" / "gw-1.key",
    )
    box = _outbox()
    publisher = Publisher(box, config, "s", "gw-1")
    publish_until(publisher, lambda: box.depth() == 0)
    assert publisher.status.acked == RECORDS
    assert box.depth() == 0


def test_a_gateway_without_a_certificate_is_refused(mtls_broker: Broker, site_pki: Path):
    box = _outbox()
    publisher = Publisher(box, mqtt_config(mtls_broker.port, ca=site_pki / "ca.pem"), "s", "gw-1")
    publish_until(publisher, lambda: publisher.status.last_error is not None, limit=10)
    assert publisher.status.acked == 0
    assert publisher.status.connects == 0
    assert "client_cert" in (publisher.status.last_error or "")
    assert box.depth() == RECORDS  # nothing lost: it waits in the outbox


def test_running_again_adds_a_gateway_and_keeps_the_rest(site_pki: Path):
    def digest(name: str) -> str:
        return hashlib.sha256((site_pki / name).read_bytes()).hexdigest()

    kept = {name: digest(name) for name in ("ca.pem", "ca.key", "broker.pem", "gateways/gw-1.pem")}
    again = _make(site_pki, "gw-1", "gw-2")
    assert again.returncode == 0, again.stderr
    assert {name: digest(name) for name in kept} == kept
    subject = subprocess.run(
        ["openssl", "x509", "-noout", "-subject", "-in", str(site_pki / "gateways" / "gw-2.pem")],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert "CN = gw-2" in subject.stdout
    verified = subprocess.run(
        ["openssl", "verify", "-CAfile", str(site_pki / "ca.pem"), "-purpose", "sslclient",
         str(site_pki / "gateways" / "gw-2.pem")],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert (site_pki / "ca.key").stat().st_mode & 0o077 == 0


def test_a_bad_gateway_id_is_refused(tmp_path: Path):
    bad = _make(tmp_path / "pki", "gw 1/../x")
    assert bad.returncode == 2
    assert "letters, digits" in bad.stderr
