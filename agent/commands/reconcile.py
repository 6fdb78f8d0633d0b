"""`massgate reconcile`: the balance engine's reconciliation on a historian export, offline.

The network file names the nodes and the streams between them, each stream with its
standard uncertainty (`sigma`, in the data's unit) or its meter's rated accuracy (relative,
≈2σ as data sheets state it); a stream with neither is unmeasured. `correlations` lists
pairs of meters whose errors are correlated (a shared density or temperature), each with
its correlation coefficient. A node that holds
inventory gets a stream out of it for its accumulation, measured as Δinventory. The data file
is a CSV with one column per stream (any other column is an error, except one label column
named `time`, `timestamp` or `row`); each row is one data set, and an empty cell is a stream
not measured in that row (so is a zero reading of a stream given by relative accuracy: it has
no uncertainty to weigh it by).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from statistics import NormalDist
from typing import Any

from ..balance import reconcile as rc
from ..config.nodes import parse_correlations
from ..core import units
from ..core.yamlsource import (
    ConfigError,
    Invalid,
    Problem,
    Report,
    Section,
    YamlSeq,
    load_file,
    name,
    number,
    quantity,
)

EXIT_OK = 0
EXIT_GROSS_ERROR = 1  # at least one data set failed the global test
EXIT_BAD_INPUT = 2

LABELS = ("time", "timestamp", "row")


@dataclass(frozen=True, slots=True)
class NetworkFile:
    network: rc.Network
    sigma: dict[str, float]  # absolute σ per stream
    accuracy: dict[str, float]  # relative rated accuracy per stream
    alpha: float
    nominal: dict[str, float]  # what a meter usually reads, for --detectability
    # Correlation coefficients between two meters' errors (a shared density or temperature).
    correlations: dict[tuple[str, str], float]

    def covariances(self, sigmas: dict[str, float]) -> dict[tuple[str, str], float]:
        """This row's covariances: ρ·σa·σb for the pairs whose two meters read."""
        return {
            (a, b): rho * sigmas[a] * sigmas[b]
            for (a, b), rho in self.correlations.items()
            if a in sigmas and b in sigmas
        }


def _node_names(value: Any) -> tuple[str, ...]:
    if not isinstance(value, YamlSeq) or not value:
        raise Invalid("expected a list of node names")
    found = tuple(name(v) for v in value)
    if len(set(found)) != len(found):
        raise Invalid("node names must be unique")
    return found


def load_network(path: Path) -> NetworkFile:
    data = load_file(path)
    report = Report(str(path))
    top = Section(data, path="", report=report, line=1)
    nodes = top.take("nodes", _node_names)
    alpha = top.take("alpha", quantity(units.FRACTION, positive=True), 0.05)
    streams: list[rc.Stream] = []
    sigma: dict[str, float] = {}
    accuracy: dict[str, float] = {}
    nominal: dict[str, float] = {}
    known = set(nodes or ())
    for s in top.sections("streams", required=True):
        stream_name = s.take("name", name)
        ends = [s.take(key, name, None) for key in ("from", "to")]
        abs_sigma = s.take("sigma", number, None)
        rel = s.take("accuracy", quantity(units.FRACTION, positive=True), None)
        usual = s.take("nominal", number, None)
        s.finish()
        for key, end in zip(("from", "to"), ends, strict=True):
            if end is not None and end not in known:
                s.fail(key, f"no node named '{end}' in 'nodes'")
        if ends == [None, None]:
            s.fail(None, "a stream needs 'from', 'to' or both")
        if abs_sigma is not None and rel is not None:
            s.fail("accuracy", "give 'sigma' or 'accuracy', not both")
        if abs_sigma is not None and not (math.isfinite(abs_sigma) and abs_sigma > 0):
            s.fail("sigma", "must be a number above zero")
        if stream_name in (x.name for x in streams):
            s.fail("name", f"a stream named '{stream_name}' is already defined")
        if not s.ok or stream_name is None:
            continue
        streams.append(rc.Stream(stream_name, ends[0], ends[1]))
        if abs_sigma is not None:
            sigma[stream_name] = abs_sigma
        if rel is not None:
            accuracy[stream_name] = rel
        if usual is not None:
            nominal[stream_name] = usual
    correlations = parse_correlations(top.sections("correlations"), set(sigma) | set(accuracy))
    top.finish()
    report.raise_if_any()
    try:
        network = rc.Network(nodes, tuple(streams))
    except ValueError as exc:
        report.add(1, "", str(exc))
        report.raise_if_any()
        raise
    return NetworkFile(network, sigma, accuracy, alpha, nominal, correlations)


@dataclass(frozen=True, slots=True)
class Row:
    label: str
    line: int
    values: dict[str, float]


