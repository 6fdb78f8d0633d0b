"""Balances across gateways: nodes whose terms are streams and inventories of any gateway of
a site, judged by the ingest with the gateway's own engine (balance.nodes: windows,
tolerance, persistence, alarms, drift) on the gateways' totals records in the database.

Time here is the gateways' time: a node is judged up to where every one of its terms is
known (remote.py), stepping the engine on a fixed grid, so a window is judged only once the
records of every gateway it spans are in. A gateway that is silent or behind holds its
nodes back (the report says which and why); when its outbox delivers, they catch up. A
window's records go in with how far the node is judged, in one transaction.

One ingest judges a site at a time: the one holding the site's advisory lock. The others
stand by and take over when its connection ends. The engine's state (snapshots, the alarm's
on-delay) is rebuilt at start by judging again from a little before where the database says
the node was judged to; windows and events already stored are kept, not stored twice.
"""

from __future__ import annotations

import json
import logging
import math
import threading
from collections.abc import Callable
from typing import Any

import psycopg

from ..balance.nodes import NodeBalance
from ..balance.reconciler import Reconciler, SuspectEvent, log_suspect, suspect_body
from ..balance.terms import AlarmEvent, WindowResult, alarm_body, balance_body, log_event
from ..balance.windows import previous_boundary
from ..config.model import CALENDAR, NodeConfig, ReconciliationConfig
from ..config.nodes import node_terms
from ..core.records import utc
from .config import BalancesConfig
from .remote import RemoteInventory, RemoteStream, TotalsRow, load_gateway

log = logging.getLogger(__name__)

GRID = (1.0, 2.0, 3.0, 5.0, 10.0, 15.0, 20.0, 30.0, 60.0)  # s: divide a minute
LOAD_BEFORE = 3600.0  # s of totals read before a node's cursor (a totals interval at most)
LOAD_AHEAD = 86400.0  # s of totals read after it in one pass: a long backlog in steps
RETRY_MIN, RETRY_MAX = 1.0, 60.0  # s between tries after a database error; doubles


def grid_step(node: NodeConfig) -> float:
    """The step the engine is driven at: a divisor of a minute, so every node is judged at
    the same instants after a restart as before it (replayed windows then match the stored
    ones) and calendar boundaries fall on the grid."""
    wanted = min(node.evaluate_every, node.window) / 20
    return max((g for g in GRID if g <= wanted), default=GRID[0])


def _origin(node: NodeConfig) -> float:
    """A rolling node starts on a multiple of its evaluation interval, so that it judges at
    the same instants whenever it starts: a replay then meets the windows it stored."""
    step = grid_step(node)
    every = node.evaluate_every
    return every if node.window_kind != CALENDAR and every % step == 0 else step


def replay_from(node: NodeConfig, evaluated_to: float) -> float:
    """Where to start again so that the engine's state at `evaluated_to` is what it was."""
    memory = node.persistence + node.clear_after + node.evaluate_every
    if node.window_kind == CALENDAR:
        start = previous_boundary(evaluated_to - memory, node.calendar, node.timezone)
    else:
        start = evaluated_to - node.window * 1.2 - memory
    origin = _origin(node)
    return math.floor(start / origin) * origin - grid_step(node)  # first tick on the origin


NETWORK = "network"  # the reconciliation's name in site_progress and site_alarms

# Sends one result to the broker: (kind/node, the record's body). Given by the ingest when
# `balances.publish` is on; what it sends is already in the database.
Publish = Callable[[str, dict[str, Any]], None]


class _Node:
    def __init__(
        self,
        config: NodeConfig,
        balance: NodeBalance,
        terms: list[RemoteStream | RemoteInventory],
    ) -> None:
        self.config = config
        self.balance = balance
        self.terms = terms
        self.step = grid_step(config)
        self.cursor: float | None = None  # judged up to here (gateway time); None: not begun
        self.stored_to: float | None = None  # as the database says; later results are new
        self.waiting = ""


