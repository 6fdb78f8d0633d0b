"""Site tools: read one device once (probe) and find the slaves on a line (scan).

Both read only, like everything in massgate. Their results are plain values; the command
line formats them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from . import codec
from .bus import Bus, ExceptionReply, Garbled, NoReply
from .model import BIT_TABLES, Point, SerialLink, TcpLink
from .planner import plan


@dataclass(frozen=True, slots=True)
class Reading:
    point: Point
    words: tuple[int, ...]  # the raw registers (or bits) as they came
    value: float  # in the point's own unit: raw * scale + offset
    other_orders: dict[str, float]  # the same registers decoded in the other orders


async def probe(
    link: TcpLink | SerialLink,
    unit_id: int,
    points: tuple[Point, ...],
    unit_factors: dict[str, tuple[float, float]],
    *,
    reply_timeout: float,
) -> list[Reading]:
    """Read `points` once. `unit_factors[tag]` is (factor, offset) of the point's unit to SI,
    so that values are shown as the device states them, not in SI."""
    bus = Bus(link)
    readings: list[Reading] = []
    try:
        async with bus.session():
            for request in plan(points, max_registers=125, gap_fill=0):
                block = await bus.read(
                    unit_id,
                    request.table,
                    request.start,
                    request.count,
                    reply_timeout=reply_timeout,
                )
                for group in request.groups:
                    for point in group.points:
                        readings.append(_reading(point, block, request.start, unit_factors))
    finally:
        await bus.close()
    return sorted(readings, key=lambda r: (r.point.table, r.point.address, r.point.bit or 0))


def _reading(
    point: Point,
    block: np.ndarray,
    start: int,
    unit_factors: dict[str, tuple[float, float]],
) -> Reading:
    offset = np.array([point.address - start], dtype=np.intp)
    words = tuple(int(w) for w in block[point.address - start : point.end - start])
    unit_factor, unit_offset = unit_factors[point.tag]
    scale = point.factor / unit_factor
    shift = (point.offset - unit_offset) / unit_factor

    def in_unit(raw: float) -> float:
        return raw * scale + shift

    if point.table in BIT_TABLES or point.bit is not None:
        bit = np.array([point.bit or 0], dtype=np.intp)
        return Reading(point, words, in_unit(float(codec.decode_bits(block, offset, bit)[0])), {})
    value = in_unit(float(codec.decode(block, offset, point.type, point.order)[0]))
    others = {}
    if point.width > 1:
        for order in codec.ORDERS:
            if order != point.order:
                others[order] = in_unit(float(codec.decode(block, offset, point.type, order)[0]))
    return Reading(point, words, value, others)


@dataclass(frozen=True, slots=True)
class Answer:
    unit_id: int
    reply: str  # "registers" or the exception's name: either way a slave is there


async def scan(
    link: TcpLink | SerialLink,
    unit_ids: range,
    *,
    table: str,
    address: int,
    reply_timeout: float,
    progress: Callable[[int], None] | None = None,
) -> list[Answer]:
    """Ask every unit id for one register; those that answer at all are there."""
    bus = Bus(link)
    found: list[Answer] = []
    try:
        async with bus.session():
            for unit_id in unit_ids:
                if progress is not None:
                    progress(unit_id)
                try:
                    await bus.read(unit_id, table, address, 1, reply_timeout=reply_timeout)
                except NoReply:
                    continue
                except ExceptionReply as exc:
                    found.append(Answer(unit_id, f"exception: {exc.what}"))
                    continue
                except Garbled:
                    found.append(Answer(unit_id, "garbled reply: wrong baud rate or parity?"))
                    continue
                found.append(Answer(unit_id, "registers"))
    finally:
        await bus.close()
    return found
