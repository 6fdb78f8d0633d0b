"""`massgate sim`: serve a simulated plant over Modbus TCP, Modbus RTU and OPC UA.

The plant is the built-in one or a plant file (drivers/sim/README.md). Every meter is served
as its own Modbus TCP slave; `--rtu` adds all of them as RTU slaves on one serial line (a
real port, or `pty` for a socat pseudo-terminal pair whose other end the agent opens);
`--opcua` adds an OPC UA server. The command prints, and with `--config-out` writes, an
agent configuration that reads every meter over every transport served.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import os
import signal
import sys
from pathlib import Path

from massgate.drivers import profiles
from massgate.drivers.sim import plantspec
from massgate.drivers.sim.faults import Fault
from massgate.drivers.sim.plant import Plant
from massgate.drivers.sim.ptypair import PtyPair, PtyPairError
from massgate.drivers.sim.server import Meter, SerialSlaves, Served, SimulatedSite, meters_of

from ..core import preflight
from ..core.yamlsource import ConfigError, Problem
from . import argtypes
from .common import setup_logging

RTU_BAUD = 115200


def setup(p: argparse.ArgumentParser) -> None:
    p.description = (
        "Serve the built-in plant (tank T-100 on load cells with a Coriolis meter "
        "on its feed, radar and hydrostatic level; a magnetic meter, temperature and pressure "
        "transmitters on its product line) or a plant file of your own until Ctrl-C or "
        "SIGTERM: every meter as a Modbus TCP slave, and on request as RTU slaves on a serial "
        "line and over OPC UA. Prints an agent configuration that reads them all."
    )
    p.set_defaults(func=main)
    p.add_argument(
        "--plant", metavar="FILE", help="plant file to serve (default: the built-in plant)"
    )
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default %(default)s)")
    p.add_argument(
        "--base-port",
        type=argtypes.listen_port,
        default=5020,
        help="first Modbus TCP port; meter n uses base + n (default %(default)s; 0: any free)",
    )
    p.add_argument(
        "--rtu",
        metavar="PORT",
        help="also serve every meter as an RTU slave (unit ids 1, 2, ...) on this serial "
        "port; 'pty' makes a socat pseudo-terminal pair and prints the end to poll",
    )
    p.add_argument(
        "--opcua",
        type=argtypes.listen_port,
        metavar="TCP_PORT",
        help="also serve every meter over OPC UA",
    )
    p.add_argument("--seed", type=int, help="noise seed (default: the plant file's)")
    add_leak_arguments(p, when="open a leak this long after start")
    p.add_argument(
        "--leak-line",
        default="product",
        metavar="LINE",
        help="line that leaks (default %(default)s)",
    )
    p.add_argument(
        "--config-out",
        metavar="FILE",
        help="write an agent configuration that reads every meter served",
    )


def add_leak_arguments(p: argparse.ArgumentParser, *, when: str) -> None:
    """--leak-at and --leak-rate, as `massgate sim` and `massgate demo` take them."""
    p.add_argument(
        "--leak-at", type=argtypes.seconds(low=0.0, zero=True), metavar="SECONDS", help=when
    )
    p.add_argument(
        "--leak-rate",
        type=argtypes.rate,
        default=0.5,
        metavar="KG_PER_S",
        help="rate of that leak (default %(default)s)",
    )


def load_spec(args: argparse.Namespace) -> plantspec.PlantSpec:
    """The plant to serve, with the command line's seed and leak; ConfigError when invalid."""
    spec = plantspec.load(Path(args.plant)) if args.plant else plantspec.builtin()
    if args.seed is not None:
        spec = dataclasses.replace(spec, seed=args.seed)
    if args.leak_at is not None:
        lines = [line.name for line in spec.lines]
        if args.leak_line not in lines:
            raise ConfigError(
                [
                    Problem(
                        args.plant or "<built-in plant>",
                        0,
                        "--leak-line",
                        f"the plant has no line '{args.leak_line}' (lines: {', '.join(lines)})",
                    )
                ]
            )
        leak = Fault(
            kind="leak", target=args.leak_line, start=args.leak_at, magnitude=args.leak_rate
        )
        spec = dataclasses.replace(spec, faults=(*spec.faults, leak))
    return spec


def tcp_devices(served: list[Served], *, poll_interval: str = "500ms") -> list[str]:
    return [
        f"  - {{name: {s.meter.name}, protocol: modbus_tcp, host: {s.host}, port: {s.port}, "
        f"unit_id: {s.unit_id}, profile: {s.meter.profile}, poll_interval: {poll_interval}, "
        f"timeout: 500ms}}   # {s.meter.description}"
        for s in served
    ]


def rtu_section(
    port: str, meters: dict[int, Meter], *, line: str = "sim-rtu"
) -> tuple[str, list[str]]:
    """The `lines:` entry and the devices of RTU slaves `meters` on serial `port`."""
    lines = f"  - {{name: {line}, port: {port}, baudrate: {RTU_BAUD}, parity: none}}"
    devices = [
        f"  - {{name: {m.name}_rtu, protocol: modbus_rtu, line: {line}, unit_id: {uid}, "
        f"profile: {m.profile}, poll_interval: 1s, timeout: 300ms}}   # {m.description}"
        for uid, m in meters.items()
    ]
    return lines, devices