class SiteBalances:
    """The site's nodes, their remote terms, and the passes that judge them."""

    def __init__(self, config: BalancesConfig, publish: Publish | None = None) -> None:
        self.config = config
        self.publish = publish
        terms = node_terms(config.nodes)
        flows = {t for n in terms.values() for g in (n.inputs, n.outputs) for t in g}
        flows |= {t for n in terms.values() for g in (n.generation, n.consumption) for t in g}
        levels = {t for n in terms.values() for t in n.inventories}
        self.streams = {t: RemoteStream(t) for t in sorted(flows)}
        self.inventories = {t: RemoteInventory(t) for t in sorted(levels)}
        self.gateways = sorted({t.split("/")[0] for t in (*flows, *levels)})
        self.nodes = []
        for n in config.nodes:
            t = terms[n.name]
            flow = (*t.inputs, *t.outputs, *t.generation, *t.consumption)
            remote: list[RemoteStream | RemoteInventory] = [self.streams[x] for x in flow]
            remote += [self.inventories[x] for x in t.inventories]
            balance = NodeBalance(n, t, self.streams, self.inventories)
            self.nodes.append(_Node(n, balance, remote))
        self.network: _Network | None = None
        if config.reconciliation is not None:
            reconciler = Reconciler(
                config.reconciliation, config.nodes, terms, self.streams, self.inventories
            )
            remote = [self.streams[x] for x in reconciler.streams]
            remote += [self.inventories[x] for n in config.nodes for x in terms[n.name].inventories
                       if not n.nodes]  # fmt: skip
            self.network = _Network(config.reconciliation, reconciler, remote)
        self.begun = False

    # --- one pass -------------------------------------------------------------------------

    def begin(self, conn: psycopg.Connection[Any]) -> None:
        """Take up where the database says each node was judged to."""
        rows = conn.execute(
            "SELECT node, extract(epoch FROM evaluated_to) FROM massgate.site_progress "
            "WHERE site = %s AND evaluated_to IS NOT NULL",
            (self.config.site,),
        ).fetchall()
        done = {str(node): float(at) for node, at in rows}
        for node in self.nodes:
            if node.config.name in done:
                node.stored_to = done[node.config.name]
                node.cursor = replay_from(node.config, node.stored_to)
        if self.network is not None and NETWORK in done:
            self.network.begin(done[NETWORK])
        self.begun = True

    def load(self, conn: psycopg.Connection[Any]) -> None:
        """Read the totals the nodes need next and rebuild their terms' timelines."""
        cursors = [n.cursor for n in self.nodes]
        cursors += [self.network.cursor] if self.network is not None else []
        since = min((c for c in cursors if c is not None), default=None)
        for gateway in self.gateways:
            newest, rows = _totals(conn, self.config.site, gateway, since)
            prefix = f"{gateway}/"
            load_gateway(
                gateway,
                rows,
                {t[len(prefix) :]: s for t, s in self.streams.items() if t.startswith(prefix)},
                {t[len(prefix) :]: v for t, v in self.inventories.items() if t.startswith(prefix)},
                wait_for_missing=self.config.wait_for_missing,
                newest=newest,
            )

    def judge(self) -> tuple[list[WindowResult], list[AlarmEvent]]:
        """Step each node up to where all its terms are known; the windows and events that
        are new (past what the database holds)."""
        results: list[WindowResult] = []
        events: list[AlarmEvent] = []
        for node in self.nodes:
            terms = node.terms
            known = min((t.known_until for t in terms), default=-math.inf)
            if node.cursor is None:
                first = max((t.first_known for t in terms), default=math.inf)
                if not math.isfinite(first) or first > known:
                    node.waiting = _waiting(terms, known)
                    continue
                origin = _origin(node.config)
                node.cursor = math.ceil(first / origin) * origin - node.step
            t = node.cursor
            while t + node.step <= known:
                t += node.step
                closed, found = node.balance.tick(t, t)
                new = node.stored_to is None or t > node.stored_to
                if new:
                    results += closed
                    events += found
            node.cursor = t
            node.waiting = _waiting(terms, known)
        return results, events

    def reconcile(self) -> tuple[list[tuple[float, dict[str, Any]]], list[SuspectEvent]]:
        """The network's reconciliations (window end, record) and suspect events that are new."""
        if self.network is None:
            return [], []
        return self.network.step()

    def write(
        self,
        conn: psycopg.Connection[Any],
        results: list[WindowResult],
        events: list[AlarmEvent],
        reconciled: tuple[list[tuple[float, dict[str, Any]]], list[SuspectEvent]] = ([], []),
    ) -> None:
        site = self.config.site
        records, suspects = reconciled
        # Each record's body made once: for the database, the log and the broker.
        windows = [(r, balance_body(r)) for r in results]
        alarms: list[tuple[str, AlarmEvent | SuspectEvent, dict[str, Any]]] = [
            (e.node, e, alarm_body(e)) for e in events
        ]
        alarms += [(NETWORK, s, suspect_body(s)) for s in suspects]
        progress = [(site, n.config.name, n.cursor, n.waiting or None) for n in self.nodes]
        if self.network is not None:
            progress.append((site, NETWORK, self.network.cursor, self.network.waiting or None))
        with conn.transaction(), conn.cursor() as cur:
            if records:
                cur.executemany(
                    "INSERT INTO massgate.site_reconciliations (site, window_end, window_start, "
                    "passed, payload) VALUES (%s, %s, %s, %s, %s) ON CONFLICT DO NOTHING",
                    [
                        (
                            site,
                            body["window_end"],
                            body["window_start"],
                            body["global_test"]["passed"],
                            _json(body),
                        )
                        for _, body in records
                    ],
                )
            if windows:
                cur.executemany(
                    "INSERT INTO massgate.site_balances (site, node, window_end, window_start, "
                    "status, payload) VALUES (%s, %s, to_timestamp(%s), to_timestamp(%s), %s, "
                    "%s) ON CONFLICT DO NOTHING",
                    [
                        (site, r.node, r.end_wall, r.start_wall, r.status, _json(body))
                        for r, body in windows
                    ],
                )
            if alarms:
                cur.executemany(
                    "INSERT INTO massgate.site_alarms (site, node, event, at, since, hint, "
                    "payload) VALUES (%s, %s, %s, to_timestamp(%s), to_timestamp(%s), %s, %s) "
                    "ON CONFLICT DO NOTHING",
                    [
                        (site, where, e.event, e.wall, e.since_wall, body["hint"], _json(body))
                        for where, e, body in alarms
                    ],
                )
            cur.executemany(
                "INSERT INTO massgate.site_progress AS p (site, node, evaluated_to, waiting) "
                "VALUES (%s, %s, to_timestamp(%s), %s) ON CONFLICT (site, node) DO UPDATE SET "
                "evaluated_to = excluded.evaluated_to, waiting = excluded.waiting, "
                "updated_at = now()",
                progress,
            )
        if self.network is not None:
            self.network.stored()
        for node in self.nodes:
            if node.cursor is not None and (node.stored_to is None or node.cursor > node.stored_to):
                node.stored_to = node.cursor
        for event in events:
            log_event(log, event, f"site {site} node")
        for suspect in suspects:
            log_suspect(log, suspect, f"site {site} reconciliation")
        if self.publish is not None:  # after the commit: only what is stored goes out
            for r, body in windows:
                self.publish(f"balance/{r.node}", body)
            for where, _, body in alarms:
                self.publish(f"alarm/{where}", body)
            for _, body in records:
                self.publish(f"reconciliation/{NETWORK}", body)

    def run_pass(self, conn: psycopg.Connection[Any]) -> int:
        """Judge what has arrived; returns the windows stored."""
        if not self.begun:
            self.begin(conn)
        self.load(conn)
        results, events = self.judge()
        self.write(conn, results, events, self.reconcile())
        return len(results)


