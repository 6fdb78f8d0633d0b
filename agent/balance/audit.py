"""Audit log of configuration changes that change a computation.

A flow computer records every change of a meter factor, a density model or a strapping table
with its old and new value and the time, so that a quantity can always be traced to the
parameters it was computed with. massgate keeps the parameters of the last run in the
outbox's meta table and, at start, records what differs as an `audit` record: published,
and archived locally for good.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import asdict
from typing import Any

from ..config import Config

log = logging.getLogger(__name__)

META_KEY = "computation"


def _plain(value: Any) -> Any:
    """JSON-able, with non-finite numbers as text (JSON has no inf)."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def _flatten(prefix: str, value: Any, out: dict[str, Any]) -> None:
    if isinstance(value, dict):
        for key, inner in value.items():
            _flatten(f"{prefix}.{key}" if prefix else key, inner, out)
    elif prefix.endswith(".composition.fractions"):
        # A gas's mole fractions by name, so that a change reads "density.composition.ethane".
        from ..totalize.gas import COMPONENTS  # noqa: PLC0415

        head = prefix.removesuffix(".fractions")
        for component, fraction in zip(COMPONENTS, value, strict=True):
            if fraction:
                out[f"{head}.{component}"] = fraction
    else:
        out[prefix] = _plain(value)


def parameters(config: Config) -> dict[str, dict[str, Any]]:
    """Every parameter a quantity or a balance depends on, per stream, inventory and node.

    Tags are included: moving a stream to another meter changes its quantity as surely as
    a meter factor does.
    """
    items: dict[str, dict[str, Any]] = {}
    kinds: tuple[tuple[str, tuple[Any, ...]], ...] = (
        ("stream", config.streams),
        ("inventory", config.inventories),
        ("node", config.nodes),
    )
    for kind, entries in kinds:
        for entry in entries:
            flat: dict[str, Any] = {}
            _flatten("", asdict(entry), flat)
            flat.pop("name")
            items[f"{kind} {entry.name}"] = flat
    return items


def changes(old: dict[str, dict[str, Any]], new: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """What differs, item by item and key by key; an added or removed item is one change."""
    found: list[dict[str, Any]] = []
    for item in sorted(old.keys() | new.keys()):
        before, after = old.get(item), new.get(item)
        if before is None or after is None:
            found.append({"item": item, "key": None, "old": before, "new": after})
            continue
        for key in sorted(before.keys() | after.keys()):
            if before.get(key) != after.get(key):
                found.append(
                    {"item": item, "key": key, "old": before.get(key), "new": after.get(key)}
                )
    return found


def compare(stored: str | None, config: Config) -> tuple[list[dict[str, Any]], str]:
    """The changes since the stored parameters, and the current ones to store.

    Nothing stored (a new gateway, or a database started afresh) gives one change per item,
    from None: the baseline the next changes are read against.
    """
    current = parameters(config)
    previous: dict[str, dict[str, Any]] = {}
    if stored is not None:
        try:
            previous = json.loads(stored)
        except json.JSONDecodeError:
            log.error("the stored computation parameters are unreadable; recording a new baseline")
    return changes(previous, current), json.dumps(current, sort_keys=True)


def log_changes(found: list[dict[str, Any]], *, baseline: bool) -> None:
    if baseline:
        log.info("audit: baseline of %d computation parameters recorded", len(found))
        return
    for change in found:
        if change["key"] is None:
            what = "added" if change["old"] is None else "removed"
            log.warning("audit: %s %s", change["item"], what)
        else:
            log.warning(
                "audit: %s %s changed from %s to %s",
                change["item"],
                change["key"],
                json.dumps(change["old"]),
                json.dumps(change["new"]),
            )
