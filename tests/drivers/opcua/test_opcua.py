"""OPC UA against a real asyncua server serving the simulated plant."""

from __future__ import annotations

import asyncio
import itertools
import logging
import math
from pathlib import Path
from typing import Any

import pytest

from massgate.agent.core.samples import Batch, Quality
from massgate.drivers.base import FatalError
from massgate.drivers.opcua.client import OpcUaPoller
from massgate.drivers.opcua.model import OpcUaDevice
from massgate.drivers.sim.faults import Fault
from massgate.drivers.sim.opcua_server import UaPlantServer
from massgate.drivers.sim.plant import Plant
from massgate.drivers.sim.server import meters_of
from tests.conftest import free_port, run_async
from tests.drivers.modbus.test_modbus import devices_from


def _device(tmp_path: Path, server: UaPlantServer, **extra: Any) -> OpcUaDevice:
    (device,) = devices_from(
        [
            {
                "name": "ua",
                "protocol": "opcua",
                "url": server.url,
                "publishing_interval": "100ms",
                "sampling_interval": "50ms",
                "reconnect_max": "1s",
                "nodes": [
                    {
                        "name": "mass_flow",
                        "node": server.node_id("ft101", "mass_flow"),
                        "unit": "kg/h",
                    },
                    {
                        "name": "temperature",
                        "node": server.node_id("tt102", "temperature"),
                        "unit": "degC",
                    },
                ],
                **extra,
            }
        ],
        tmp_path,
    )
    assert isinstance(device, OpcUaDevice)
    return device


def _server(plant: Plant, port: int, **kwargs: Any) -> UaPlantServer:
    meters = [m for m in meters_of(plant) if m.name in ("ft101", "tt102")]
    return UaPlantServer(plant, meters, port=port, period=0.05, **kwargs)


def _secure_server(
    certificates: dict[str, Path], policy: str = "Basic256Sha256", **kwargs: Any
) -> UaPlantServer:
    """The plant's server offering only `policy` with SignAndEncrypt."""
    return _server(
        Plant(),
        free_port(),
        policies=(f"{policy}/SignAndEncrypt",),
        certificate=certificates["server_cert"],
        private_key=certificates["server_key"],
        **kwargs,
    )


def _security(certificate: Path, key: Path, policy: str = "Basic256Sha256") -> dict[str, str]:
    """A device's `security:` section."""
    return {
        "policy": policy,
        "mode": "SignAndEncrypt",
        "certificate": str(certificate),
        "private_key": str(key),
    }


async def _wait(predicate: Any, seconds: float) -> bool:
    for _ in range(int(seconds / 0.05)):
        if predicate():
            return True
        await asyncio.sleep(0.05)
    return bool(predicate())


def _good(batches: list[Batch], tag: str) -> list[float]:
    return [b.values[tag] for b in batches if b.quality is Quality.GOOD and tag in b.values]


def test_subscription_data_in_si_and_resumes_after_a_server_restart(tmp_path: Path):
    async def main() -> None:
        plant = Plant()
        port = free_port()
        server = _server(plant, port)
        await server.start()
        batches: list[Batch] = []
        poller = OpcUaPoller(_device(tmp_path, server), emit=batches.append)
        stop = asyncio.Event()
        task = asyncio.create_task(poller.run(stop))
        try:
            assert await _wait(lambda: len(_good(batches, "ua.mass_flow")) >= 5, 10)
            # kg/h on the server, kg/s in the agent; degC there, K here.
            assert _good(batches, "ua.mass_flow")[-1] == pytest.approx(2.0, rel=0.15)
            assert _good(batches, "ua.temperature")[-1] == pytest.approx(303.15, abs=6)

            await server.stop()
            assert await _wait(lambda: batches[-1].quality is Quality.BAD, 10)
            lost_at = len(batches)
            server = _server(plant, port)
            await server.start()
            assert await _wait(lambda: _good(batches[lost_at:], "ua.mass_flow"), 10)
        finally:
            stop.set()
            await task
            await server.stop()
        assert poller.stats.sessions == 2
        bad = [b for b in batches if b.quality is Quality.BAD]
        assert bad
        assert all(math.isnan(v) for b in bad for v in b.values.values())

    run_async(main())


def test_a_steady_value_is_held_between_notifications(tmp_path: Path):
    """Report-by-exception must not look like a gap to the totalizer."""

    async def main() -> None:
        plant = Plant()
        server = _server(plant, free_port())
        await server.start()
        batches: list[Batch] = []
        poller = OpcUaPoller(_device(tmp_path, server), emit=batches.append)
        stop = asyncio.Event()
        task = asyncio.create_task(poller.run(stop))
        try:
            assert await _wait(lambda: len(_good(batches, "ua.mass_flow")) >= 3, 10)
            plant.faults.add(Fault(kind="stuck", target="ft101", start=plant.now()))
            await asyncio.sleep(0.3)
            start = len(batches)
            await asyncio.sleep(1.0)
        finally:
            stop.set()
            await task
            await server.stop()
        held = [b for b in batches[start:] if "ua.mass_flow" in b.values]
        # A stuck meter sends no notification; the held value still comes ~10 times a second.
        assert len(held) >= 7
        assert len({b.values["ua.mass_flow"] for b in held}) == 1

    run_async(main())


