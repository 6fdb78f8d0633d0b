"""Writing a batch of MQTT messages into PostgreSQL, in one transaction.

A message is a record (stored once by site, gateway, epoch and seq; a second copy counts as
a duplicate), a gateway's status (its newest online one kept, for the accounting), or
neither (not JSON, no sequence number, a topic that is not ours): then it goes to `rejects`
with the reason. Nothing a message holds can make the batch fail: each is checked here
before the database sees it (`read`, which the ingest calls in paho's thread as messages
arrive, so that reading the next batch overlaps writing this one).

A batch of records goes in with one COPY straight into `records`; only a batch holding a
record already stored (a re-delivery, a gateway's re-send) takes the slower way through a
temporary table and INSERT ... ON CONFLICT DO NOTHING, which counts the duplicates.
"""

from __future__ import annotations

import json
import logging
import re
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, NamedTuple

import orjson
import psycopg

from .schema import migrate

log = logging.getLogger(__name__)

EPOCH = re.compile(r"[0-9a-f]{16}")
MAX_SEQ = 2**53 - 1  # the envelope's bound: a JSON number every consumer reads exactly


class Incoming(NamedTuple):  # a tuple: made for every message, in paho's thread
    topic: str
    payload: bytes


@dataclass
class Written:
    """What one batch did."""

    stored: int = 0
    duplicates: int = 0
    statuses: int = 0
    rejected: int = 0
    reasons: Counter[str] = field(default_factory=Counter)

    def merge(self, other: Written) -> None:
        self.stored += other.stored
        self.duplicates += other.duplicates
        self.statuses += other.statuses
        self.rejected += other.rejected
        self.reasons.update(other.reasons)


class _Record(NamedTuple):  # one per record: a tuple is the cheapest to make
    site: str
    gateway: str
    epoch: str
    seq: int
    kind: str
    created: datetime | None
    payload: bytes  # JSON, UTF-8, as jsonb takes it
    line: bytes  # the record as a row of COPY's text format


class _Reject(NamedTuple):
    topic: str
    reason: str
    payload: bytes


@dataclass(frozen=True, slots=True)
class _Status:
    site: str
    gateway: str
    online: bool
    epoch: str | None
    depth: int | None
    dropped: int | None
    last_seq: int | None
    payload: bytes


class Rejected(ValueError):
    """Why a message is not a record or a status."""


Parsed = _Record | _Status | _Reject


def read(message: Incoming, prefix: str) -> Parsed:
    """The record or status in `message`, or why it is neither; never raises."""
    try:
        return parse(message, prefix)
    except Rejected as exc:
        reason = str(exc)
    except Exception as exc:  # a bug here must not stop the ingest: the message is kept
        log.exception("ingest: reading a message on %r failed", message.topic)
        reason = f"could not be read: {exc!r}"
    # PostgreSQL's text holds no NUL, which a topic (through another broker) or a payload
    # quoted in the reason might: shown as U+FFFD, the payload itself is kept as it came.
    topic = message.topic.replace("\0", "\ufffd")
    return _Reject(topic, reason.replace("\0", "\ufffd"), message.payload)


def parse(message: Incoming, prefix: str) -> _Record | _Status:
    """The record or status in `message`; raises Rejected saying why it is neither."""
    head = f"{prefix}/"
    if not message.topic.startswith(head):
        raise Rejected(f"the topic is not under '{prefix}/'")
    if "\0" in message.topic:
        raise Rejected("the topic holds a NUL character")
    levels = message.topic[len(head) :].split("/")
    if len(levels) != 3 or not all(levels):
        raise Rejected("the topic is not <prefix>/<site>/<gateway>/<kind>")
    site, gateway, kind = levels
    body, text = _json(message.payload)
    for key, expected in (("site", site), ("gateway", gateway), ("kind", kind)):
        if key in body and body[key] != expected:
            raise Rejected(f"the topic says {key} '{expected}', the payload '{body[key]}'")
    if kind == "status":
        return _status(site, gateway, body, text)
    epoch, seq = body.get("epoch"), body.get("seq")
    if not isinstance(epoch, str) or not EPOCH.fullmatch(epoch):
        raise Rejected("no epoch (16 hexadecimal digits)")
    if not isinstance(seq, int) or isinstance(seq, bool) or not 1 <= seq <= MAX_SEQ:
        raise Rejected(f"no sequence number (an integer from 1 to {MAX_SEQ})")
    created = _time(body.get("created"))
    line = _copy_line(site, gateway, epoch, seq, kind, created, text)
    return _Record(site, gateway, epoch, seq, kind, created, text, line)


