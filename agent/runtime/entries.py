"""Entries from the command socket (`massgate enter`): a manual stream's quantity, landing in
the window of its time and correcting a closed one; or a ticket held against a meter over
the same delivery. Nothing of an entry is ever sent to a device."""

from __future__ import annotations

import logging
import math
from typing import TYPE_CHECKING, Any

from ..balance.terms import balance_body
from ..balance.windows import check_label
from ..config.model import ENTERED
from ..core.records import Record, num, utc
from ..totalize.manual import KEEP_ENTRIES, Entry, comparison

if TYPE_CHECKING:
    from ..totalize.streams import StreamTotal
    from .gateway import Gateway

log = logging.getLogger(__name__)

FUTURE = 300.0  # s an entry's time may lie ahead of this clock (the other one's skew)


def enter(gateway: Gateway, request: dict[str, Any], now: float) -> dict[str, Any]:
    """A quantity no meter read (a manual stream's entry), or one to hold against a
    meter (a weighbridge ticket for a delivery its flow meter measured). The request:
    stream, kg, by, via, and optionally time (epoch s; default now), ticket, uncertainty_kg
    (±, 95 %), and for a metered stream from and to (the delivery's span). Raises ValueError
    saying why it is refused. Nothing of it is ever sent to a device."""
    if "inventory" in request:
        return _stocktake(gateway, request, now)
    name = request.get("stream")
    manual, metered = gateway.manual.get(str(name)), gateway.streams.get(str(name))
    if manual is None and (metered is None or not metered.config.compare_entries):
        if metered is not None:
            raise ValueError(
                f"stream {name} is metered: entries are held against its meter when it "
                "has compare_entries: true"
            )
        known = ", ".join(
            [*gateway.manual, *(n for n, s in gateway.streams.items() if s.config.compare_entries)]
        )
        raise ValueError(f"no manual or compared stream named {name!r} ({known or 'none'})")
    kg = _finite(request.get("kg"), "kg")
    # Default: the delivery's end, or now (as massgate enter's).
    wall = _finite(request.get("time", request.get("to", now)), "time")
    if wall > now + FUTURE:
        raise ValueError(f"time {utc(wall)} is in the future (now {utc(now)})")
    if wall < now - KEEP_ENTRIES:
        raise ValueError(f"time {utc(wall)} is older than {KEEP_ENTRIES / 86400:.0f} days")
    by = check_label(request.get("by"), "by")
    ticket = request.get("ticket")
    ticket = check_label(ticket, "ticket") if ticket is not None else ""
    given = request.get("uncertainty_kg")
    accuracy = (manual or metered).accuracy  # type: ignore[union-attr]
    uncertainty = abs(kg) * accuracy if given is None else _finite(given, "uncertainty_kg")
    if uncertainty < 0:
        raise ValueError("uncertainty_kg: a ± is not negative")
    body: dict[str, Any] = {
        "stream": name, "quantity_kg": kg, "uncertainty_kg": uncertainty,
        "time": utc(wall), "by": by, "ticket": ticket or None, "entered": utc(now),
        "via": request["via"],
    }  # fmt: skip
    book = manual if manual is not None else gateway.tickets[str(name)]
    if ticket and (earlier := book.ticket(ticket)) is not None:
        raise ValueError(
            f"ticket {ticket} of {name} was entered at {utc(earlier.entered)} by "
            f"{earlier.by}: {earlier.kg:g} kg"
        )
    entry = Entry(str(name), kg, wall, uncertainty, by, ticket, now)
    if manual is not None:
        manual.add(entry, now)
        corrected = []
        for node in gateway.nodes:
            if any(s is manual for s in node.streams):
                for result in node.correct(wall):
                    gateway.pending.append(Record("balance", balance_body(result), now))
                    corrected.append(
                        {"node": result.node, "window_start": utc(result.start_wall),
                         "window_end": utc(result.end_wall), "revision": result.revision}
                    )  # fmt: skip
        body.update(comparison=None, corrected=corrected)
        message = f"{name}: {kg:g} kg at {utc(wall)} entered"
        if corrected:
            message += f"; {len(corrected)} closed window(s) corrected"
    else:
        assert metered is not None
        body.update(_compared(gateway, str(name), metered, request, kg, uncertainty), corrected=[])
        gateway.tickets[str(name)].add(entry, now)
        comparison = body["comparison"]
        message = (
            f"{name}: {kg:g} kg against {comparison['metered_kg']:.6g} kg metered: "
            f"{comparison['difference_kg']:+.6g} kg"
            + (" (significant at 99 %)" if comparison["significant"] else "")
        )
        if comparison["significant"]:
            log.warning("stream %s: entry %s: %s", name, ticket or utc(wall), message)
    log.info("entry by %s (via %s): %s", by, body["via"], message)
    gateway.pending.append(Record("entry", body, now))
    gateway.save_soon()  # an operator's entry is not made twice
    return {"ok": True, "message": message, "entry": body}