def test_dropout_is_stale_and_poll_mode_reads_status_codes(tmp_path: Path):
    async def main() -> None:
        plant = Plant()
        server = _server(plant, free_port())
        await server.start()
        batches: list[Batch] = []
        poller = OpcUaPoller(
            _device(tmp_path, server, mode="poll", poll_interval="100ms"), emit=batches.append
        )
        stop = asyncio.Event()
        task = asyncio.create_task(poller.run(stop))
        try:
            assert await _wait(lambda: len(_good(batches, "ua.mass_flow")) >= 2, 10)
            plant.faults.add(Fault(kind="dropout", target="ft101", start=plant.now()))
            assert await _wait(lambda: batches[-1].quality is Quality.STALE, 5)
            plant.faults.clear()
            assert await _wait(lambda: batches[-1].quality is Quality.GOOD, 5)
        finally:
            stop.set()
            await task
            await server.stop()
        assert poller.stats.reads >= 4
        assert poller.stats.notifications == 0

    run_async(main())


def test_an_unknown_node_is_bad_and_retried_while_the_others_are_read(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
):
    """BadNodeIdUnknown (a PLC download renamed a tag) makes that point BAD with the server's
    reason, said once; the device's other points go on being read."""

    async def main() -> None:
        server = _server(Plant(), free_port())
        await server.start()
        (device,) = devices_from(
            [
                {
                    "name": "ua",
                    "protocol": "opcua",
                    "url": server.url,
                    "publishing_interval": "100ms",
                    "reconnect_max": "300ms",
                    "nodes": [
                        {"name": "x", "node": "ns=2;s=no.such.node", "unit": "kg/h"},
                        {
                            "name": "mass_flow",
                            "node": server.node_id("ft101", "mass_flow"),
                            "unit": "kg/h",
                        },
                    ],
                }
            ],
            tmp_path,
        )
        batches: list[Batch] = []
        poller = OpcUaPoller(device, emit=batches.append)
        stop = asyncio.Event()
        task = asyncio.create_task(poller.run(stop))
        try:

            def refused_again() -> int:
                return sum(1 for b in batches if "ua.x" in b.values)

            assert await _wait(
                lambda: len(_good(batches, "ua.mass_flow")) >= 5 and refused_again() >= 3, 30
            )
        finally:
            stop.set()
            await task
            await server.stop()
        bad = [b for b in batches if "ua.x" in b.values]
        assert all(b.quality is Quality.BAD and math.isnan(b.values["ua.x"]) for b in bad)
        assert "BadNodeIdUnknown" in (bad[0].error or "")
        said = [r for r in caplog.records if "refused to monitor ua.x" in r.getMessage()]
        assert len(said) == 1

    caplog.set_level(logging.INFO)
    run_async(main())


@pytest.mark.parametrize(
    "policy", ["Basic256Sha256", "Aes128_Sha256_RsaOaep", "Aes256_Sha256_RsaPss"]
)
def test_sign_and_encrypt_session(tmp_path: Path, ua_certificates: dict[str, Path], policy: str):
    async def main() -> None:
        server = _secure_server(ua_certificates, policy)
        await server.start()
        secure: list[Batch] = []
        plain: list[Batch] = []
        security = _security(ua_certificates["client_cert"], ua_certificates["client_key"], policy)
        pollers = [
            OpcUaPoller(_device(tmp_path, server, security=security), emit=secure.append),
            OpcUaPoller(_device(tmp_path, server), emit=plain.append),
        ]
        stop = asyncio.Event()
        tasks = [asyncio.create_task(p.run(stop)) for p in pollers]
        try:
            assert await _wait(lambda: len(_good(secure, "ua.mass_flow")) >= 3, 15)
            assert await _wait(lambda: len(plain) >= 1, 10)
        finally:
            stop.set()
            await asyncio.gather(*tasks)
            await server.stop()
        # The server offers no unencrypted endpoint: the client without security never
        # gets a value, and says why.
        assert not _good(plain, "ua.mass_flow")
        assert plain[0].quality is Quality.BAD
        assert plain[0].error

    run_async(main())


