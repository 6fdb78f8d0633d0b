"""What no single section shows: names used twice, tags that no device has or have the wrong
unit, nodes that name what does not exist or contain each other."""

from __future__ import annotations

import difflib
import math
from typing import Any

from ..core import units
from ..core.yamlsource import (
    Report,
    Section,
)
from .devices import DeviceParsers
from .model import ENTERED, ROLLING, Config, NodeConfig, NodeCycle, NodeTerms, StreamConfig
from .nodes import node_terms


def cross_check(config: Config, root: Section, report: Report, parsers: DeviceParsers) -> None:
    def where(section: str, index: int, key: str | None = None) -> tuple[int, str]:
        items = root.data.get(section)
        entry = items[index] if items is not None else None
        path = f"{section}[{index}]"
        line = items.item_lines[index] if items is not None else 1
        if key is not None and entry is not None and key in entry.key_lines:
            return entry.key_lines[key], f"{path}.{key}"
        return line, path

    def unique(section: str, items: tuple[Any, ...]) -> None:
        seen: dict[str, int] = {}
        for i, item in enumerate(items):
            if item.name in seen:
                report.add(
                    *where(section, i, "name"),
                    f"'{item.name}' is already used by {section}[{seen[item.name]}]",
                )
            seen.setdefault(item.name, i)

    unique("devices", config.devices)
    unique("streams", config.streams)
    unique("inventories", config.inventories)
    unique("nodes", config.nodes)
    unique("manual_streams", config.manual_streams)
    metered = {s.name for s in config.streams}
    for i, manual in enumerate(config.manual_streams):
        if manual.name in metered:
            report.add(
                *where("manual_streams", i, "name"),
                f"'{manual.name}' is already a metered stream: a meter's stream compares "
                "entries (compare_entries: true) instead",
            )

    tags = {point.tag: point.unit for device in config.devices for point in device.points}
    parsers.cross_check(config.devices, where, report)

    def check_tag(section: str, index: int, key: str, tag: str | None, dimension: str) -> None:
        if tag is None:
            return
        if tag not in tags:
            close = difflib.get_close_matches(tag, list(tags), n=1)
            hint = f" Did you mean '{close[0]}'?" if close else ""
            report.add(*where(section, index, key), f"no device point '{tag}'.{hint}")
            return
        unit = units.lookup(tags[tag])
        if unit.dimension != dimension:
            report.add(
                *where(section, index, key),
                f"'{tag}' is in {tags[tag]} ({unit.dimension}), but a {dimension} is needed here",
            )

    def check_analyzer(section: str, index: int, device: str | None) -> None:
        """A live composition's device has AGA8 components' points, in a fraction unit."""
        if device is None:
            return
        from ..totalize.gas import COMPONENTS  # noqa: PLC0415

        if section != "streams":
            report.add(
                *where(section, index, "density"),
                "a live composition is for a stream's gas; give an inventory a fixed one",
            )
            return
        found = [f"{device}.{c}" for c in COMPONENTS if f"{device}.{c}" in tags]
        if not any(d.name == device for d in config.devices):
            names = [d.name for d in config.devices]
            close = difflib.get_close_matches(device, names, n=1)
            hint = f" Did you mean '{close[0]}'?" if close else ""
            if device in COMPONENTS:
                hint += f" (a fixed composition is a mapping: {{{device}: 1.0}})"
            report.add(
                *where(section, index, "density"),
                f"composition: no device '{device}' to analyze the gas.{hint}",
            )
        elif not found:
            report.add(
                *where(section, index, "density"),
                f"composition: device '{device}' has no point named after an AGA8 component "
                "(profile gas_chromatograph has all 21)",
            )
        for tag in found:
            check_tag(section, index, "density", tag, units.FRACTION)

    for i, stream in enumerate(config.streams):
        check_tag("streams", i, "mass_flow", stream.mass_flow, units.MASS_FLOW)
        check_tag("streams", i, "volume_flow", stream.volume_flow, units.VOLUME_FLOW)
        check_tag("streams", i, "mass_total", stream.mass_total, units.MASS)
        check_tag("streams", i, "belt", stream.belt_load, units.BELT_LOAD)
        check_tag("streams", i, "belt", stream.belt_speed, units.SPEED)
        check_tag("streams", i, "moisture", stream.moisture, units.FRACTION)
        check_tag("streams", i, "solids", stream.solids, units.FRACTION)
        if stream.density is not None:
            check_tag("streams", i, "density", stream.density.temperature, units.TEMPERATURE)
            check_tag("streams", i, "density", stream.density.pressure, units.PRESSURE)
            check_analyzer("streams", i, stream.density.composition_device)
    for i, inventory in enumerate(config.inventories):
        check_tag("inventories", i, "level", inventory.level, units.LENGTH)
        check_tag("inventories", i, "mass", inventory.mass, units.MASS)
        counter = inventory.count if inventory.count != ENTERED else None
        check_tag("inventories", i, "count", counter, units.DIMENSIONLESS)
        check_tag("inventories", i, "moisture", inventory.moisture, units.FRACTION)
        check_tag("inventories", i, "solids", inventory.solids, units.FRACTION)
        if inventory.density is not None:
            density = inventory.density
            check_tag("inventories", i, "density", density.temperature, units.TEMPERATURE)
            check_tag("inventories", i, "density", density.pressure, units.PRESSURE)
            check_analyzer("inventories", i, density.composition_device)

    manual_names = {m.name for m in config.manual_streams}
    stream_names = {s.name for s in config.streams} | manual_names
    inventory_names = {v.name for v in config.inventories}
    node_names = {n.name for n in config.nodes}
    for i, node in enumerate(config.nodes):
        for key, wanted, known in (
            ("inputs", node.inputs, stream_names),
            ("outputs", node.outputs, stream_names),
            ("generation", node.generation, stream_names),
            ("consumption", node.consumption, stream_names),
            ("inventories", node.inventories, inventory_names),
            ("nodes", node.nodes, node_names),
        ):
            for item in wanted:
                if item not in known:
                    kind = {"inventories": "inventory", "nodes": "node"}.get(key, "stream")
                    report.add(*where("nodes", i, key), f"no {kind} named '{item}'")
        roles = [*node.inputs, *node.outputs, *node.generation, *node.consumption]
        twice = sorted({r for r in roles if roles.count(r) > 1})
        if twice:
            report.add(
                *where("nodes", i, "outputs"),
                f"{twice} can be only one of input, output, generation, consumption of a node",
            )
        if not math.isfinite(node.tolerance_sigma) or node.tolerance_sigma < 0:
            report.add(*where("nodes", i, "tolerance"), "sigma must be a number ≥ 0")
        running = node.zero_check.running if node.zero_check else None
        for key, tag in (("window", node.batch_tag), ("window", node.campaign_tag),
                         ("zero_check", running)):  # fmt: skip
            if tag is not None and tag not in tags:
                close = difflib.get_close_matches(tag, list(tags), n=1)
                hint = f" Did you mean '{close[0]}'?" if close else ""
                report.add(*where("nodes", i, key), f"no device point '{tag}'.{hint}")
    if report.problems:
        return
    try:
        terms = node_terms(config.nodes)
    except NodeCycle as exc:
        index = next(i for i, n in enumerate(config.nodes) if n.name == exc.node)
        report.add(*where("nodes", index, "nodes"), str(exc))
        return
    # A dry balance weighs the dry share of every term: each stream names its analyzer.
    by_name = {s.name: s for s in config.streams}
    for i, node in enumerate(config.nodes):
        if node.basis != "dry":
            continue
        t = terms[node.name]
        wet = [
            name
            for group in (t.inputs, t.outputs, t.generation, t.consumption)
            for name in group
            if name in manual_names or by_name[name].dry_tag is None
        ]
        if wet:
            report.add(
                *where("nodes", i, "basis"),
                f"a dry balance needs the dry share of each stream: {', '.join(wet)} "
                "names no 'moisture' or 'solids' tag",
            )
        by_inventory = {v.name: v for v in config.inventories}
        wet_vessels = [v for v in t.inventories if by_inventory[v].dry_tag is None]
        if wet_vessels:
            report.add(
                *where("nodes", i, "basis"),
                "a dry balance needs the dry share of each inventory: "
                f"{', '.join(wet_vessels)} names no 'moisture' or 'solids' tag",
            )
    for i, node in enumerate(config.nodes):
        t = terms[node.name]
        entered = [n for g in (t.inputs, t.outputs, t.generation, t.consumption) for n in g
                   if n in manual_names]  # fmt: skip
        if entered and node.window_kind == ROLLING:
            report.add(
                *where("nodes", i, "window"),
                f"{', '.join(entered)} is a manual stream: its entries come in lumps (a "
                "lorry's ticket), so balance it over batches or shifts (a batch or calendar "
                "window), not a rolling one",
            )
        if node.zero_check is not None:
            _check_zero_check(
                node, terms[node.name], by_name, report, where("nodes", i, "zero_check")
            )
    if config.reconciliation is not None:
        leaves = [n for n in config.nodes if not n.nodes]
        from ..balance.reconcile import network_of  # noqa: PLC0415

        entered = sorted(
            n for leaf in leaves for g in (terms[leaf.name].inputs, terms[leaf.name].outputs)
            for n in g if n in manual_names
        )  # fmt: skip
        in_network = {n for leaf in leaves for n in _streams_of(terms[leaf.name])}
        for a, b, _ in config.reconciliation.correlations:
            for end in (a, b):
                if end not in in_network or end in manual_names:
                    report.add(
                        root.data.key_lines.get("balance", 1),
                        "balance.reconciliation.correlations",
                        f"'{end}' is no metered stream of the reconciled nodes",
                    )
        if entered:
            line = root.data.key_lines.get("balance", 1)
            report.add(
                line,
                "balance.reconciliation",
                f"{', '.join(entered)} is a manual stream: reconciliation weighs meters read "
                "every cycle; leave its node out of the network",
            )
        try:
            network_of(
                [n.name for n in leaves],
                {n.name: terms[n.name].inputs for n in leaves},
                {n.name: terms[n.name].outputs for n in leaves},
            )
        except ValueError as exc:
            line = root.data.key_lines.get("balance", 1)
            report.add(line, "balance.reconciliation", f"the nodes do not form a network: {exc}")


def _check_zero_check(
    node: NodeConfig,
    terms: NodeTerms,
    streams: dict[str, StreamConfig],
    report: Any,
    at: tuple[int, str],
) -> None:
    """A zero check needs a meter to check, and a way to know the line stands still."""
    assert node.zero_check is not None
    names = [n for g in (terms.inputs, terms.outputs, terms.generation, terms.consumption)
             for n in g]  # fmt: skip
    flows = [streams[n] for n in names if n in streams and streams[n].mass_total is None]
    if not any(s.zero_stability is not None for s in flows):
        report.add(
            *at,
            "no stream of the node gives its meter's 'zero_stability' (e.g. '2 kg/h'): there "
            "is no zero to check",
        )
    elif node.zero_check.running is None:
        uncut = [s.name for s in flows if s.low_flow_cutoff <= 0]
        if uncut:
            report.add(
                *at,
                "without a 'running' tag, the line stands still when every flow meter of the "
                f"node reads below its low_flow_cutoff: {', '.join(uncut)} has none (give one, "
                "or the run tag of the line)",
            )


def _streams_of(terms: NodeTerms) -> tuple[str, ...]:
    return (*terms.inputs, *terms.outputs, *terms.generation, *terms.consumption)
