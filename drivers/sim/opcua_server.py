"""The plant's meters as an OPC UA server (asyncua), for the OPC UA driver's tests and demo.

Every profile point of every meter is a Double variable `ns=<idx>;s=<meter>.<point>` in the
profile's unit, refreshed every `period` from the plant (faults included). A meter under a
`dropout` fault keeps its last value with status BadNoCommunication, as a real aggregating
server does when it loses a field device.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from pathlib import Path
from typing import Any

from asyncua import ua
from asyncua.common.node import Node
from asyncua.common.utils import ServiceError
from asyncua.crypto.permission_rules import User, UserRole
from asyncua.server.server import Server
from asyncua.server.user_managers import UserManager
from asyncua.ua.status_codes import StatusCodes

from massgate.agent.core import units

from .. import profiles
from .plant import Plant
from .server import Meter

log = logging.getLogger(__name__)

NAMESPACE = "urn:massgate:sim"
POLICIES = {
    "None": ua.SecurityPolicyType.NoSecurity,
    "Basic256Sha256/Sign": ua.SecurityPolicyType.Basic256Sha256_Sign,
    "Basic256Sha256/SignAndEncrypt": ua.SecurityPolicyType.Basic256Sha256_SignAndEncrypt,
    "Aes128_Sha256_RsaOaep/SignAndEncrypt": (
        ua.SecurityPolicyType.Aes128Sha256RsaOaep_SignAndEncrypt
    ),
    "Aes256_Sha256_RsaPss/SignAndEncrypt": ua.SecurityPolicyType.Aes256Sha256RsaPss_SignAndEncrypt,
}


class _Users(UserManager):
    """Username/password sign-in, as a plant's OPC UA server is usually set up."""

    def __init__(self, users: dict[str, str]) -> None:
        self.users = users

    def get_user(
        self,
        iserver: Any,
        username: str | None = None,
        password: str | None = None,
        certificate: Any = None,
    ) -> User | None:
        if username is not None and self.users.get(username) == password:
            return User(role=UserRole.User, name=username)
        return None  # asyncua answers BadUserAccessDenied


async def _untrusted(certificate: Any, description: Any) -> None:
    raise ServiceError(StatusCodes.BadCertificateUntrusted)


class UaPlantServer:
    def __init__(
        self,
        plant: Plant,
        meters: list[Meter],
        *,
        host: str = "127.0.0.1",
        port: int = 4840,
        policies: tuple[str, ...] = ("None",),
        certificate: Path | None = None,
        private_key: Path | None = None,
        period: float = 0.1,
        users: dict[str, str] | None = None,
        reject_certificates: bool = False,
    ) -> None:
        self.plant = plant
        self.meters = meters
        self.url = f"opc.tcp://{host}:{port}/massgate/"
        self.policies = policies
        self.certificate = certificate
        self.private_key = private_key
        self.period = period
        self.users = users
        self.reject_certificates = reject_certificates  # as a server whose trust list is empty
        self.namespace_index = 0
        self.server: Server | None = None
        self._variables: dict[str, list[tuple[str, units.Unit, Node]]] = {}
        self._task: asyncio.Task[None] | None = None

    def node_id(self, meter: str, point: str) -> str:
        return f"ns={self.namespace_index};s={meter}.{point}"

    async def start(self) -> None:
        server = Server(user_manager=_Users(self.users)) if self.users else Server()
        await server.init()
        if self.users:
            server.set_security_IDs(["Username"])  # anonymous sessions are refused
        server.set_endpoint(self.url)
        server.set_server_name("massgate simulated plant")
        server.set_security_policy([POLICIES[p] for p in self.policies])
        if self.certificate is not None and self.private_key is not None:
            await server.load_certificate(str(self.certificate))
            await server.load_private_key(str(self.private_key))
        if self.reject_certificates:
            server.set_certificate_validator(_untrusted)
        self.namespace_index = await server.register_namespace(NAMESPACE)
        for meter in self.meters:
            folder = await server.nodes.objects.add_object(self.namespace_index, meter.name)
            variables = []
            for point in profiles.load(meter.profile).points:
                node_id = ua.NodeId(
                    ua.String(f"{meter.name}.{point.name}"), ua.Int16(self.namespace_index)
                )
                variable = await folder.add_variable(
                    node_id, point.name, ua.Variant(0.0, ua.VariantType.Double)
                )
                variables.append((point.name, units.lookup(point.unit), variable))
            self._variables[meter.name] = variables
        await server.start()
        self.server = server
        await self._refresh()
        self._task = asyncio.create_task(self._run(), name="ua-plant-refresh")

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.period)
            await self._refresh()

    async def _refresh(self) -> None:
        faults = self.plant.faults
        t = self.plant.now()
        for meter in self.meters:
            variables = self._variables[meter.name]
            if faults.find("dropout", meter.name, t) is not None:
                for _, _, variable in variables:
                    old = await variable.read_data_value(raise_on_bad_status=False)
                    await variable.write_value(
                        ua.DataValue(
                            old.Value,
                            StatusCode=ua.StatusCode(ua.UInt32(StatusCodes.BadNoCommunication)),
                        )
                    )
                continue
            values = faults.apply(meter.name, t, meter.read())
            for name, unit, variable in variables:
                raw = (values[name] - unit.offset) / unit.factor
                await variable.write_value(ua.Variant(raw, ua.VariantType.Double))

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self.server is not None:
            # asyncua 2.1 keeps a client's session alive across a lost transport so that it
            # can be resumed, and Server.stop() leaves those sessions' tasks running. A
            # stopped simulator must be gone entirely: close them (private, no public API).
            sessions = getattr(self.server.iserver, "_external_sessions", {})
            for session in list(sessions.values()):
                await session.close_session(True)
            await self.server.stop()
            self.server = None
