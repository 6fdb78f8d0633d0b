"""The Modbus sections of the configuration: `lines` (RS-485) and devices with
`protocol: modbus_tcp` or `modbus_rtu`, validated into the model (no I/O here)."""

from __future__ import annotations

import difflib
import itertools
import os
from collections.abc import Sequence
from typing import Any

from massgate.agent.core import units, values
from massgate.agent.core.values import DAY, MAX_POLL_INTERVAL, Files, host
from massgate.agent.core.yamlsource import (
    REQUIRED,
    Invalid,
    Report,
    Section,
    choice,
    integer,
    name,
    names,
    number,
    quantity,
    text,
)

from .. import profiles
from ..base import Device, Where
from . import codec
from .model import (
    BIT_TABLES,
    MAX_READ_REGISTERS,
    PARITIES,
    TABLES,
    ModbusDevice,
    Point,
    SerialLink,
    TcpLink,
)

MAX_MODBUS_TIMEOUT = 60.0  # no slave needs longer; a longer wait stalls every slave on its bus
RTU_UNIT_IDS = (1, 247)  # 0 is broadcast, which no slave answers; 248-255 are reserved
TCP_UNIT_IDS = (0, 255)  # 255 (or 0) is what most Modbus TCP devices expect: "not used"


class Parser:
    """Reads the `lines` of one configuration file, then each Modbus device."""

    def __init__(self, root: Section, files: Files) -> None:
        del files  # a Modbus device names no file
        self.line_sections = root.sections("lines")
        self.lines = [_line(s) for s in self.line_sections]
        self.known = {line.name: line for line in self.lines if line is not None}
        # A line with an error of its own is reported there, not again at every device on it.
        self.broken = {
            str(s.data.get("name"))
            for s, line in zip(self.line_sections, self.lines, strict=True)
            if not line
        }

    def device(self, s: Section, device_name: str, protocol: str | None) -> ModbusDevice | None:
        link: TcpLink | SerialLink | None = None
        unit_ids = RTU_UNIT_IDS
        if protocol == "modbus_tcp":
            address = s.take("host", host)
            port = s.take("port", integer(1, 65535), 502)
            framing = s.take("framing", choice("tcp", "rtu"), "tcp")
            if framing == "tcp":  # RTU frames over TCP address slaves on a line behind it
                unit_ids = TCP_UNIT_IDS
            if address is not None and port is not None and framing is not None:
                link = TcpLink(host=address, port=port, framing=framing)
        elif protocol == "modbus_rtu":
            line_name = s.take("line", name)
            if line_name is not None:
                link = self.known.get(line_name)
                if link is None and line_name in self.broken:
                    s.ok = False  # the line's own problem is reported where the line is
                elif link is None:
                    known = ", ".join(sorted(self.known)) or "none are defined under 'lines'"
                    s.fail("line", f"no serial line named '{line_name}' (lines: {known})")
        unit_id = s.take("unit_id", _unit_id(unit_ids), 1)
        poll_interval = s.take(
            "poll_interval", quantity(units.TIME, minimum=0.01, maximum=MAX_POLL_INTERVAL), 1.0
        )
        timeout = s.take(
            "timeout", quantity(units.TIME, minimum=0.01, maximum=MAX_MODBUS_TIMEOUT), 1.0
        )
        retries = s.take("retries", integer(0, 10), 1)
        max_request = s.take(
            "max_request_registers", integer(1, MAX_READ_REGISTERS), MAX_READ_REGISTERS
        )
        gap_fill = s.take("gap_fill", integer(0, MAX_READ_REGISTERS), 8)
        degrade_after = s.take("degrade_after", integer(1, 1000), 3)
        degraded_interval = s.take(
            "degraded_interval",
            quantity(units.TIME, minimum=0.01, maximum=MAX_POLL_INTERVAL),
            10.0,
        )
        stale_after = s.take("stale_after", quantity(units.TIME, positive=True, maximum=DAY), None)
        profile_name = s.take("profile", text, None)

        points: dict[str, Point] = {}
        if profile_name is not None:
            try:
                profile = profiles.load(profile_name)
            except KeyError:
                close = difflib.get_close_matches(profile_name, profiles.names(), n=1)
                hint = f" Did you mean '{close[0]}'?" if close else ""
                s.fail("profile", f"no device profile '{profile_name}'.{hint}")
            else:
                for pp in profile.points:
                    points[pp.name] = profile_point(pp, device_name)
        # An entry under `points` with the name of a profile point replaces it (a meter whose
        # firmware puts one value elsewhere, or in other units).
        for ps in s.sections("points"):
            point = _point(ps, device_name)
            if point is not None:
                points[point.tag.split(".", 1)[1]] = point
        # Profile points this meter does not have (an older firmware without the status
        # register): not read, so its map's end is not asked for.
        for left_out in s.take("without", names, ()) or ():
            if profile_name is None:
                s.fail("without", "leaves out points of a 'profile'; this device names none")
                break
            if left_out not in points:
                close = difflib.get_close_matches(left_out, list(points), n=1)
                hint = f" Did you mean '{close[0]}'?" if close else ""
                s.fail("without", f"profile {profile_name} has no point '{left_out}'.{hint}")
                continue
            del points[left_out]
        if profile_name is not None and not points and s.ok:
            s.fail("without", "leaves out every point: nothing is left to read")
        s.finish()
        if profile_name is None and not s.has("points"):
            s.fail(None, "a device needs a 'profile' or at least one entry under 'points'")
        if not s.ok or link is None:
            return None
        return ModbusDevice(
            name=device_name,
            link=link,
            unit_id=unit_id,
            poll_interval=poll_interval,
            timeout=timeout,
            retries=retries,
            points=tuple(points.values()),
            max_request_registers=max_request,
            gap_fill=gap_fill,
            degrade_after=degrade_after,
            degraded_interval=degraded_interval,
            stale_after=stale_after,
        )

    def cross_check(
        self, devices: Sequence[tuple[int, Device]], where: Where, report: Report
    ) -> None:
        """What no single section shows: one name and one port per line, one endpoint per
        device, one framing per TCP endpoint, no two points in the same registers."""
        names: dict[str, int] = {}
        ports: dict[str, int] = {}
        for i, line in enumerate(self.lines):
            if line is None:
                continue
            if line.name in names:
                report.add(
                    *where("lines", i, "name"),
                    f"'{line.name}' is already used by lines[{names[line.name]}]",
                )
            names.setdefault(line.name, i)
            if line.port in ports:
                report.add(
                    *where("lines", i, "port"),
                    f"{line.port} is already lines[{ports[line.port]}]; one port is one line",
                )
            ports.setdefault(line.port, i)
        endpoints: dict[tuple[str, int], int] = {}
        framings: dict[str, tuple[str, int]] = {}
        for i, device in devices:
            assert isinstance(device, ModbusDevice)
            _check_overlaps(device, *where("devices", i, None), report)
            link = device.link
            if isinstance(link, TcpLink):
                framing, first = framings.setdefault(link.key, (link.framing, i))
                if framing != link.framing:
                    report.add(
                        *where("devices", i, "framing"),
                        f"devices[{first}] reads {link.host}:{link.port} with '{framing}' "
                        "framing; one endpoint speaks one framing",
                    )
            endpoint = (link.key, device.unit_id)
            if endpoint in endpoints:
                report.add(
                    *where("devices", i, "unit_id"),
                    f"{device.endpoint} is already polled as devices[{endpoints[endpoint]}]; "
                    "put all its points in one device",
                )
            endpoints.setdefault(endpoint, i)


