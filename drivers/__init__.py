"""massgate drivers: talk to instruments, decode what they say, never write to them.

The registry below is all the agent knows of protocols. A driver is a package here with
  config.py   Parser(root, files): .device(section, name, protocol) -> device or None,
              .cross_check(devices, where, report); start_problem(devices, running)
  and a module whose open_pollers(devices, emit) returns the pollers and how to close them.
Both are imported only when a configuration names one of the driver's protocols, so an
agent without OPC UA devices never imports asyncua. Adding a protocol is a package here and
one line in DRIVERS.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from types import ModuleType
from typing import Any


@dataclass(frozen=True, slots=True)
class Driver:
    package: str  # drivers/<package>/
    protocols: tuple[str, ...]  # the values of a device's `protocol` it takes
    pollers: str  # "module:function" in the package: function(devices, emit) -> Opened
    sections: tuple[str, ...] = ()  # top-level keys of the configuration file it owns

    def config(self) -> ModuleType:
        return importlib.import_module(f"{__name__}.{self.package}.config")

    def open_pollers(self) -> Any:
        module, function = self.pollers.split(":")
        return getattr(importlib.import_module(f"{__name__}.{self.package}.{module}"), function)


DRIVERS = (
    Driver("modbus", ("modbus_tcp", "modbus_rtu"), "poller:open_pollers", sections=("lines",)),
    Driver("opcua", ("opcua",), "client:open_pollers"),
)

PROTOCOLS = {protocol: driver for driver in DRIVERS for protocol in driver.protocols}
BY_PACKAGE = {driver.package: driver for driver in DRIVERS}
