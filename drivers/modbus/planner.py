"""Merge a device's points into as few read requests as the protocol allows."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from .model import Point


@dataclass(frozen=True, slots=True)
class Group:
    """Points of one type and order within a request, decoded in one vectorized call."""

    type: str
    order: str
    offsets: npt.NDArray[np.intp]
    points: tuple[Point, ...]
    factors: npt.NDArray[np.float64]
    offsets_si: npt.NDArray[np.float64]


@dataclass(frozen=True, slots=True)
class Request:
    table: str
    start: int
    count: int
    groups: tuple[Group, ...]


def plan(points: tuple[Point, ...], *, max_registers: int, gap_fill: int) -> list[Request]:
    """Merge contiguous points (and gaps up to `gap_fill` registers) into requests.

    Reading a few unused registers costs far less than another round trip on a serial line,
    so small gaps are read and thrown away.
    """
    requests: list[Request] = []
    for table in sorted({p.table for p in points}):
        run: list[Point] = []
        for point in sorted((p for p in points if p.table == table), key=lambda p: p.address):
            if run:
                start = run[0].address
                end = max(p.end for p in run)
                if point.address - end > gap_fill or point.end - start > max_registers:
                    requests.append(_request(table, run))
                    run = []
            run.append(point)
        if run:
            requests.append(_request(table, run))
    return requests


def _request(table: str, run: list[Point]) -> Request:
    start = run[0].address
    count = max(p.end for p in run) - start
    kinds: dict[tuple[str, str], list[Point]] = {}
    for point in run:
        kinds.setdefault((point.type, point.order), []).append(point)
    groups = tuple(
        Group(
            type=type_name,
            order=order,
            offsets=np.array([p.address - start for p in members], dtype=np.intp),
            points=tuple(members),
            factors=np.array([p.factor for p in members], dtype=np.float64),
            offsets_si=np.array([p.offset for p in members], dtype=np.float64),
        )
        for (type_name, order), members in kinds.items()
    )
    return Request(table=table, start=start, count=count, groups=groups)