def start_problem(devices: Sequence[Device], running: Sequence[Device]) -> str | None:
    """What would stop `devices` from starting that their configuration cannot show: a serial
    port that is not there (one the running agent already has open is not tried again)."""
    held = {
        d.link.port
        for d in running
        if isinstance(d, ModbusDevice) and isinstance(d.link, SerialLink)
    }
    for device in devices:
        line = device.link if isinstance(device, ModbusDevice) else None
        if isinstance(line, SerialLink) and line.port not in held:
            if not os.access(line.port, os.R_OK | os.W_OK):
                what = "does not exist" if not os.path.exists(line.port) else "cannot be opened"
                return f"serial port {line.port} (lines: {line.name}) {what}"
            held.add(line.port)
    return None


def _line(s: Section) -> SerialLink | None:
    line_name = s.take("name", name)
    port = s.take("port", text)
    baudrate = s.take("baudrate", integer(300, 4_000_000), 19200)
    parity = s.take("parity", choice(*PARITIES), "none")
    stopbits = s.take("stopbits", integer(1, 2), 1)
    bytesize = s.take("bytesize", integer(7, 8), 8)
    delay = s.take("inter_frame_delay", quantity(units.TIME, minimum=0.0, maximum=1.0), None)
    s.finish()
    if not s.ok:
        return None
    return SerialLink(
        name=line_name,
        port=port,
        baudrate=baudrate,
        parity=PARITIES[parity],
        stopbits=stopbits,
        bytesize=bytesize,
        inter_frame_delay=delay,
    )


