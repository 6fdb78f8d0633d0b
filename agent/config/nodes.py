"""The `nodes` section (system boundaries, their windows, tolerance and alarm) and
`balance.reconciliation`; what crosses each node's boundary once inner nodes are counted."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from ..core import units, values
from ..core.values import DAY
from ..core.yamlsource import (
    Invalid,
    Section,
    boolean,
    choice,
    integer,
    name,
    names,
    number,
    quantity,
    text,
)
from .model import (
    BATCH,
    CALENDAR,
    LOSS_CLASSES,
    MAX_PERIOD,
    MAX_SIGMA,
    OUTPUT_CLASSES,
    PRODUCT,
    ROLLING,
    NodeConfig,
    NodeCycle,
    NodeTerms,
    ReconciliationConfig,
    ZeroCheckConfig,
)


def parse_node(s: Section, terms: Callable[[Any], tuple[str, ...]] = names) -> NodeConfig | None:
    """One node; `terms` reads its stream and inventory names (upstream they are
    GATEWAY/NAME)."""
    node_name = s.take("name", name)
    inputs = s.take("inputs", terms, ())
    classified = s.take("outputs", _classified(terms), ((), ()))
    outputs, output_classes = classified if classified is not None else ((), ())
    inventories = s.take("inventories", terms, ())
    generation = s.take("generation", terms, ())
    consumption = s.take("consumption", terms, ())
    children = s.take("nodes", names, ())
    window: dict[str, Any] = {}
    if isinstance(s.data.get("window"), dict):
        if (ws := s.section("window")) is not None:
            window = _calendar_or_batch(ws)
    else:
        window = {"window": s.take("window", quantity(units.TIME, minimum=1.0, maximum=MAX_PERIOD))}
    evaluate_every = s.take("evaluate_every", quantity(units.TIME, minimum=0.1, maximum=DAY), None)
    fixed, relative, sigma = 0.0, 0.01, 3.0
    if (tol := s.section("tolerance", required=False)) is not None:
        fixed = tol.take("fixed", quantity(units.MASS, minimum=0.0), 0.0)
        relative = tol.take("relative", quantity(units.FRACTION, minimum=0.0, maximum=1.0), 0.0)
        sigma = tol.take("sigma", _sigma, 3.0)
        tol.finish()
    period = quantity(units.TIME, minimum=0.0, maximum=MAX_PERIOD)
    persistence = s.take("persistence", period)
    clear_after = s.take("clear_after", period, 0.0)
    fraction = quantity(units.FRACTION, minimum=0.0, maximum=1.0)
    min_coverage = s.take("min_coverage", fraction, 0.9)
    basis = s.take("basis", choice("wet", "dry"), "wet")
    theoretical_yield = s.take(
        "theoretical_yield", quantity(units.FRACTION, positive=True, maximum=1.0), None
    )
    zero_check = None
    if (zs := s.section("zero_check", required=False)) is not None:
        zero_check = ZeroCheckConfig(
            running=zs.take("running", values.tag, None),
            settle=zs.take("settle", quantity(units.TIME, minimum=0.0, maximum=DAY), 120.0),
            over=zs.take("over", quantity(units.TIME, minimum=1.0, maximum=DAY), 300.0),
        )
        zs.finish()
    deadband = s.take("deadband", fraction, 0.1)
    re_alarm = s.take("re_alarm", period, 0.0)
    drift_k, drift_h = 1.0, 8.0
    if s.data.get("drift") is False:
        s.take("drift", boolean)
        drift_h = 0.0
    elif (drift := s.section("drift", required=False)) is not None:
        drift_k = drift.take("k", quantity(units.FRACTION, minimum=0.0, maximum=100.0), drift_k)
        drift_h = drift.take("h", quantity(units.FRACTION, positive=True, maximum=1000.0), drift_h)
        drift.finish()
    s.finish()
    if not s.ok or not window:
        return None
    if not (inputs or outputs or inventories or generation or consumption or children):
        s.fail(
            None,
            "a node needs at least one of 'inputs', 'outputs', 'inventories', 'generation', "
            "'consumption', 'nodes'",
        )
        return None
    if deadband >= 1:
        s.fail("deadband", "must be below 100 % of the tolerance")
        return None
    kind = window.get("window_kind", ROLLING)
    length = window.get("window", math.nan)
    if evaluate_every is None:
        evaluate_every = min(length / 10, 60.0) if kind == ROLLING else 60.0
    if kind == ROLLING and evaluate_every > length:
        s.fail("evaluate_every", "must not be longer than the window")
        return None
    return NodeConfig(
        name=node_name,
        inputs=inputs,
        outputs=outputs,
        inventories=inventories,
        generation=generation,
        consumption=consumption,
        nodes=children,
        evaluate_every=evaluate_every,
        tolerance_fixed=fixed,
        tolerance_relative=relative,
        tolerance_sigma=sigma,
        persistence=persistence,
        clear_after=clear_after,
        min_coverage=min_coverage,
        deadband=deadband,
        re_alarm=re_alarm,
        drift_k=drift_k,
        drift_h=drift_h,
        basis=basis,
        output_classes=output_classes,
        theoretical_yield=theoretical_yield,
        zero_check=zero_check,
        **window,
    )


def _classified(
    terms: Callable[[Any], tuple[str, ...]],
) -> Callable[[Any], tuple[tuple[str, ...], tuple[tuple[str, str], ...]]]:
    """A node's outputs: each a name, or {stream: NAME, class: CLASS} for what it is (scrap,
    waste...); a name alone is product. Gives the names and the classes that are not product."""

    def convert(value: Any) -> tuple[tuple[str, ...], tuple[tuple[str, str], ...]]:
        items = value if isinstance(value, list) else [value]
        found: list[str] = []
        classes: list[tuple[str, str]] = []
        for item in items:
            if not isinstance(item, dict):
                found += terms(item)
                continue
            unknown = sorted(set(item) - {"stream", "class"})
            if unknown or "stream" not in item:
                raise Invalid(
                    f"an output is a stream's name or {{stream: NAME, class: CLASS}} "
                    f"(class one of {', '.join(OUTPUT_CLASSES)}), got {item!r}"
                )
            (stream,) = terms(item["stream"])
            kind = item.get("class", PRODUCT)
            if kind not in OUTPUT_CLASSES:
                raise Invalid(
                    f"'{kind}' is not an output class ({', '.join(OUTPUT_CLASSES)}); losses "
                    f"are {', '.join(LOSS_CLASSES)}"
                )
            found.append(stream)
            if kind != PRODUCT:
                classes.append((stream, kind))
        if len(set(found)) != len(found):
            twice = sorted({x for x in found if found.count(x) > 1})
            raise Invalid(f"an output is listed twice: {', '.join(twice)}")
        return tuple(found), tuple(classes)

    return convert


def _sigma(value: Any) -> float:
    sigma = number(value)
    if not 0 <= sigma <= MAX_SIGMA:
        raise Invalid(
            f"sigma is a coverage factor from 0 to {MAX_SIGMA:g} (3 is usual), got {sigma}"
        )
    return sigma


def _clock_time(value: Any) -> tuple[int, int]:
    raw = text(value) if not isinstance(value, int) else f"{value // 60:02d}:{value % 60:02d}"
    # YAML 1.1 reads an unquoted 06:00 as the sexagesimal number 360: both are accepted.
    parts = raw.split(":")
    try:
        hour, minute = int(parts[0]), int(parts[1]) if len(parts) > 1 else 0
    except ValueError:
        raise Invalid(f"'{raw}' is not a time of day like 06:00") from None
    if len(parts) > 2 or not (0 <= hour < 24 and 0 <= minute < 60):
        raise Invalid(f"'{raw}' is not a time of day like 06:00")
    return hour, minute


COMMAND = "command"


def _calendar_or_batch(s: Section) -> dict[str, Any]:
    if s.has("batch") == s.has("calendar"):
        s.fail(None, "give 'calendar: [06:00, 14:00, 22:00]' (with 'timezone') or 'batch: TAG'")
        s.finish(("batch", "calendar", "timezone", "campaign"))
        return {}
    if s.has("batch"):
        # A batch begins and ends by a tag, or by `massgate batch start|end` (no tag).
        source = s.take("batch", values.tag_or(COMMAND, "batches by massgate batch start|end"))
        tag = None if source == COMMAND else source
        campaign = s.take("campaign", values.tag, None)
        s.finish()
        if not s.ok:
            return {}
        return {
            "window_kind": BATCH,
            "batch_tag": tag,
            "campaign_tag": campaign,
            "window": math.nan,
        }
    times = s.take("calendar", _clock_times)
    zone = s.take("timezone", _timezone, "UTC")
    s.finish()
    if not s.ok:
        return {}
    minutes = [h * 60 + m for h, m in times]
    gaps = [
        (b - a) % 1440 or 1440 for a, b in zip(minutes, [*minutes[1:], minutes[0]], strict=True)
    ]
    return {
        "window_kind": CALENDAR,
        "calendar": tuple(times),
        "timezone": zone,
        "window": max(gaps) * 60.0,
    }


def _clock_times(value: Any) -> tuple[tuple[int, int], ...]:
    items = value if isinstance(value, list) else [value]
    if not items:
        raise Invalid("expected at least one time of day")
    times = sorted({_clock_time(v) for v in items})
    if len(times) != len(items):
        raise Invalid("a time of day is given twice")
    return tuple(times)


def _timezone(value: Any) -> str:
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError  # noqa: PLC0415

    zone = text(value)
    try:
        ZoneInfo(zone)
    except (ZoneInfoNotFoundError, ValueError):
        raise Invalid(f"'{zone}' is not a time zone like Europe/Berlin or UTC") from None
    return zone


def _pair(stream: Callable[[Any], str]) -> Callable[[Any], tuple[str, str]]:
    def convert(value: Any) -> tuple[str, str]:
        if not isinstance(value, list) or len(value) != 2:
            raise Invalid("expected the two streams whose errors are correlated, e.g. [F2, F4]")
        first, second = stream(value[0]), stream(value[1])
        if first == second:
            raise Invalid("a stream's error is correlated with another stream's, not its own")
        return first, second

    return convert


def parse_correlations(
    sections: list[Section],
    measured: set[str] | None = None,
    stream: Callable[[Any], str] = name,
) -> dict[tuple[str, str], float]:
    """`correlations: [{streams: [a, b], correlation: r}]`: two meters' errors correlated (a
    shared density or temperature); `measured`, when known here, the streams that may be;
    `stream` reads a stream's name (upstream GATEWAY/NAME)."""
    correlations: dict[tuple[str, str], float] = {}
    for c in sections:
        pair = c.take("streams", _pair(stream))
        rho = c.take("correlation", number)
        c.finish()
        if pair is None or rho is None:
            continue
        if not -1.0 < rho < 1.0:
            c.fail("correlation", f"a correlation lies strictly between -1 and 1, got {rho}")
        for end in pair:
            if measured is not None and end not in measured:
                c.fail("streams", f"'{end}' is no measured stream of this network")
        if pair in correlations or pair[::-1] in correlations:
            c.fail("streams", f"{pair[0]} and {pair[1]} are correlated twice")
        if c.ok:
            correlations[pair] = rho
    return correlations