def opcua_devices(url: str, namespace_index: int, meters: list[Meter]) -> list[str]:
    result = []
    for m in meters:
        result.append(f"  - name: {m.name}_ua   # {m.description}")
        result.append("    protocol: opcua")
        result.append(f"    url: {url}")
        result.append("    nodes:")
        for point in profiles.load(m.profile).points:
            node = f"ns={namespace_index};s={m.name}.{point.name}"
            result.append(f'      - {{name: {point.name}, node: "{node}", unit: {point.unit}}}')
    return result


def agent_config(lines: list[str], devices: list[str], *, state_dir: str = "state") -> str:
    text = [
        "## Generated by `massgate sim`: reads every meter of the simulated plant.",
        "gateway: {site: sim, id: gw-sim, state_dir: " + state_dir + "}",
    ]
    if lines:
        text += ["lines:", *lines]
    text += ["devices:", *devices]
    return "\n".join(text) + "\n"


async def serve(args: argparse.Namespace, spec: plantspec.PlantSpec) -> None:
    plant = Plant(spec)
    meters = meters_of(plant)
    site = SimulatedSite(plant, host=args.host, base_port=args.base_port)
    async with contextlib.AsyncExitStack() as stack:
        served = await site.start()
        stack.push_async_callback(site.stop)
        lines: list[str] = []
        devices = tcp_devices(served)
        print(f"Simulated plant: {spec.description or args.plant}")
        print("Modbus TCP slaves (unit 1 each):")
        for s in served:
            print(f"  {s.meter.name:8} {s.meter.description:40} modbus://{s.host}:{s.port}")
        if args.rtu:
            port = args.rtu
            if args.rtu == "pty":
                agent_end, port = stack.enter_context(PtyPair())
            else:
                agent_end = port
            units = dict(enumerate(meters, start=1))
            slaves = SerialSlaves(port, units, plant, baudrate=RTU_BAUD)
            await slaves.start()
            stack.push_async_callback(slaves.stop)
            line, rtu = rtu_section(agent_end, units)
            lines.append(line)
            devices += rtu
            print(f"Modbus RTU slaves on {port} ({RTU_BAUD} baud, 8N1), units 1-{len(units)}:")
            print(f"  poll them on {agent_end}")
        if args.opcua is not None:
            # asyncua is heavy: imported only when OPC UA is served.
            from massgate.drivers.sim.opcua_server import UaPlantServer  # noqa: PLC0415

            ua = UaPlantServer(plant, meters, host=args.host, port=args.opcua)
            await ua.start()
            stack.push_async_callback(ua.stop)
            devices += opcua_devices(ua.url, ua.namespace_index, meters)
            print(f"OPC UA server: {ua.url} (security None)")
            print(f"  nodes ns={ua.namespace_index};s=<meter>.<point>")
        config = agent_config(lines, devices)
        if args.config_out:
            Path(args.config_out).write_text(config, encoding="utf-8")  # noqa: ASYNC240 (once)
            print(f"\nAgent configuration written to {args.config_out}")
        else:
            print("\nAn agent configuration that reads them:\n")
            print(config)
        for fault in spec.faults:
            end = f" until {fault.end:g} s" if fault.end is not None else ""
            print(f"fault scheduled: {fault.kind} on {fault.target} at {fault.start:g} s{end}")
        print("Serving until Ctrl-C or SIGTERM.", flush=True)
        await _until_stopped()


async def _until_stopped() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()


def _usage(message: str) -> int:
    print(f"massgate sim: error: {message} (see massgate sim --help)", file=sys.stderr)
    return 2


def _port_problem(host: str, first: int, count: int) -> str | None:
    """Why the ports first..first+count-1 cannot be served on `host`, tried before serving,
    so that the message names the port instead of pymodbus's "could not start listen"."""
    if first + count - 1 > 65535:
        return (
            f"--base-port {first} leaves no room for {count} meters (ports {first}-"
            f"{first + count - 1}; the last port is 65535)"
        )
    for port in range(first, first + count):
        if (exc := preflight.bind_refused(host, port)) is not None:
            return (
                f"cannot listen on {host}:{port} ({exc.strerror}); choose another "
                "--base-port, or --base-port 0 for free ports"
            )
    return None


def _serial_problem(port: str) -> str | None:
    if port == "pty":
        return None
    try:
        fd = os.open(port, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
    except OSError as exc:
        return f"--rtu {port}: cannot open it ({exc.strerror}); or use --rtu pty"
    try:
        if not os.isatty(fd):
            return f"--rtu {port} is not a serial port; name one like /dev/ttyUSB0, or pty"
    finally:
        os.close(fd)
    return None


def main(args: argparse.Namespace) -> int:
    setup_logging(args.verbose)
    try:
        spec = load_spec(args)
    except ConfigError as exc:
        for found in exc.problems:
            print(found, file=sys.stderr)
        return 2
    if args.rtu and (problem := _serial_problem(args.rtu)) is not None:
        return _usage(problem)
    if args.base_port and (problem := _port_problem(args.host, args.base_port, len(spec.meters))):
        return _usage(problem)
    if args.opcua and (problem := _port_problem(args.host, args.opcua, 1)):
        return _usage(problem.replace("--base-port", "--opcua"))
    try:
        asyncio.run(serve(args, spec))
    except BrokenPipeError:
        raise  # the reader of our output went away; the command line says nothing more
    except (OSError, PtyPairError, RuntimeError) as exc:
        # What the checks above cannot foresee (a port taken in between, a host not ours).
        print(f"massgate sim: cannot serve the plant: {exc}", file=sys.stderr)
        return 1
    return 0
