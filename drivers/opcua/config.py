"""The OPC UA devices of the configuration (`protocol: opcua`), validated into the model."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit

from massgate.agent.core import units, values
from massgate.agent.core.values import MAX_POLL_INTERVAL, Files, host, period
from massgate.agent.core.yamlsource import (
    REQUIRED,
    Invalid,
    Report,
    Section,
    choice,
    integer,
    name,
    number,
    text,
)

from ..base import Device, Where
from .model import MODES, POLICIES, OpcUaDevice, UaPoint, UaSecurity

MAX_UA_TIMEOUT = 300.0


class Parser:
    """Reads each OPC UA device of one configuration file."""

    def __init__(self, root: Section, files: Files) -> None:
        del root  # no section of its own
        self.files = files

    def device(self, s: Section, device_name: str, protocol: str | None) -> OpcUaDevice | None:
        del protocol  # one protocol
        return _device(s, device_name, self.files)

    def cross_check(
        self, devices: Sequence[tuple[int, Device]], where: Where, report: Report
    ) -> None:
        """Nothing to compare: two devices on one server are two sessions."""


def start_problem(devices: Sequence[Device], running: Sequence[Device]) -> str | None:
    """A server that is not there yet is retried like one that went away: nothing to try."""
    del devices, running
    return None


def _ua_url(value: Any) -> str:
    url = text(value)
    parts = urlsplit(url)
    if parts.scheme != "opc.tcp" or not parts.hostname:
        raise Invalid(f"'{url}' is not an OPC UA address; write opc.tcp://host:port[/path]")
    try:
        parts.port  # noqa: B018  # raises on a port that is not 0-65535
    except ValueError:
        raise Invalid(f"'{url}' has an invalid port (1-65535)") from None
    host(parts.hostname)
    return str(url)


def _device(s: Section, device_name: str, files: Files) -> OpcUaDevice | None:
    url = s.take("url", _ua_url)
    mode = s.take("mode", choice("subscribe", "poll"), "subscribe")
    publishing = s.take("publishing_interval", period(0.01, MAX_POLL_INTERVAL), 0.5)
    sampling = s.take("sampling_interval", period(0.0, MAX_POLL_INTERVAL), 0.25)
    queue_size = s.take("queue_size", integer(0, 10_000), 10)
    deadband = s.take("deadband", number, None)
    if deadband is not None and deadband < 0:
        s.fail("deadband", "a deadband is 0 or more")
    poll_interval = s.take("poll_interval", period(0.01, MAX_POLL_INTERVAL), 1.0)
    timeout = s.take("timeout", period(0.1, MAX_UA_TIMEOUT), 4.0)
    reconnect_max = s.take("reconnect_max", period(0.1, 3600.0), 30.0)
    username = s.take("username", text, None)
    password_file = s.take("password_file", files.resolve, None)
    files.password(s, "password_file", password_file)
    security = UaSecurity(
        policy="None", mode=None, certificate=None, private_key=None, server_certificate=None
    )
    if (sec := s.section("security", required=False)) is not None:
        policy = sec.take("policy", choice(*POLICIES))
        sec_mode = sec.take("mode", choice(*MODES), None if policy == "None" else REQUIRED)
        certificate = sec.take("certificate", files.resolve, None if policy == "None" else REQUIRED)
        private_key = sec.take("private_key", files.resolve, None if policy == "None" else REQUIRED)
        server_certificate = sec.take("server_certificate", files.resolve, None)
        sec.finish()
        files.readable(sec, "certificate", certificate)
        files.readable(sec, "private_key", private_key)
        files.readable(sec, "server_certificate", server_certificate)
        if sec.ok:
            security = UaSecurity(
                policy=policy,
                mode=sec_mode,
                certificate=certificate,
                private_key=private_key,
                server_certificate=server_certificate,
            )
        else:
            s.ok = False
    points: list[UaPoint] = []
    for ns in s.sections("nodes", required=True):
        point_name = ns.take("name", name)
        node_id = ns.take("node", text)
        unit_symbol = ns.take("unit", values.unit_symbol)
        scale = ns.take("scale", values.scale, 1.0)
        offset = ns.take("offset", number, 0.0)
        ns.finish()
        if not ns.ok:
            s.ok = False
            continue
        unit = units.lookup(unit_symbol)
        points.append(
            UaPoint(
                tag=f"{device_name}.{point_name}",
                node_id=node_id,
                unit=unit_symbol,
                factor=scale * unit.factor,
                offset=offset * unit.factor + unit.offset,
            )
        )
    s.finish()
    if password_file is not None and username is None:
        s.fail("password_file", "a password needs a 'username'")
    if not s.ok:
        return None
    return OpcUaDevice(
        name=device_name,
        url=url,
        points=tuple(points),
        mode=mode,
        publishing_interval=publishing,
        sampling_interval=sampling,
        queue_size=queue_size,
        deadband=deadband,
        poll_interval=poll_interval,
        timeout=timeout,
        security=security,
        username=username,
        password_file=password_file,
        reconnect_max=reconnect_max,
    )
