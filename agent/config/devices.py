"""`devices`: each entry handed to the driver of its protocol (drivers/__init__.py); the
agent parses no protocol's keys itself."""

from __future__ import annotations

from typing import Any

from massgate.drivers import DRIVERS, PROTOCOLS, Driver
from massgate.drivers.base import Device

from ..core.values import Files
from ..core.yamlsource import (
    Report,
    Section,
    choice,
    name,
)


class DeviceParsers:
    """Each driver's parser (drivers/__init__.py), made when the file names its protocol or
    a section it owns: the agent parses no protocol's keys itself."""

    def __init__(self, root: Section, files: Files) -> None:
        self.root, self.files = root, files
        self.parsers: dict[str, Any] = {}
        for driver in DRIVERS:
            if any(root.has(key) for key in driver.sections):
                self._parser(driver)

    def _parser(self, driver: Driver) -> Any:
        if driver.package not in self.parsers:
            self.parsers[driver.package] = driver.config().Parser(self.root, self.files)
        return self.parsers[driver.package]

    def device(self, s: Section) -> Any:
        device_name = s.take("name", name)
        protocol = s.take("protocol", choice(*PROTOCOLS))
        # An unknown protocol is read as the first driver's, so that its keys are not all
        # reported as unknown too.
        driver = PROTOCOLS.get(protocol, DRIVERS[0])
        return self._parser(driver).device(s, device_name, protocol)

    def cross_check(self, devices: tuple[Device, ...], where: Any, report: Report) -> None:
        for package, parser in self.parsers.items():
            mine = [(i, d) for i, d in enumerate(devices) if d.driver == package]
            parser.cross_check(mine, where, report)
