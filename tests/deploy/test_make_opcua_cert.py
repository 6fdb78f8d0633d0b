"""deploy/make-opcua-cert.sh makes a certificate an OPC UA server accepts from massgate."""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path

from cryptography import x509

from massgate.agent.core.samples import Batch
from massgate.drivers.opcua.client import OpcUaPoller
from tests.conftest import run_async
from tests.drivers.opcua.test_opcua import _device, _good, _secure_server, _security, _wait

SCRIPT = Path(__file__).resolve().parents[2] / "deploy" / "make-opcua-cert.sh"


def test_the_certificate_carries_its_uri_and_opens_a_secure_session(
    tmp_path: Path, ua_certificates: dict[str, Path]
):
    made = subprocess.run(
        [
            "bash",
            str(SCRIPT),
            "--dir",
            str(tmp_path / "pki"),
            "--gateway",
            "gw-1",
            "--host",
            "gw-host",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert made.returncode == 0, made.stderr
    cert_path, key_path = (
        tmp_path / "pki" / "opcua-client.der",
        tmp_path / "pki" / "opcua-client.pem",
    )
    cert = x509.load_der_x509_certificate(cert_path.read_bytes())
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.UniformResourceIdentifier) == [
        "urn:gw-host:massgate:gw-1"
    ]
    again = subprocess.run(
        ["bash", str(SCRIPT), "--dir", str(tmp_path / "pki"), "--gateway", "gw-1"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert again.returncode == 0
    assert "kept" in again.stdout
    assert x509.load_der_x509_certificate(cert_path.read_bytes()) == cert

    async def main() -> None:
        server = _secure_server(ua_certificates)
        await server.start()
        batches: list[Batch] = []
        security = _security(cert_path, key_path)
        poller = OpcUaPoller(_device(tmp_path, server, security=security), emit=batches.append)
        stop = asyncio.Event()
        task = asyncio.create_task(poller.run(stop))
        try:
            assert await _wait(lambda: len(_good(batches, "ua.mass_flow")) >= 3, 20), batches[-1:]
        finally:
            stop.set()
            await task
            await server.stop()

    run_async(main())