class _Network:
    """The reconciliation of the innermost nodes' network, stepped like a node: at multiples
    of its interval, up to where every term of the network is known."""

    def __init__(
        self,
        config: ReconciliationConfig,
        reconciler: Reconciler,
        terms: list[RemoteStream | RemoteInventory],
    ) -> None:
        self.config = config
        self.reconciler = reconciler
        self.terms = terms
        self.cursor: float | None = None
        self.stored_to: float | None = None
        self.waiting = ""

    def begin(self, evaluated_to: float) -> None:
        every = self.config.every
        memory = self.config.window + every * (self.config.confirm + 1)
        self.stored_to = evaluated_to
        self.cursor = math.floor((evaluated_to - memory) / every) * every - every

    def step(self) -> tuple[list[tuple[float, dict[str, Any]]], list[SuspectEvent]]:
        every = self.config.every
        known = min((t.known_until for t in self.terms), default=-math.inf)
        self.waiting = _waiting(self.terms, known)
        if self.cursor is None:
            first = max((t.first_known for t in self.terms), default=math.inf)
            if not math.isfinite(first) or first > known:
                return [], []
            self.cursor = math.ceil(first / every) * every - every
        records: list[tuple[float, dict[str, Any]]] = []
        events: list[SuspectEvent] = []
        t = self.cursor
        while t + every <= known:
            t += every
            body, found = self.reconciler.tick(t, t)
            if self.stored_to is None or t > self.stored_to:
                records += [(t, body)] if body is not None else []
                events += found
        self.cursor = t
        return records, events

    def stored(self) -> None:
        if self.cursor is not None and (self.stored_to is None or self.cursor > self.stored_to):
            self.stored_to = self.cursor