def load_data(path: Path, network: rc.Network) -> list[Row]:
    """Rows of the CSV; every problem is reported as file:line like the YAML files."""
    report = Report(str(path))
    streams = {s.name for s in network.streams}
    rows: list[Row] = []
    try:
        handle = path.open(newline="", encoding="utf-8-sig")
    except OSError as exc:
        raise ConfigError([_problem(path, 0, f"cannot read: {exc.strerror or exc}")]) from None
    with handle:
        reader = csv.reader(handle)
        header = next(reader, None)
        if not header:
            raise ConfigError([_problem(path, 1, "the file is empty; expected a header row")])
        header = [h.strip() for h in header]
        label_col = next((i for i, h in enumerate(header) if h.lower() in LABELS), None)
        columns = {i: h for i, h in enumerate(header) if i != label_col}
        unknown = [h for h in columns.values() if h not in streams]
        if unknown:
            report.add(
                1,
                "",
                f"column(s) {', '.join(repr(u) for u in unknown)} name no stream of the "
                f"network (streams: {', '.join(sorted(streams))})",
            )
        if not any(h in streams for h in columns.values()):
            report.add(1, "", "no column names a stream of the network")
        report.raise_if_any()
        for line, cells in enumerate(reader, start=2):
            if not any(c.strip() for c in cells):
                continue
            if len(cells) != len(header):
                report.add(line, "", f"{len(cells)} cells where the header has {len(header)}")
                continue
            values: dict[str, float] = {}
            for i, h in columns.items():
                cell = cells[i].strip()
                if not cell:
                    continue
                try:
                    value = float(cell)
                except ValueError:
                    report.add(line, h, f"'{cell}' is not a number")
                    continue
                if not math.isfinite(value):
                    report.add(line, h, f"'{cell}' is not a finite number")
                    continue
                values[h] = value
            label = cells[label_col].strip() if label_col is not None else str(line - 1)
            rows.append(Row(label, line, values))
    if not rows and not report.problems:
        report.add(1, "", "no data rows after the header")
    report.raise_if_any()
    return rows


def _problem(path: Path, line: int, message: str) -> Problem:
    return Problem(str(path), line, "", message)


def sigmas_for(net: NetworkFile, values: dict[str, float]) -> dict[str, float]:
    found = dict(net.sigma)
    for stream, accuracy in net.accuracy.items():
        if stream in values:
            found[stream] = rc.sigma_from_accuracy(values[stream], accuracy)
    return {k: v for k, v in found.items() if k in values and v > 0}


def _num(value: float) -> float | None:
    return None if not math.isfinite(value) else value


def as_json(
    label: str,
    plain: rc.Reconciliation,
    final: rc.Reconciliation,
    robust: tuple[str, rc.Reconciliation] | None = None,
) -> dict[str, Any]:
    z = NormalDist().inv_cdf(1 - plain.alpha / 2)
    document = {
        "row": label,
        "global_test": {
            "statistic": plain.statistic,
            "dof": plain.dof,
            "critical": plain.critical,
            "p_value": plain.p_value,
            "passed": plain.passed,
        },
        "measurement_test_critical": _num(plain.test_critical),
        "streams": [
            {
                "stream": s.name,
                "measured": _num(s.measured),
                "sigma": _num(s.sigma),
                "reconciled": _num(s.reconciled),
                "interval": _num(z * s.reconciled_sigma),
                "class": s.classification,
                "measurement_test": _num(s.adjustment_test),
                "suspect": math.isfinite(s.adjustment_test)
                and s.adjustment_test > plain.test_critical,
            }
            for s in plain.streams
        ],
        "gross_errors": [
            {
                "kind": e.kind,
                "where": e.where,
                "size": e.size,
                "statistic": e.statistic,
                "indistinguishable_from": [{"kind": k, "where": w} for k, w in e.alternatives],
            }
            for e in final.gross_errors
        ],
        "after_elimination": {
            "statistic": final.statistic,
            "dof": final.dof,
            "passed": final.passed,
            "streams": {s.name: _num(s.reconciled) for s in final.streams},
        },
    }
    if robust is not None:
        estimator, result = robust
        document["robust"] = {
            "estimator": estimator,
            "converged": not result.unconverged,
            "streams": {s.name: _num(s.reconciled) for s in result.streams},
        }
    return document


def _fmt(value: float, width: int = 11, digits: int = 4) -> str:
    if not math.isfinite(value):
        return "—".rjust(width)
    return f"{value:{width}.{digits}f}"