def test_username_and_password_sign_in_and_a_refusal_said_plainly(tmp_path: Path):
    password_file = tmp_path / "opcua.password"
    password_file.write_text("s3cret-Pa55\n")  # an editor's trailing newline is not the password
    wrong_file = tmp_path / "wrong.password"
    wrong_file.write_text("guess")

    async def main() -> None:
        plant = Plant()
        server = _server(plant, free_port(), users={"massgate": "s3cret-Pa55"})
        await server.start()
        signed_in: list[Batch] = []
        refused: list[Batch] = []
        anonymous: list[Batch] = []
        pollers = [
            OpcUaPoller(
                _device(tmp_path, server, username="massgate", password_file=str(password_file)),
                emit=signed_in.append,
            ),
            OpcUaPoller(
                _device(tmp_path, server, username="massgate", password_file=str(wrong_file)),
                emit=refused.append,
            ),
            OpcUaPoller(_device(tmp_path, server), emit=anonymous.append),
        ]
        stop = asyncio.Event()
        tasks = [asyncio.create_task(p.run(stop)) for p in pollers]
        try:
            assert await _wait(
                lambda: (
                    len(_good(signed_in, "ua.mass_flow")) >= 3
                    and len(refused) >= 2
                    and len(anonymous) >= 2
                ),
                15,
            )
        finally:
            stop.set()
            await asyncio.gather(*tasks)
            await server.stop()
        good, wrong, anon = pollers
        assert good.stats.sessions == 1
        assert wrong.stats.sessions == 0
        assert anon.stats.sessions == 0
        assert all(b.quality is Quality.BAD for b in refused + anonymous)
        assert wrong.last_error is not None
        assert "refused the sign-in as user 'massgate'" in wrong.last_error
        assert anon.last_error is not None
        assert "refused the sign-in as anonymous" in anon.last_error

    run_async(main())


def test_an_unreadable_password_file_is_a_fatal_error_naming_it(tmp_path: Path):
    async def main() -> None:
        server = _server(Plant(), free_port(), users={"massgate": "x"})
        await server.start()
        missing = tmp_path / "nope.password"
        missing.write_text("x\n")  # `check` opens it; it goes away after the agent started
        device = _device(tmp_path, server, username="massgate", password_file=str(missing))
        missing.unlink()
        poller = OpcUaPoller(device, emit=lambda _: None)
        try:
            with pytest.raises(FatalError, match=r"cannot read password_file .*nope.password"):
                await poller.run(asyncio.Event())
        finally:
            await server.stop()

    run_async(main())


def test_an_absolute_deadband_suppresses_changes_smaller_than_it(tmp_path: Path):
    """The deadband is in the node's unit (kg/h here); the control run without one sees the
    small changes that the deadband run must not."""
    deadband = 10.0  # kg/h; FT-101 reads about 7200 kg/h with a noise σ of about 3.6 kg/h

    async def changes(**extra: Any) -> list[float]:
        plant = Plant()
        server = _server(plant, free_port())
        await server.start()
        batches: list[Batch] = []
        poller = OpcUaPoller(_device(tmp_path, server, **extra), emit=batches.append)
        stop = asyncio.Event()
        task = asyncio.create_task(poller.run(stop))
        try:
            assert await _wait(lambda: len(_good(batches, "ua.mass_flow")) >= 3, 10)
            start = len(batches)
            await _wait(lambda: len(_distinct(batches[start:])) >= 12, 6)
        finally:
            stop.set()
            await task
            await server.stop()
        values = _distinct(batches[start:])
        return [abs(b - a) * 3600.0 for a, b in itertools.pairwise(values)]  # kg/h

    async def main() -> None:
        control = await changes()
        assert any(step < deadband for step in control), "no small change to suppress"
        filtered = await changes(deadband=deadband)
        assert len(filtered) >= 2, "the deadband run saw too few changes to judge"
        assert all(step > deadband * (1 - 1e-6) for step in filtered), filtered

    run_async(main())


def _distinct(batches: list[Batch]) -> list[float]:
    """Successive different values of ua.mass_flow (held repeats collapsed)."""
    values = _good(batches, "ua.mass_flow")
    return [v for i, v in enumerate(values) if i == 0 or v != values[i - 1]]


def test_a_server_that_rejects_our_certificate_is_said_in_one_line(
    tmp_path: Path, ua_certificates: dict[str, Path], caplog: pytest.LogCaptureFixture
):
    """Not an AssertionError with two tracebacks per retry: what happened, what to do."""

    async def main() -> None:
        server = _secure_server(ua_certificates, reject_certificates=True)
        await server.start()
        batches: list[Batch] = []
        security = _security(ua_certificates["client_cert"], ua_certificates["client_key"])
        poller = OpcUaPoller(
            _device(tmp_path, server, security=security, reconnect_max="200ms"),
            emit=batches.append,
        )
        stop = asyncio.Event()
        task = asyncio.create_task(poller.run(stop))
        try:
            assert await _wait(lambda: poller.stats.losses >= 3, 30)
        finally:
            stop.set()
            await task
            await server.stop()
        assert not _good(batches, "ua.mass_flow")
        assert "the server rejected our certificate" in (batches[-1].error or "")
        assert "pki/trusted" in (batches[-1].error or "")

    caplog.set_level(logging.INFO)
    run_async(main())
    mine = [r for r in caplog.records if r.name.startswith("massgate")]
    assert not any(r.exc_info for r in mine), [r.getMessage() for r in mine if r.exc_info]
    said = [r for r in mine if "rejected our certificate" in r.getMessage()]
    assert len(said) == 1, [r.getMessage() for r in mine]