def _totals(
    conn: psycopg.Connection[Any], site: str, gateway: str, since: float | None
) -> tuple[float, list[TotalsRow]]:
    newest_row = conn.execute(
        "SELECT extract(epoch FROM max(created)) FROM massgate.records "
        "WHERE kind = 'totals' AND site = %s AND gateway = %s",
        (site, gateway),
    ).fetchone()
    newest = float(newest_row[0]) if newest_row and newest_row[0] is not None else -math.inf
    if since is None:
        # Not begun: from a day before the newest totals (a new node starts near the present).
        low, high = newest - LOAD_AHEAD, newest
    else:
        low, high = since - LOAD_BEFORE, since + LOAD_AHEAD
    rows = conn.execute(
        "SELECT epoch, seq, extract(epoch FROM created), payload->'streams', "
        "payload->'inventories' FROM massgate.records WHERE kind = 'totals' AND site = %s "
        "AND gateway = %s AND created >= to_timestamp(%s) AND created <= to_timestamp(%s) "
        "ORDER BY epoch, seq",
        (site, gateway, max(low, 0.0), high),
    ).fetchall()
    return newest, [
        TotalsRow(
            str(epoch),
            int(seq),
            float(created),
            streams if isinstance(streams, list) else [],
            inventories if isinstance(inventories, list) else [],
        )
        for epoch, seq, created, streams, inventories in rows
        if created is not None
    ]


def _waiting(terms: list[RemoteStream | RemoteInventory], known: float) -> str:
    """What holds the node back: the term known least far, and why."""
    if not terms:
        return ""
    last = min(terms, key=lambda t: t.known_until)
    why = last.waiting if isinstance(last, RemoteStream) else ""
    if why:
        return f"{last.name}: {why}"
    if not math.isfinite(known):
        return f"{last.name}: no totals yet"
    return f"{last.name}: known up to {utc(known)}"


def _json(body: dict[str, Any]) -> str:
    return json.dumps(body, allow_nan=False)


def run(
    config: BalancesConfig,
    url: str,
    password: str | None,
    stop: threading.Event,
    publish: Publish | None = None,
) -> None:
    """Judge the site's nodes every `config.every` until `stop`, while holding the site's
    lock; a database error starts over from what the database holds."""
    retry = RETRY_MIN
    standing_by = False
    while not stop.is_set():
        try:
            with psycopg.connect(url, password=password, connect_timeout=10) as conn:
                conn.autocommit = True
                site = SiteBalances(config, publish)
                held = False  # the lock is the session's: taken once, freed with it
                while not stop.is_set():
                    if not held:
                        got = conn.execute(
                            "SELECT pg_try_advisory_lock(hashtext('massgate.site.' || %s))",
                            (config.site,),
                        ).fetchone()
                        held = bool(got and got[0])
                    if held:
                        if standing_by:
                            log.info("site %s: this ingest now judges its balances", config.site)
                        standing_by = False
                        site.run_pass(conn)
                        retry = RETRY_MIN
                    elif not standing_by:
                        standing_by = True
                        log.info(
                            "site %s: another ingest judges its balances; this one stands by",
                            config.site,
                        )
                    stop.wait(config.every)
        except psycopg.Error as exc:
            log.warning(
                "site %s balances: database error (%s); trying again in %.0f s",
                config.site,
                str(exc).strip(),
                retry,
            )
            stop.wait(retry)
            retry = min(retry * 2, RETRY_MAX)
        except Exception:
            # Never a judge that ends quietly while the ingest stores on: said with its
            # traceback, and started over from what the database holds.
            log.exception(
                "site %s balances: judging failed; trying again in %.0f s", config.site, retry
            )
            stop.wait(retry)
            retry = min(retry * 2, RETRY_MAX)