def as_table(
    label: str,
    plain: rc.Reconciliation,
    final: rc.Reconciliation,
    robust: tuple[str, rc.Reconciliation] | None = None,
) -> str:
    z = NormalDist().inv_cdf(1 - plain.alpha / 2)
    level = f"{1 - plain.alpha:.0%}"
    verdict = "passed" if plain.passed else "FAILED"
    lines = [
        f"data set {label}: global test γ = {plain.statistic:.3f} against χ²({plain.dof}) "
        f"{level} = {plain.critical:.3f}: {verdict} (p = {plain.p_value:.3g})",
        f"{'stream':<14}{'measured':>11}{'σ':>11}{'reconciled':>11}{'±' + level:>11}"
        f"{'MT z':>8}  class",
    ]
    for s in plain.streams:
        flag = (
            "  ← suspect"
            if math.isfinite(s.adjustment_test) and s.adjustment_test > plain.test_critical
            else ""
        )
        lines.append(
            f"{s.name:<14}{_fmt(s.measured)}{_fmt(s.sigma)}{_fmt(s.reconciled)}"
            f"{_fmt(z * s.reconciled_sigma)}{_fmt(s.adjustment_test, 8, 2)}  "
            f"{s.classification}{flag}"
        )
    if math.isfinite(plain.test_critical):
        lines.append(f"measurement test critical z = {plain.test_critical:.3f} (Šidák)")
    for i, e in enumerate(final.gross_errors, start=1):
        lines.append(f"gross error {i}: {e.describe()} (GLR T = {e.statistic:.2f})")
    if final.gross_errors:
        after = "passes" if final.passed else "still fails"
        lines.append(
            f"without them the global test {after}: γ = {final.statistic:.3f}, dof {final.dof}"
        )
    elif not plain.passed:
        lines.append("no single meter or leak explains the failure")
    if robust is not None:
        estimator, result = robust
        note = "" if not result.unconverged else " (did not converge)"
        lines.append(f"{estimator} estimate{note}, each gross error's pull bounded:")
        lines += [
            f"{s.name:<14}{_fmt(s.measured)}{'':>11}{_fmt(s.reconciled)}" for s in result.streams
        ]
    return "\n".join(lines)