def _unit_id(bounds: tuple[int, int]) -> Any:
    low, high = bounds

    def convert(value: Any) -> int:
        unit_id = int(integer(0, 255)(value))
        if not low <= unit_id <= high:
            why = (
                "0 is broadcast, which no slave answers"
                if unit_id == 0
                else "248-255 are reserved on a serial line"
            )
            raise Invalid(f"{unit_id} is out of range {low}..{high} for RTU framing ({why})")
        return unit_id

    return convert


def profile_point(pp: profiles.ProfilePoint, device_name: str) -> Point:
    """A profile's point on one device, with its scale and unit folded into SI factors."""
    unit = units.lookup(pp.unit)
    return Point(
        tag=f"{device_name}.{pp.name}",
        table=pp.table,
        address=pp.address,
        type=pp.type,
        order=pp.order,
        factor=pp.scale * unit.factor,
        offset=pp.offset * unit.factor + unit.offset,
        unit=pp.unit,
        bit=pp.bit,
        alarm=pp.alarm,
    )


def _point(s: Section, device_name: str) -> Point | None:
    point_name = s.take("name", name)
    table = s.take("table", choice(*TABLES), "holding")
    address = s.take("address", integer(0, 65535))
    bit_table = table in BIT_TABLES
    bit = s.take("bit", integer(0, 15), None)
    default_type = "bool" if bit_table else ("uint16" if bit is not None else "float32")
    type_name = s.take("type", choice("bool", *codec.TYPES), default_type)
    order = s.take("order", choice(*codec.ORDERS), "ABCD")
    flag = bit_table or s.has("bit") or type_name == "bool"
    unit_symbol = s.take("unit", values.unit_symbol, "flag" if flag else REQUIRED)
    scale = s.take("scale", values.scale, 1.0)
    offset = s.take("offset", number, 0.0)
    alarm = s.take("alarm", choice(*profiles.ALARM_QUALITIES), None)
    s.finish()
    if not s.ok:
        return None
    if bit_table and type_name != "bool":
        s.fail("type", f"a {table} is one bit: its type is 'bool', not '{type_name}'")
        return None
    if not bit_table and type_name == "bool":
        s.fail(
            "type",
            f"'bool' is for coil and discrete tables; in a {table} register "
            "name the flag's 'bit' (0-15) instead",
        )
        return None
    if bit is not None and (bit_table or codec.width(type_name) != 1):
        s.fail("bit", "'bit' picks a flag out of one 16-bit register (type uint16 or int16)")
        return None
    if type_name != "bool" and address + codec.width(type_name) > 65536:
        s.fail("address", f"{type_name} at {address} runs past register 65535")
        return None
    unit = units.lookup(unit_symbol)
    # raw → (raw·scale + offset) in the device unit → SI, folded into one multiply-add.
    return Point(
        tag=f"{device_name}.{point_name}",
        table=table,
        address=address,
        type=type_name,
        order=order,
        factor=scale * unit.factor,
        offset=offset * unit.factor + unit.offset,
        unit=unit_symbol,
        bit=bit,
        alarm=alarm,
    )


def _check_overlaps(device: ModbusDevice, line: int, path: str, report: Report) -> None:
    """Two values in the same registers are a typo, except flags picked out of a register."""
    by_table: dict[str, list[Point]] = {}
    flags: dict[tuple[str, int, int], Point] = {}
    for point in device.points:
        if point.bit is None:
            by_table.setdefault(point.table, []).append(point)
            continue
        other = flags.setdefault((point.table, point.address, point.bit), point)
        if other is not point:
            report.add(
                line,
                path,
                f"points '{other.tag}' and '{point.tag}' are both bit {point.bit} of "
                f"{point.table} {point.address}",
            )
    for table, points in by_table.items():
        points.sort(key=lambda p: p.address)
        for a, b in itertools.pairwise(points):
            if b.address < a.end:
                report.add(
                    line,
                    path,
                    f"points '{a.tag}' ({table} {a.address}..{a.end - 1}) and "
                    f"'{b.tag}' ({table} {b.address}..{b.end - 1}) overlap",
                )