def _json(payload: bytes) -> tuple[Any, bytes]:
    """The payload's JSON object, and the text to give jsonb; raises Rejected saying why it
    is not one PostgreSQL takes.

    orjson reads a record in a few microseconds and refuses, in C, what jsonb would refuse
    too (NaN and Infinity, lone surrogates, text that is not UTF-8); what it refuses, or a NUL
    escape, takes the slow path below, which says why (or keeps what only orjson refuses,
    like an integer beyond 64 bits).
    """
    if b"\\u0000" not in payload:
        try:
            body = orjson.loads(payload)
        except orjson.JSONDecodeError:
            pass
        else:
            if not isinstance(body, dict):
                raise Rejected("the payload is not a JSON object")
            return body, payload
    try:
        body = json.loads(payload.decode("utf-8"), parse_constant=_no_constant)
    except (UnicodeDecodeError, ValueError) as exc:
        raise Rejected(f"not JSON: {exc}") from None
    if not isinstance(body, dict):
        raise Rejected("the payload is not a JSON object")
    try:
        # Written again as jsonb will read it: a lone surrogate escape ("\\ud800"), which
        # Python takes and PostgreSQL refuses, fails here instead of failing the batch.
        text = json.dumps(body, ensure_ascii=False, separators=(",", ":"))
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise Rejected("not JSON that PostgreSQL takes: a lone surrogate escape") from None
    if "\\u0000" in text:
        raise Rejected("the payload holds a NUL character, which PostgreSQL's jsonb refuses")
    return body, text.encode("utf-8")


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _time(value: Any) -> datetime | None:
    """The record's time, or None for one that is not an ISO 8601 time (the record is kept;
    its `created` column is empty). Without an offset it is UTC, as the agent writes it."""
    if not isinstance(value, str):
        return None
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def _count(value: Any) -> int | None:
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_SEQ:
        return value
    return None


def _status(site: str, gateway: str, body: dict[str, Any], text: bytes) -> _Status:
    outbox = body.get("outbox")
    if body.get("status") != "online" or not isinstance(outbox, dict):
        return _Status(site, gateway, False, None, None, None, None, text)
    dropped = outbox.get("dropped")
    drops = None
    if isinstance(dropped, dict):
        counts = [_count(v) for v in dropped.values()]
        drops = sum(c for c in counts if c is not None)
    epoch = outbox.get("epoch")
    return _Status(
        site,
        gateway,
        True,
        epoch if isinstance(epoch, str) and EPOCH.fullmatch(epoch) else None,
        _count(outbox.get("depth")),
        drops,
        _count(outbox.get("last_seq")),
        text,
    )


_COLUMNS = "(site, gateway, epoch, seq, kind, created, payload)"
_ESCAPED = re.compile(rb"[\\\t\n\r]")
_ESCAPES = {b"\\": b"\\\\", b"\t": b"\\t", b"\n": b"\\n", b"\r": b"\\r"}


def _field(value: bytes) -> bytes:
    """`value` as a field of COPY's text format: backslash, tab, newline and CR escaped."""
    # An agent's record has none of them; four scans in C are quicker than the regex's.
    if b"\\" not in value and b"\t" not in value and b"\n" not in value and b"\r" not in value:
        return value
    return _ESCAPED.sub(lambda m: _ESCAPES[m.group()], value)


def _copy_line(
    site: str, gateway: str, epoch: str, seq: int, kind: str, created: datetime | None, text: bytes
) -> bytes:
    """A record as a row of COPY's text format, made as the record is read (in paho's
    thread, off the writer's path): psycopg's write_row took a fifth of the ingest's time per
    record, for fields that need no adapting (checked text, an integer, a time, JSON that is
    UTF-8 already); made by the writer, under the GIL shared with the reading, a tenth of
    the batch's time."""
    return b"%s\t%s\t%s\t%d\t%s\t%s\t%s\n" % (
        _field(site.encode()),
        _field(gateway.encode()),
        epoch.encode(),
        seq,
        _field(kind.encode()),
        b"\\N" if created is None else created.isoformat().encode(),
        _field(text),
    )


def _reject(item: Parsed, reason: str, prefix: str) -> _Reject:
    """`item` kept in rejects with `reason`."""
    if isinstance(item, _Reject):
        return item._replace(reason=reason)
    if isinstance(item, _Record):
        topic = f"{prefix}/{item.site}/{item.gateway}/{item.kind}"
    else:
        topic = f"{prefix}/{item.site}/{item.gateway}/status"
    return _Reject(topic, reason, item.payload)