def parse_reconciliation(s: Section, stream: Callable[[Any], str] = name) -> ReconciliationConfig:
    window = s.take("window", quantity(units.TIME, minimum=60.0, maximum=MAX_PERIOD), 3600.0)
    every = s.take("every", quantity(units.TIME, minimum=1.0, maximum=DAY), 300.0)
    alpha = s.take("alpha", quantity(units.FRACTION, positive=True), 0.05)
    confirm = s.take("confirm", integer(1, 1000), 3)
    estimator = s.take("estimator", choice("wls", "huber", "fair"), "wls")
    correlations = parse_correlations(s.sections("correlations"), stream=stream)
    s.finish()
    if alpha is not None and alpha >= 0.5:
        s.fail("alpha", "a significance level is small, like 0.05")
    if correlations and estimator != "wls":
        s.fail(
            "estimator",
            "the robust estimators take independent errors: huber or fair cannot weigh "
            "correlated ones (use wls with correlations, or drop them)",
        )
    return ReconciliationConfig(
        window=window,
        every=every,
        alpha=alpha,
        confirm=confirm,
        estimator=estimator,
        correlations=tuple((a, b, r) for (a, b), r in correlations.items()),
    )


def node_terms(nodes: tuple[NodeConfig, ...]) -> dict[str, NodeTerms]:
    """Each node's terms; a stream from one inner node to another is internal to the outer one.

    Raises ValueError when a node contains itself, directly or through others.
    """
    by_name = {n.name: n for n in nodes}
    found: dict[str, NodeTerms] = {}

    def resolve(node: NodeConfig, path: tuple[str, ...]) -> NodeTerms:
        if node.name in path:
            cycle = " → ".join((*path[path.index(node.name) :], node.name))
            # Reported at the node whose 'nodes' entry closes the circle.
            raise NodeCycle(f"nodes contain each other: {cycle}", path[-1])
        if node.name in found:
            return found[node.name]
        parts = [resolve(by_name[c], (*path, node.name)) for c in node.nodes]
        own = NodeTerms(
            node.inputs, node.outputs, node.generation, node.consumption, node.inventories
        )
        ins = _union(own.inputs, *(p.inputs for p in parts))
        outs = _union(own.outputs, *(p.outputs for p in parts))
        internal = set(ins) & set(outs)
        outputs = tuple(x for x in outs if x not in internal)
        # An inner node's scrap leaving the outer boundary is the outer node's scrap too,
        # unless the outer node classes that output itself.
        classes = {k: v for p in reversed(parts) for k, v in p.output_classes}
        classes.update(node.output_classes)
        result = NodeTerms(
            tuple(x for x in ins if x not in internal),
            outputs,
            _union(own.generation, *(p.generation for p in parts)),
            _union(own.consumption, *(p.consumption for p in parts)),
            _union(own.inventories, *(p.inventories for p in parts)),
            tuple((x, classes[x]) for x in outputs if x in classes),
        )
        found[node.name] = result
        return result

    for node in nodes:
        resolve(node, ())
    return found


def _union(*groups: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(x for g in groups for x in g))
