"""`massgate probe` and `massgate scan`: wiring checks on site, read-only."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys

from massgate.drivers import profiles
from massgate.drivers.base import RetryableError
from massgate.drivers.modbus import codec
from massgate.drivers.modbus.config import profile_point
from massgate.drivers.modbus.model import BIT_TABLES, PARITIES, TABLES, Point, SerialLink, TcpLink
from massgate.drivers.modbus.probe import probe, scan

from ..core import units
from . import argtypes

EXIT_OK = 0
EXIT_NO_REPLY = 1
EXIT_USAGE = 2


def add_link_arguments(p: argparse.ArgumentParser, *, timeout: float) -> None:
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--host", help="Modbus TCP device or serial-to-Ethernet converter")
    where.add_argument("--serial", metavar="PORT", help="serial port, e.g. /dev/ttyUSB0")
    p.add_argument(
        "--port", type=argtypes.tcp_port, default=502, help="TCP port (default %(default)s)"
    )
    p.add_argument(
        "--framing",
        choices=("tcp", "rtu"),
        default="tcp",
        help="with --host: 'rtu' for RTU frames over TCP (default %(default)s)",
    )
    p.add_argument(
        "--baudrate", type=argtypes.baudrate, default=19200, help="(default %(default)s)"
    )
    p.add_argument(
        "--parity", choices=tuple(PARITIES), default="none", help="(default %(default)s)"
    )
    p.add_argument("--stopbits", type=int, choices=(1, 2), default=1, help="(default %(default)s)")
    p.add_argument(
        "--timeout",
        type=argtypes.seconds(low=0.0, high=60.0),
        default=timeout,
        metavar="SECONDS",
        help="reply timeout (default %(default)s)",
    )


def _link(args: argparse.Namespace) -> TcpLink | SerialLink:
    if args.serial:
        return SerialLink(
            name="probe",
            port=args.serial,
            baudrate=args.baudrate,
            parity=PARITIES[args.parity],
            stopbits=args.stopbits,
        )
    return TcpLink(host=args.host, port=args.port, framing=args.framing)


def _points(args: argparse.Namespace) -> tuple[tuple[Point, ...], dict[str, tuple[float, float]]]:
    if args.profile:
        profile = profiles.load(args.profile)
        listed = tuple(profile_point(pp, "probe") for pp in profile.points)
        factors = {}
        for point in listed:
            unit = units.lookup(point.unit)
            factors[point.tag] = (unit.factor, unit.offset)
        return tuple(listed), factors
    type_name = "bool" if args.table in BIT_TABLES else args.type
    width = 1 if type_name == "bool" else codec.width(type_name)
    points = tuple(
        Point(
            tag=f"probe.{args.register + i * width}",
            table=args.table,
            address=args.register + i * width,
            type=type_name,
            order=args.order,
            factor=1.0,
            offset=0.0,
            unit="1",
        )
        for i in range(args.count)
    )
    return points, {p.tag: (1.0, 0.0) for p in points}


def _quiet_pymodbus() -> None:
    # pymodbus logs each refused connect and each silent unit; the tools say it once, clearly.
    logging.getLogger("pymodbus").setLevel(logging.CRITICAL)


def _usage(command: str, message: str) -> int:
    print(f"massgate {command}: error: {message} (see massgate {command} --help)", file=sys.stderr)
    return EXIT_USAGE


def _unit_problem(args: argparse.Namespace, units: range) -> str | None:
    """Unit ids a serial line can address: 0 is broadcast (nobody answers), 248-255 reserved."""
    serial_rtu = args.serial or args.framing == "rtu"
    if serial_rtu and (units.start < 1 or units.stop - 1 > 247):
        return "on a serial line (or RTU framing) unit ids are 1-247: 0 is broadcast"
    return None


def cmd_probe(args: argparse.Namespace) -> int:
    _quiet_pymodbus()
    if not args.profile and args.register is None:
        return _usage("probe", "give --profile NAME or --register ADDRESS")
    if args.profile and args.profile not in profiles.names():
        known = ", ".join(profiles.names())
        return _usage("probe", f"no profile '{args.profile}' (known: {known})")
    if (problem := _unit_problem(args, range(args.unit, args.unit + 1))) is not None:
        return _usage("probe", f"--unit {args.unit}: {problem}")
    if args.register is not None and not args.profile:
        width = 1 if args.table in BIT_TABLES else codec.width(args.type)
        if args.register + args.count * width > 65536:
            return _usage(
                "probe",
                f"--register {args.register} with --count {args.count} runs past register 65535",
            )
    link = _link(args)
    points, factors = _points(args)
    try:
        readings = asyncio.run(probe(link, args.unit, points, factors, reply_timeout=args.timeout))
    except RetryableError as exc:
        print(f"error: {link}/unit {args.unit}: {exc}", file=sys.stderr)
        return EXIT_NO_REPLY
    print(f"{link} unit {args.unit}: {len(readings)} values (read only)")
    print(
        f"{'point':<14} {'table':<8} {'addr':>5} {'type':<8} {'order':<5} "
        f"{'registers':<20} {'value':>16}  unit"
    )
    for r in readings:
        name = r.point.tag.split(".", 1)[1]
        where = f"{r.point.address}" + (f".{r.point.bit}" if r.point.bit is not None else "")
        words = " ".join(f"{w:04x}" for w in r.words)
        print(
            f"{name:<14} {r.point.table:<8} {where:>5} {r.point.type:<8} {r.point.order:<5} "
            f"{words:<20} {r.value:>16.6g}  {r.point.unit}"
        )
        if r.other_orders:
            others = ", ".join(f"{o} {v:.6g}" for o, v in r.other_orders.items())
            print(f"{'':<14} if the value looks wrong, other orders give: {others}")
    return EXIT_OK


def unit_range(text: str) -> range:
    low, _, high = text.partition("-")
    try:
        first, last = int(low), int(high or low)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"'{text}' is not a unit id or a range like 1-247"
        ) from None
    if not 0 <= first <= last <= 255:
        raise argparse.ArgumentTypeError(f"'{text}' is not a range within 0-255, e.g. 1-247")
    return range(first, last + 1)


def cmd_scan(args: argparse.Namespace) -> int:
    _quiet_pymodbus()
    if (problem := _unit_problem(args, args.units)) is not None:
        return _usage("scan", f"--units {args.units.start}-{args.units.stop - 1}: {problem}")
    link = _link(args)

    def progress(unit_id: int) -> None:
        if sys.stderr.isatty():
            print(f"\rasking unit {unit_id} ...", end="", file=sys.stderr, flush=True)

    try:
        found = asyncio.run(
            scan(
                link,
                args.units,
                table=args.table,
                address=args.register,
                reply_timeout=args.timeout,
                progress=progress,
            )
        )
    except RetryableError as exc:
        print(f"error: {link}: {exc}", file=sys.stderr)
        return EXIT_NO_REPLY
    if sys.stderr.isatty():
        print(file=sys.stderr)
    asked = f"units {args.units.start}-{args.units.stop - 1}"
    if not found:
        print(
            f"{link}: no unit answered ({asked}, {args.table} {args.register}); check "
            "wiring (A/B swapped?), baud rate, parity and termination",
            file=sys.stderr,
        )
        return EXIT_NO_REPLY
    print(f"{link}: {len(found)} unit(s) answered ({asked}):")
    for answer in found:
        print(f"  unit {answer.unit_id:>3}: {answer.reply}")
    return EXIT_OK


def setup_probe(p: argparse.ArgumentParser) -> None:
    p.description = (
        "Read a Modbus device once, by profile or by register, and print the raw "
        "registers next to the decoded values, with the value in the other word orders for "
        "multi-register types. massgate only reads; it never writes to a device. Exits 0 on "
        "a reply, 1 when the device or port cannot be reached, 2 on a usage error."
    )
    add_link_arguments(p, timeout=1.0)
    p.add_argument(
        "--unit",
        type=argtypes.unit_id,
        default=1,
        help="unit id: 1-247 on a serial line, 0-255 over TCP (default %(default)s)",
    )
    p.add_argument("--profile", help=f"device profile: {', '.join(profiles.names())}")
    p.add_argument(
        "--register", type=argtypes.register, metavar="ADDRESS", help="first register to read"
    )
    p.add_argument("--table", choices=TABLES, default="holding", help="(default %(default)s)")
    p.add_argument(
        "--type", choices=tuple(codec.TYPES), default="float32", help="(default %(default)s)"
    )
    p.add_argument("--order", choices=codec.ORDERS, default="ABCD", help="(default %(default)s)")
    p.add_argument(
        "--count",
        type=argtypes.whole(1, 125, what="count", note="a read is at most 125 registers"),
        default=1,
        help="values of --type to read (default %(default)s)",
    )
    p.set_defaults(func=cmd_probe)


def setup_scan(p: argparse.ArgumentParser) -> None:
    p.description = (
        "Ask each unit id for one register and list those that answer, with "
        "registers or with an exception (either way a slave is there). Read only. Exits 0 "
        "when at least one unit answered, 1 when none did or the port cannot be opened."
    )
    add_link_arguments(p, timeout=0.2)
    p.add_argument(
        "--units",
        type=unit_range,
        default=range(1, 248),
        metavar="FIRST-LAST",
        help="unit ids to ask (default 1-247)",
    )
    p.add_argument(
        "--register",
        type=argtypes.register,
        default=0,
        help="register to ask for (default 0)",
    )
    p.add_argument("--table", choices=TABLES, default="holding", help="(default %(default)s)")
    p.set_defaults(func=cmd_scan)