def setup(p: argparse.ArgumentParser) -> None:
    p.description = (
        "Reconcile every row of DATA (a CSV, one column per stream) against the balances "
        "of NETWORK (YAML: nodes, and streams with from/to and sigma or accuracy). "
        "Prints reconciled values with confidence intervals, each stream's class "
        "(redundant, non-redundant, observable, unobservable), the global chi-square "
        "test, the measurement test, and the gross errors serial elimination finds (a "
        "biased meter or a leaking node, with its size); with --estimator huber or fair, "
        "also the robust estimate, on which a gross error pulls with a bounded force "
        "instead of being smeared over its neighbours. With --detectability and no data: "
        "the smallest bias of each meter and leak at each node that the tests detect with "
        "--power, from the network and the accuracies alone (a meter given by relative "
        "accuracy needs its 'nominal' flow in the network, or --data for it). The network may "
        "list correlations between two meters' errors (streams: [a, b], correlation: r). "
        "Exit status: "
        "0 when every row passes the global test, 1 when a row fails it, 2 for a bad file."
    )
    p.add_argument("--network", required=True, metavar="NET.yaml", help="the node network")
    p.add_argument(
        "--data",
        metavar="DATA.csv",
        help="the measurements (with --detectability: only for the usual flows of meters "
        "given by relative accuracy and no 'nominal')",
    )
    p.add_argument(
        "--detectability",
        action="store_true",
        help="before any data: the smallest bias of each meter and leak at each node that "
        "the tests detect with --power, and which cannot be told apart",
    )
    p.add_argument(
        "--power",
        type=float,
        default=0.9,
        metavar="P",
        help="with --detectability: the chance of detecting it (default 0.9)",
    )
    p.add_argument("--json", action="store_true", help="one JSON document instead of tables")
    p.add_argument(
        "--alpha",
        type=float,
        metavar="P",
        help="significance level of the tests (default: the network's, else 0.05)",
    )
    p.add_argument(
        "--estimator",
        choices=rc.ESTIMATORS,
        default=rc.WLS,
        help="wls (default): weighted least squares only; huber or fair: also the robust "
        "M-estimate (tuning 1.345 and 1.3998: 95 %% of WLS's efficiency on Gaussian errors)",
    )
    p.add_argument(
        "--no-leaks",
        action="store_true",
        help="consider biased meters only, not leaks at nodes",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.data is None and not args.detectability:
        return _bad("--data is required (unless --detectability)")
    if not 0 < args.power < 1:
        return _bad(f"--power is a probability between 0 and 1, got {args.power}")
    try:
        net = load_network(Path(args.network))
        rows = [] if args.data is None else load_data(Path(args.data), net.network)
    except ConfigError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        return EXIT_BAD_INPUT
    alpha = args.alpha if args.alpha is not None else net.alpha
    if not 0 < alpha < 1:
        print(f"--alpha must be between 0 and 1, got {alpha}", file=sys.stderr)
        return EXIT_BAD_INPUT
    if args.detectability:
        return detect(net, rows, alpha=alpha, power=args.power, args=args)
    documents = []
    failed = False
    if net.correlations and args.estimator != rc.WLS:
        return _bad(
            "the robust estimators take independent errors: --estimator huber or fair cannot "
            "use the network's correlations"
        )
    for i, row in enumerate(rows):
        try:
            sigmas = sigmas_for(net, row.values)
            plain, final = rc.diagnose(
                net.network,
                row.values,
                sigmas,
                alpha=alpha,
                leaks=not args.no_leaks,
                covariances=net.covariances(sigmas),
            )
            robust = (
                None
                if args.estimator == rc.WLS
                else (
                    args.estimator,
                    rc.robust(
                        net.network,
                        row.values,
                        sigmas_for(net, row.values),
                        estimator=args.estimator,
                        alpha=alpha,
                    ),
                )
            )
        except ValueError as exc:
            print(f"{args.data}:{row.line}: {exc}", file=sys.stderr)
            return EXIT_BAD_INPUT
        failed |= not plain.passed
        if args.json:
            documents.append(as_json(row.label, plain, final, robust))
        else:
            if i:
                print()
            print(as_table(row.label, plain, final, robust))
    if args.json:
        json.dump(documents, sys.stdout, indent=2, ensure_ascii=False)
        print()
    return EXIT_GROSS_ERROR if failed else EXIT_OK


def _bad(message: str) -> int:
    print(f"massgate reconcile: error: {message} (see massgate reconcile --help)", file=sys.stderr)
    return EXIT_BAD_INPUT


def detect(
    net: NetworkFile, rows: list[Row], *, alpha: float, power: float, args: argparse.Namespace
) -> int:
    """--detectability: what the network and the meters' accuracies can find, before data."""
    usual = dict(net.nominal)
    for stream in net.accuracy:
        seen = [r.values[stream] for r in rows if stream in r.values]
        if stream not in usual and seen:
            usual[stream] = sum(seen) / len(seen)  # the data's mean, as its usual flow
    sigmas = dict(net.sigma)
    for stream, accuracy in net.accuracy.items():
        if stream not in usual:
            return _bad(
                f"stream {stream} is given by its relative accuracy: give its usual flow as "
                "'nominal' in the network, or --data"
            )
        sigmas[stream] = rc.sigma_from_accuracy(usual[stream], accuracy)
    found = rc.detectability(
        net.network,
        sigmas,
        alpha=alpha,
        power=power,
        leaks=not args.no_leaks,
        covariances=net.covariances(sigmas),
    )
    tests = sum(1 for d in found if math.isfinite(d.smallest))
    z = rc.sidak_z(alpha, tests)

    def entry(d: rc.Detectable) -> dict[str, Any]:
        size = d.smallest if math.isfinite(d.smallest) else None
        out: dict[str, Any] = {"kind": d.kind, "where": d.where, "smallest": size}
        if d.kind == rc.BIAS:
            out["sigma"] = sigmas[d.where]
            nominal = usual.get(d.where)
            out["relative"] = size / abs(nominal) if size is not None and nominal else None
        out["cannot_be_told_from"] = [{"kind": k, "where": w} for k, w in d.alternatives]
        return out

    document = {
        "alpha": alpha,
        "power": power,
        "test_z": z,
        "meters": [entry(d) for d in found if d.kind == rc.BIAS],
        "nodes": [entry(d) for d in found if d.kind == rc.LEAK],
    }
    if args.json:
        json.dump(document, sys.stdout, indent=2, ensure_ascii=False)
        print()
        return EXIT_OK
    print(
        f"detectability: found with {power:.0%} power, each suspect tested at |z| > {z:.3f} "
        f"(alpha {alpha:g} over {tests} tests, as serial elimination tests them)"
    )
    width = max(len(d.where) for d in found) if found else 5
    for title, key, what in (("meter", "meters", "bias"), ("node", "nodes", "leak")):
        entries: list[dict[str, Any]] = document[key]  # type: ignore[assignment]
        if not entries:
            continue
        print(f"\n{title:<{width}}  {'smallest ' + what:>14}  cannot be told from")
        for e in entries:
            if e["smallest"] is None:
                size = "not detectable"
            else:
                size = f"{e['smallest']:.4g}"
                if e.get("relative") is not None:
                    size += f" ({e['relative']:.1%})"
            others = ", ".join(f"{o['kind']} at {o['where']}" for o in e["cannot_be_told_from"])
            print(f"{e['where']:<{width}}  {size:>14}  {others}".rstrip())
    return EXIT_OK
