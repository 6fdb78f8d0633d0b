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

A record given up as lost (remote.Gap, kept in `site_gaps`) may still arrive: a gateway's
outbox can hold a week. Then the nodes with a term on that gateway are judged again from the
gap's start (`site_progress.revise_after`, so a restart midway goes on with it), and each
window or reconciliation that comes out different is revised in place: the new payload, the
one it replaces in `superseded`, and `revised_at`; logged, and published when asked.
"""

from __future__ import annotations

import json
import logging
import math
import threading
from collections.abc import Callable
from typing import Any, NamedTuple

import psycopg

from ..balance.nodes import NodeBalance
from ..balance.reconciler import Reconciler, SuspectEvent, log_suspect, suspect_body
from ..balance.terms import AlarmEvent, WindowResult, alarm_body, balance_body, log_event
from ..balance.windows import previous_boundary
from ..config.model import CALENDAR, NodeConfig, ReconciliationConfig
from ..config.nodes import node_terms
from ..core.records import utc
from .config import BalancesConfig
from .remote import Gap, RemoteInventory, RemoteStream, TotalsRow, load_gateway

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
        self.revise_after: float | None = None  # results after this, up to stored_to: revised
        self.waiting = ""


def _new_or_revised(t: float, stored_to: float | None, revise_after: float | None) -> str:
    """What a result judged at `t` is: "new" (past what is stored), "revised" (judged again
    over a late record), or "" (stored already and unchanged: a replay's)."""
    if stored_to is None or t > stored_to:
        return "new"
    if revise_after is not None and t > revise_after:
        return "revised"
    return ""


class _Judged(NamedTuple):
    windows: list[WindowResult]  # new
    revised: list[WindowResult]  # judged again: stored only if different
    events: list[AlarmEvent]  # stored once (an event judged again meets itself)


class _Reconciled(NamedTuple):
    records: list[tuple[float, dict[str, Any]]]  # (window end, record), new
    revised: list[tuple[float, dict[str, Any]]]
    suspects: list[SuspectEvent]


class SiteBalances:
    """The site's nodes, their remote terms, and the passes that judge them."""

    def __init__(self, config: BalancesConfig, publish: Publish | None = None) -> None:
        self.config = config
        self.publish = publish
        # The breaks the last load took as lost: (gateway, epoch, after, before) -> Gap.
        self.gaps: dict[tuple[str, str, int, int], Gap] = {}
        self._build()

    def _build(self) -> None:
        """Fresh engines and timelines: `begin` then takes up from the database."""
        config = self.config
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
        """Take up where the database says each node was judged to (and, when a late record
        re-opened it, from where it is to be judged again)."""
        rows = conn.execute(
            "SELECT node, extract(epoch FROM evaluated_to), extract(epoch FROM judged_to), "
            "extract(epoch FROM revise_after) FROM massgate.site_progress "
            "WHERE site = %s AND evaluated_to IS NOT NULL",
            (self.config.site,),
        ).fetchall()
        done = {
            str(node): (
                max(float(at), float(judged) if judged is not None else -math.inf),
                float(revise) if revise is not None else None,
            )
            for node, at, judged, revise in rows
        }
        for node in self.nodes:
            if node.config.name in done:
                node.stored_to, node.revise_after = done[node.config.name]
                since = node.revise_after if node.revise_after is not None else node.stored_to
                node.cursor = replay_from(node.config, min(since, node.stored_to))
        if self.network is not None and NETWORK in done:
            self.network.begin(*done[NETWORK])
        self.begun = True

    def reopen(self, conn: psycopg.Connection[Any]) -> bool:
        """Whether a record given up as lost has arrived since; if so, the nodes (and the
        network) with a term on its gateway are to be judged again from the gap's start,
        as the database now says, and the engines are made afresh to do it."""
        filled = conn.execute(
            "SELECT g.gateway, g.epoch, g.after_seq, g.before_seq, "
            "extract(epoch FROM g.gap_start) FROM massgate.site_gaps g "
            "WHERE g.site = %s AND g.filled_at IS NULL AND EXISTS (SELECT 1 "
            "FROM massgate.records r WHERE r.site = g.site AND r.gateway = g.gateway "
            "AND r.epoch = g.epoch AND r.seq > g.after_seq AND r.seq < g.before_seq "
            "AND r.kind = 'totals')",
            (self.config.site,),
        ).fetchall()
        if not filled:
            return False
        site = self.config.site
        with conn.transaction(), conn.cursor() as cur:
            for gateway, epoch, after, before, start in filled:
                names = [n.config.name for n in self.nodes if _on(gateway, n.terms)]
                if self.network is not None and _on(gateway, self.network.terms):
                    names.append(NETWORK)
                cur.execute(
                    "UPDATE massgate.site_gaps SET filled_at = now() WHERE site = %s AND "
                    "gateway = %s AND epoch = %s AND after_seq = %s AND before_seq = %s",
                    (site, gateway, epoch, after, before),
                )
                # LEAST passes over a NULL: the earliest start of the gaps filled so far.
                cur.execute(
                    "UPDATE massgate.site_progress SET revise_after = "
                    "LEAST(revise_after, to_timestamp(%s)) WHERE site = %s AND node = ANY(%s) "
                    "AND greatest(judged_to, evaluated_to) > to_timestamp(%s)",
                    (float(start), site, names, float(start)),
                )
                log.info(
                    "site %s: totals of %s taken as lost (epoch %s, between seq %d and %d) "
                    "have arrived; judging %s again from %s",
                    site,
                    gateway,
                    epoch,
                    after,
                    before,
                    ", ".join(names) or "nothing",
                    utc(float(start)),
                )
        self._build()
        return True

    def load(self, conn: psycopg.Connection[Any]) -> None:
        """Read the totals the nodes need next and rebuild their terms' timelines."""
        cursors = [n.cursor for n in self.nodes]
        cursors += [self.network.cursor] if self.network is not None else []
        since = min((c for c in cursors if c is not None), default=None)
        self.gaps = {}
        for gateway in self.gateways:
            newest, rows = _totals(conn, self.config.site, gateway, since)
            prefix = f"{gateway}/"
            found: set[Gap] = set()
            load_gateway(
                gateway,
                rows,
                {t[len(prefix) :]: s for t, s in self.streams.items() if t.startswith(prefix)},
                {t[len(prefix) :]: v for t, v in self.inventories.items() if t.startswith(prefix)},
                wait_for_missing=self.config.wait_for_missing,
                newest=newest,
                gaps=found,
            )
            # One gap per break: each stream tells it, from where that stream was known.
            for gap in sorted(found, key=lambda g: g.start):
                self.gaps.setdefault((gateway, gap.epoch, gap.after_seq, gap.before_seq), gap)

    def judge(self) -> _Judged:
        """Step each node up to where all its terms are known; the windows and events that
        are new (past what the database holds) or judged again."""
        judged = _Judged([], [], [])
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
                what = _new_or_revised(t, node.stored_to, node.revise_after)
                if what:
                    (judged.windows if what == "new" else judged.revised).extend(closed)
                    judged.events.extend(found)
            node.cursor = t
            if node.stored_to is not None and t >= node.stored_to:
                node.revise_after = None  # judged again up to where it was: done
            node.waiting = _waiting(terms, known)
        return judged

    def reconcile(self) -> _Reconciled:
        """The network's reconciliations (window end, record) and suspect events that are new
        or judged again."""
        if self.network is None:
            return _Reconciled([], [], [])
        return self.network.step()

    def write(
        self,
        conn: psycopg.Connection[Any],
        judged: _Judged,
        reconciled: _Reconciled | None = None,
    ) -> None:
        site = self.config.site
        reconciled = reconciled or _Reconciled([], [], [])
        # Each record's body made once: for the database, the log and the broker.
        windows = [(r, balance_body(r)) for r in judged.windows]
        alarms: list[tuple[str, AlarmEvent | SuspectEvent, dict[str, Any]]] = [
            (e.node, e, alarm_body(e)) for e in judged.events
        ]
        alarms += [(NETWORK, s, suspect_body(s)) for s in reconciled.suspects]
        progress = [self._progress(n.config.name, n) for n in self.nodes]
        if self.network is not None:
            progress.append(self._progress(NETWORK, self.network))
        revised: list[tuple[str, dict[str, Any]]] = []  # (topic's kind/node, body)
        stored_alarms: list[tuple[str, AlarmEvent | SuspectEvent, dict[str, Any]]] = []
        with conn.transaction(), conn.cursor() as cur:
            if reconciled.records:
                cur.executemany(
                    "INSERT INTO massgate.site_reconciliations (site, window_end, window_start, "
                    "passed, payload) VALUES (%s, %s, %s, %s, %s) ON CONFLICT DO NOTHING",
                    [_reconciliation(site, body) for _, body in reconciled.records],
                )
            for _, body in reconciled.revised:
                cur.execute(
                    "INSERT INTO massgate.site_reconciliations AS s (site, window_end, "
                    "window_start, passed, payload) VALUES (%s, %s, %s, %s, %s) "
                    "ON CONFLICT (site, window_end) DO UPDATE SET "
                    "window_start = excluded.window_start, passed = excluded.passed, "
                    f"{_REVISE} RETURNING superseded",
                    _reconciliation(site, body),
                )
                if (row := cur.fetchone()) is not None:
                    revised.append((f"reconciliation/{NETWORK}", {**body, "superseded": row[0]}))
            if windows:
                cur.executemany(
                    "INSERT INTO massgate.site_balances (site, node, window_end, window_start, "
                    "status, payload) VALUES (%s, %s, to_timestamp(%s), to_timestamp(%s), %s, "
                    "%s) ON CONFLICT DO NOTHING",
                    [_window(site, r, body) for r, body in windows],
                )
            for r in judged.revised:
                body = balance_body(r)
                cur.execute(
                    "INSERT INTO massgate.site_balances AS s (site, node, window_end, "
                    "window_start, status, payload) VALUES (%s, %s, to_timestamp(%s), "
                    "to_timestamp(%s), %s, %s) ON CONFLICT (site, node, window_end) DO UPDATE "
                    "SET window_start = excluded.window_start, status = excluded.status, "
                    f"{_REVISE} RETURNING superseded",
                    _window(site, r, body),
                )
                if (row := cur.fetchone()) is not None:
                    revised.append((f"balance/{r.node}", {**body, "superseded": row[0]}))
            for where, e, body in alarms:
                # Judged again, an event meets itself (stored, not stored twice) or is new.
                cur.execute(
                    "INSERT INTO massgate.site_alarms (site, node, event, at, since, hint, "
                    "payload) VALUES (%s, %s, %s, to_timestamp(%s), to_timestamp(%s), %s, %s) "
                    "ON CONFLICT DO NOTHING RETURNING 1",
                    (site, where, e.event, e.wall, e.since_wall, body["hint"], _json(body)),
                )
                if cur.fetchone() is not None:
                    stored_alarms.append((where, e, body))
            if self.gaps:
                cur.executemany(
                    "INSERT INTO massgate.site_gaps (site, gateway, epoch, after_seq, "
                    "before_seq, gap_start, gap_end) VALUES (%s, %s, %s, %s, %s, "
                    "to_timestamp(%s), to_timestamp(%s)) ON CONFLICT DO NOTHING",
                    [
                        (site, gw, g.epoch, g.after_seq, g.before_seq, g.start, g.end)
                        for (gw, *_), g in sorted(self.gaps.items())
                    ],
                )
            cur.executemany(
                "INSERT INTO massgate.site_progress AS p (site, node, evaluated_to, waiting, "
                "judged_to, revise_after) VALUES (%s, %s, to_timestamp(%s), %s, "
                "to_timestamp(%s), to_timestamp(%s)) ON CONFLICT (site, node) DO UPDATE SET "
                "evaluated_to = excluded.evaluated_to, waiting = excluded.waiting, "
                "judged_to = excluded.judged_to, revise_after = excluded.revise_after, "
                "updated_at = now()",
                progress,
            )
        if self.network is not None:
            self.network.stored()
        for node in self.nodes:
            if node.cursor is not None and (node.stored_to is None or node.cursor > node.stored_to):
                node.stored_to = node.cursor
        for _, event, _body in stored_alarms:
            if isinstance(event, AlarmEvent):
                log_event(log, event, f"site {site} node")
            else:
                log_suspect(log, event, f"site {site} reconciliation")
        for subtopic, body in revised:
            old = body["superseded"]
            log.info(
                "site %s %s: the window ending %s judged again on late totals: %s",
                site,
                subtopic.replace("/", " "),
                body["window_end"],
                _change(old, body),
            )
        if self.publish is not None:  # after the commit: only what is stored goes out
            for r, body in windows:
                self.publish(f"balance/{r.node}", body)
            for where, _, body in stored_alarms:
                self.publish(f"alarm/{where}", body)
            for _, body in reconciled.records:
                self.publish(f"reconciliation/{NETWORK}", body)
            for subtopic, body in revised:
                self.publish(subtopic, body)

    def _progress(self, name: str, judged: _Node | _Network) -> tuple[Any, ...]:
        cursor, stored_to = judged.cursor, judged.stored_to
        high = max((x for x in (cursor, stored_to) if x is not None), default=None)
        return (self.config.site, name, cursor, judged.waiting or None, high, judged.revise_after)

    def run_pass(self, conn: psycopg.Connection[Any]) -> int:
        """Judge what has arrived; returns the windows stored."""
        # A late record re-opens (engines made afresh); a judge that starts looks too, since
        # the one before it may have stopped between a record's arrival and its next pass.
        if self.reopen(conn) or not self.begun:
            self.begin(conn)
        self.load(conn)
        judged = self.judge()
        self.write(conn, judged, self.reconcile())
        return len(judged.windows)


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
        self.revise_after: float | None = None
        self.waiting = ""

    def begin(self, evaluated_to: float, revise_after: float | None = None) -> None:
        every = self.config.every
        memory = self.config.window + every * (self.config.confirm + 1)
        self.stored_to, self.revise_after = evaluated_to, revise_after
        since = min(revise_after, evaluated_to) if revise_after is not None else evaluated_to
        self.cursor = math.floor((since - memory) / every) * every - every

    def step(self) -> _Reconciled:
        every = self.config.every
        known = min((t.known_until for t in self.terms), default=-math.inf)
        self.waiting = _waiting(self.terms, known)
        done = _Reconciled([], [], [])
        if self.cursor is None:
            first = max((t.first_known for t in self.terms), default=math.inf)
            if not math.isfinite(first) or first > known:
                return done
            self.cursor = math.ceil(first / every) * every - every
        t = self.cursor
        while t + every <= known:
            t += every
            body, found = self.reconciler.tick(t, t)
            what = _new_or_revised(t, self.stored_to, self.revise_after)
            if what:
                if body is not None:
                    (done.records if what == "new" else done.revised).append((t, body))
                done.suspects.extend(found)
        self.cursor = t
        if self.stored_to is not None and t >= self.stored_to:
            self.revise_after = None
        return done

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


# A result judged again replaces the stored one only when it differs; RETURNING then gives
# the row, so that only a real change is logged and published.
_REVISE = (
    "payload = excluded.payload, superseded = s.payload, revised_at = now() "
    "WHERE s.payload IS DISTINCT FROM excluded.payload"
)


def _window(site: str, r: WindowResult, body: dict[str, Any]) -> tuple[Any, ...]:
    return (site, r.node, r.end_wall, r.start_wall, r.status, _json(body))


def _reconciliation(site: str, body: dict[str, Any]) -> tuple[Any, ...]:
    passed = body["global_test"]["passed"]
    return (site, body["window_end"], body["window_start"], passed, _json(body))


def _change(old: Any, new: dict[str, Any]) -> str:
    """What a revision changed, in a few words."""

    def said(b: Any) -> str:
        if not isinstance(b, dict):
            return "?"
        if "status" in b:
            return f"{b.get('status')} (imbalance {b.get('imbalance_kg')} kg)"
        test = b.get("global_test")
        return (
            f"global test {'passed' if isinstance(test, dict) and test.get('passed') else 'failed'}"
        )

    before, after = said(old), said(new)
    if before != after or not isinstance(old, dict):
        return f"{before} -> {after}"
    # The same verdict: a statistic that carries history (the cusum) moved.
    changed = sorted(k for k, v in new.items() if k != "superseded" and old.get(k) != v)
    return f"{after} as before; its {', '.join(changed)} changed"


def _on(gateway: str, terms: list[RemoteStream | RemoteInventory]) -> bool:
    return any(t.name.split("/")[0] == gateway for t in terms)


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