def _stocktake(gateway: Gateway, request: dict[str, Any], now: float) -> dict[str, Any]:
    """A count of work in progress (an inventory with count: entry): it stands from now until
    the next one, as the counter's reading would."""
    name = str(request.get("inventory"))
    gauge = gateway.inventories.get(name)
    if gauge is None or gauge.config.count != ENTERED:
        known = ", ".join(n for n, g in gateway.inventories.items() if g.config.count == ENTERED)
        raise ValueError(f"no inventory counted by entry named {name!r} ({known or 'none'})")
    count = request.get("count")
    if isinstance(count, float) and count.is_integer():
        count = int(count)
    if isinstance(count, bool) or not isinstance(count, int) or count < 0:
        raise ValueError(f"count: a whole number of units, 0 or more, got {count!r}")
    by = check_label(request.get("by"), "by")
    ticket = request.get("ticket")
    ticket = check_label(ticket, "ticket") if ticket is not None else ""
    gauge.enter_count(count)
    kg = float(gauge.mass or 0.0)
    gateway.counts[name] = {"count": count, "entered": now, "by": by}
    body: dict[str, Any] = {
        "stream": None, "inventory": name, "count": count, "quantity_kg": kg,
        "uncertainty_kg": 2 * gauge.sigma, "time": utc(now), "by": by,
        "ticket": ticket or None, "entered": utc(now), "comparison": None, "corrected": [],
        "via": request["via"],
    }  # fmt: skip
    message = f"{name}: {count} units, {kg:g} kg, from now on"
    log.info("entry by %s (via %s): %s", by, body["via"], message)
    gateway.pending.append(Record("entry", body, now))
    gateway.save_soon()
    return {"ok": True, "message": message, "entry": body}


def _compared(
    gateway: Gateway,
    name: str,
    metered: StreamTotal,
    request: dict[str, Any],
    kg: float,
    uncertainty: float,
) -> dict[str, Any]:
    start = _finite(request.get("from"), "from")
    end = _finite(request.get("to"), "to")
    if not start < end:
        raise ValueError("from: the delivery must end after it starts")
    history = gateway.history[name]
    span = history.span
    at_start, at_end = history.at(start), history.at(end)
    if span is None or at_start is None or at_end is None:
        kept = f"{utc(span[0])} to {utc(span[1])}" if span else "nothing yet"
        raise ValueError(
            f"the meter's running total for {utc(start)} to {utc(end)} is not kept "
            f"(kept: {kept}, the last 12 h); enter it once the meter has been read past "
            "the delivery's end, within 12 h"
        )
    found = comparison(kg, uncertainty, at_end - at_start, metered.accuracy)
    return {"from": utc(start), "to": utc(end), "comparison": {
        k: num(v) if isinstance(v, float) else v for k, v in found.items()
    }}  # fmt: skip


def _finite(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"{what}: expected a number, got {value!r}")
    return float(value)
