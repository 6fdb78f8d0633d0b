"""The commands, behind a lazy registry.

Each entry names the module that implements a command and the function that sets up its
parser; nothing of a command is imported until it is the one that runs (or asks for
`--help`), so `massgate run` never loads the simulator, the benchmarks or pymodbus's server,
and `massgate --help` loads nothing but this table.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Command:
    target: str  # "module:function" in this package; function(parser) adds the arguments
    help: str


COMMANDS: dict[str, Command] = {
    "check": Command(
        "check:setup", "validate a configuration file without touching any device or broker"
    ),
    "run": Command("run:setup", "run the agent until SIGTERM or Ctrl-C"),
    "status": Command(
        "status:setup", "show the running agent's devices, totals, balances, outbox and broker"
    ),
    "sim": Command("sim:setup", "serve a simulated plant over Modbus TCP, Modbus RTU and OPC UA"),
    "demo": Command(
        "demo:setup", "run the simulated plant and the agent together, with a live table"
    ),
    "probe": Command(
        "sitetools:setup_probe", "read one device once and print its decoded values (wiring check)"
    ),
    "scan": Command(
        "sitetools:setup_scan",
        "find the unit ids that answer on an RS-485 line or behind a gateway",
    ),
    "bench": Command(
        "bench:setup",
        "measure throughput, CPU and memory (drivers, totalizer, outbox, end to end)",
    ),
    "reconcile": Command(
        "reconcile:setup", "reconcile a historian export against a node network, offline"
    ),
    "report": Command(
        "report:setup", "print the kept balance windows and alarms per node for a time range"
    ),
    "batch": Command(
        "batch:setup", "start or end a node's batch in the running agent (batches by command)"
    ),
    "enter": Command(
        "enter:setup", "enter a quantity no meter reads, or a ticket to hold against a meter"
    ),
    "density": Command(
        "density:setup",
        "compute a density as the agent does (API 11.1, water), to check a flow computer",
    ),
    "ingest": Command(
        "ingest:setup",
        "store every gateway's records in PostgreSQL, and account for every sequence number",
    ),
}