class Store:
    """One PostgreSQL connection; `write` stores a batch in one transaction."""

    def __init__(self, url: str, *, password: str | None, prefix: str) -> None:
        self.prefix = prefix
        # UTF-8 said, not left to the database's default: the rows are COPYed as UTF-8
        # bytes, which a database in another encoding then converts (or refuses) correctly.
        self.conn = psycopg.connect(
            url, password=password, connect_timeout=10, client_encoding="UTF8"
        )
        self.conn.autocommit = True  # transactions are explicit (conn.transaction())
        try:
            migrate(self.conn)
            self.conn.execute(
                "CREATE TEMP TABLE IF NOT EXISTS incoming (site text, gateway text, epoch text, "
                "seq bigint, kind text, created timestamptz, payload jsonb) ON COMMIT DELETE ROWS"
            )
        except BaseException:
            self.conn.close()
            raise

    def close(self) -> None:
        self.conn.close()

    def write(self, messages: list[Incoming]) -> Written:
        """Store the batch; returns what it did (as `write_read`, for messages not yet read)."""
        return self.write_read([read(m, self.prefix) for m in messages])

    def write_read(self, items: list[Parsed]) -> Written:
        """Store a batch of messages `read` already; returns what it did. Raises psycopg's
        errors: the caller then acknowledges none of the batch, and whatever of it was stored
        (by the one-at-a-time fallback below) comes again and counts as duplicates."""
        written = Written()
        records: list[_Record] = []
        statuses: list[_Status] = []
        rejects: list[_Reject] = []
        for item in items:
            if isinstance(item, _Record):
                records.append(item)
            elif isinstance(item, _Status):
                statuses.append(item)
            else:
                rejects.append(item)
        for reject in rejects:
            written.reasons[reject.reason.split(":")[0]] += 1
        try:
            try:
                # Most batches hold no duplicate: one COPY straight into the table. One
                # that does (a re-delivery, a gateway's re-send) fails on the key, rolls
                # back, and goes again the way that counts the duplicates.
                self._commit(records, statuses, rejects, written, direct=True)
            except psycopg.errors.UniqueViolation:
                self._commit(records, statuses, rejects, written, direct=False)
        except (psycopg.errors.DataError, psycopg.errors.IntegrityError) as exc:
            # A message the checks above let through and PostgreSQL refuses (a number beyond
            # a double; a constraint a DBA added, like NOT NULL on created for TimescaleDB)
            # would fail its batch at every try: found by writing them one at a time, and
            # kept in rejects with PostgreSQL's words. A lost connection is neither: raised.
            if len(items) == 1:
                reason = f"PostgreSQL refused it: {str(exc).strip()}"
                written = Written(rejected=1)
                written.reasons["PostgreSQL refused it"] += 1
                self._commit([], [], [_reject(items[0], reason, self.prefix)], written)
                return written
            written = Written()
            for item in items:
                written.merge(self.write_read([item]))
        return written

    def _commit(
        self,
        records: list[_Record],
        statuses: list[_Status],
        rejects: list[_Reject],
        written: Written,
        *,
        direct: bool = False,
    ) -> None:
        with self.conn.transaction(), self.conn.cursor() as cur:
            if records:
                self._records(cur, records, written, direct=direct)
            for s in statuses:  # in order: the newest one stays
                payload = s.payload.decode("utf-8")
                if s.online:
                    cur.execute(
                        "INSERT INTO massgate.gateway_status AS g (site, gateway, epoch, depth, "
                        "dropped, last_seq, payload) VALUES (%s, %s, %s, %s, %s, %s, %s) "
                        "ON CONFLICT (site, gateway) DO UPDATE SET epoch = excluded.epoch, "
                        "depth = excluded.depth, dropped = excluded.dropped, "
                        "last_seq = excluded.last_seq, payload = excluded.payload, "
                        "received_at = now()",
                        (s.site, s.gateway, s.epoch, s.depth, s.dropped, s.last_seq, payload),
                    )
                else:
                    # An offline status (the goodbye, the will) says nothing of the outbox:
                    # the figures of the last online one stay.
                    cur.execute(
                        "INSERT INTO massgate.gateway_status AS g (site, gateway, payload) "
                        "VALUES (%s, %s, %s) ON CONFLICT (site, gateway) DO UPDATE SET "
                        "payload = excluded.payload, received_at = now()",
                        (s.site, s.gateway, payload),
                    )
            written.statuses = len(statuses)
            if rejects:
                cur.executemany(
                    "INSERT INTO massgate.rejects (topic, reason, payload) VALUES (%s, %s, %s)",
                    rejects,
                )
                written.rejected = len(rejects)

    def _records(self, cur: Any, records: list[_Record], written: Written, *, direct: bool) -> None:
        """Store the records and count what arrived per gateway and epoch, in the caller's
        transaction: `direct`ly (a duplicate raises UniqueViolation), or counting duplicates."""
        arrived = Counter((r.site, r.gateway, r.epoch) for r in records)
        rows = b"".join([r.line for r in records])
        if direct:
            with cur.copy(f"COPY massgate.records {_COLUMNS} FROM STDIN") as copy:
                copy.write(rows)
            stored = arrived
        else:
            with cur.copy(f"COPY incoming {_COLUMNS} FROM STDIN") as copy:
                copy.write(rows)
            cur.execute(
                f"WITH stored AS (INSERT INTO massgate.records {_COLUMNS} "
                "SELECT site, gateway, epoch, seq, kind, created, payload FROM incoming "
                "ON CONFLICT DO NOTHING RETURNING site, gateway, epoch) "
                "SELECT site, gateway, epoch, count(*) FROM stored GROUP BY 1, 2, 3"
            )
            # Counted by the database: a row per gateway and epoch, not per record.
            stored = Counter({(a, b, c): int(n) for a, b, c, n in cur.fetchall()})
        cur.executemany(
            "INSERT INTO massgate.arrivals AS a (site, gateway, epoch, received, "
            "duplicates) VALUES (%s, %s, %s, %s, %s) "
            "ON CONFLICT (site, gateway, epoch) DO UPDATE SET "
            "received = a.received + excluded.received, "
            "duplicates = a.duplicates + excluded.duplicates, last_at = now()",
            [(*key, n, n - stored.get(key, 0)) for key, n in arrived.items()],
        )
        written.stored = sum(stored.values())
        written.duplicates = len(records) - written.stored

    def accounting(self) -> list[dict[str, Any]]:
        """Per gateway and epoch: what arrived, duplicates, and the missing numbers, explained
        (still in the gateway's outbox, or dropped by it) or not."""
        with self.conn.cursor() as cur:
            cur.execute(
                "SELECT site, gateway, epoch, received, duplicates, stored, first_seq, "
                "last_seq, missing, pending, dropped, unexplained, status_at "
                "FROM massgate.accounting ORDER BY site, gateway, epoch"
            )
            names = [d.name for d in cur.description or ()]
            return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]

    def site_balances(self) -> list[dict[str, Any]]:
        """Per node across gateways: how far it is judged, what it waits for, its last
        window's status and imbalance, and how many of its windows late totals revised."""
        with self.conn.cursor() as cur:
            cur.execute(
                "SELECT p.site, p.node, p.evaluated_to, b.status, "
                "(b.payload->>'imbalance_kg')::double precision AS imbalance_kg, "
                "(b.payload->>'tolerance_kg')::double precision AS tolerance_kg, "
                "(SELECT count(*) FROM massgate.site_alarms a WHERE a.site = p.site "
                "AND a.node = p.node AND a.event = 'raised') AS alarms, "
                "(SELECT count(*) FROM massgate.site_balances r WHERE r.site = p.site "
                "AND r.node = p.node AND r.revised_at IS NOT NULL) AS revised, p.waiting "
                "FROM massgate.site_progress p LEFT JOIN LATERAL (SELECT status, payload "
                "FROM massgate.site_balances s WHERE s.site = p.site AND s.node = p.node "
                "ORDER BY window_end DESC LIMIT 1) b ON true ORDER BY p.site, p.node"
            )
            names = [d.name for d in cur.description or ()]
            return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]

    def lost_totals(self) -> int:
        """Gaps in the gateways' totals that the site judge took as lost and that have not
        arrived since (massgate.site_gaps)."""
        row = self.conn.execute(
            "SELECT count(*) FROM massgate.site_gaps WHERE filled_at IS NULL"
        ).fetchone()
        return int(row[0]) if row else 0

    def rejected(self) -> int:
        row = self.conn.execute("SELECT count(*) FROM massgate.rejects").fetchone()
        return int(row[0]) if row else 0
