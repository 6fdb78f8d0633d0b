"""Merge a device's points into as few read requests as the protocol allows."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from .model import BIT_TABLES, MAX_READ_BITS, Point

BITS_PER_REGISTER = 16


@dataclass(frozen=True, slots=True)
class Group:
    """Points of one type and order within a request, decoded in one vectorized call.

    `bits` is set for single-bit points (coils, discrete inputs, flags inside a register).
    """

    type: str
    order: str
    offsets: npt.NDArray[np.intp]
    points: tuple[Point, ...]
    factors: npt.NDArray[np.float64]
    offsets_si: npt.NDArray[np.float64]
    bits: npt.NDArray[np.intp] | None = None


@dataclass(frozen=True, slots=True)
class Request:
    table: str
    start: int
    count: int
    groups: tuple[Group, ...]

    @property
    def span(self) -> str:
        return f"{self.table} {self.start}..{self.start + self.count - 1}"


def plan(points: tuple[Point, ...], *, max_registers: int, gap_fill: int) -> list[Request]:
    """Merge contiguous points (and gaps up to `gap_fill` registers) into requests.

    Reading a few unused registers costs far less than another round trip on a serial line,
    so small gaps are read and thrown away. In bit tables a register's worth of gap is 16
    bits and a request may hold up to 2000 bits.
    """
    requests: list[Request] = []
    for table in sorted({p.table for p in points}):
        is_bits = table in BIT_TABLES
        limit = MAX_READ_BITS if is_bits else max_registers
        gap = gap_fill * BITS_PER_REGISTER if is_bits else gap_fill
        run: list[Point] = []
        for point in sorted((p for p in points if p.table == table), key=lambda p: p.address):
            if run:
                start = run[0].address
                end = max(p.end for p in run)
                if point.address - end > gap or point.end - start > limit:
                    requests.append(_request(table, run))
                    run = []
            run.append(point)
        if run:
            requests.append(_request(table, run))
    return requests


def _request(table: str, run: list[Point]) -> Request:
    start = run[0].address
    count = max(p.end for p in run) - start
    kinds: dict[tuple[str, str, bool], list[Point]] = {}
    for point in run:
        single_bit = point.type == "bool" or point.bit is not None
        kinds.setdefault((point.type, point.order, single_bit), []).append(point)
    groups = tuple(
        Group(
            type=type_name,
            order=order,
            offsets=np.array([p.address - start for p in members], dtype=np.intp),
            points=tuple(members),
            factors=np.array([p.factor for p in members], dtype=np.float64),
            offsets_si=np.array([p.offset for p in members], dtype=np.float64),
            bits=np.array([p.bit or 0 for p in members], dtype=np.intp) if single_bit else None,
        )
        for (type_name, order, single_bit), members in kinds.items()
    )
    return Request(table=table, start=start, count=count, groups=groups)
