"""The database the ingest writes, made and migrated by the ingest itself.

Everything lives in the schema `massgate`:

- `records`: every record of every gateway, once: (site, gateway, epoch, seq) is the key, so
  a re-delivery or a gateway's re-send is a duplicate, not a second row. The payload is kept
  whole as jsonb; `created` is the gateway's time, `received_at` the database's.
- `arrivals`: per gateway and epoch, how many records arrived and how many of them were
  duplicates (counted as they come, since duplicates leave no row).
- `gateway_status`: each gateway's newest online status (its outbox depth, drops and last
  sequence number), which explains the gaps in `records`.
- `rejects`: messages that are not records (not JSON, no sequence number), kept with the
  reason instead of being dropped.
- views: `mass_balance_events` (the balance records in the shape of a mass-balance event:
  time, site, gateway, node, window_start, window_end, in_kg, out_kg, accumulation_kg,
  imbalance_kg, relative, tolerance_kg, status), `totals` (one row per stream and totals period),
  `hourly`, `alarms`, `telemetry_points` (one row per tag and telemetry record) and
  `accounting` (what arrived, and every missing sequence number explained or not).
- `site_balances`, `site_alarms`, `site_reconciliations`, `site_progress`: the nodes across
  gateways that the ingest judges itself (ingest.site): each window once, each alarm event
  once, each reconciliation of their network once, and how far each node (and the network)
  is judged and what it waits for. `mass_balance_events` has their windows too, with
  gateway, epoch and seq null.
- `site_gaps`: totals records the judge took as lost (missing past `wait_for_missing`);
  when one of them arrives after all, the gap is marked filled and the nodes over it are
  judged again from its start: a window that comes out different is revised in place, its
  earlier payload kept in `superseded` and the time in `revised_at` (reconciliations too).
- A gateway's window corrected by a late entry (`revision` n > 0) is a record of its own;
  `mass_balance_events` shows each window once, at its highest revision (its `revision`
  column: null for the site's windows, which are revised in place), and `records` keeps
  every revision.
"""

from __future__ import annotations

from typing import Any

VERSION = 5

# A balance window's amounts, read from its payload: the gateways' records and the site's
# windows give mass_balance_events the same columns.
_AMOUNTS = """    (payload->>'in_kg')::double precision AS in_kg,
    (payload->>'out_kg')::double precision AS out_kg,
    (payload->>'delta_inventory_kg')::double precision AS accumulation_kg,
    (payload->>'imbalance_kg')::double precision AS imbalance_kg,
    (payload->>'relative')::double precision AS relative,
    (payload->>'tolerance_kg')::double precision AS tolerance_kg,
"""


# A correction replaces the record of the same node and window with a lower revision (see
# balance.schema.json); a record without a window (not the agent's) is never replaced.
def _revision(alias: str) -> str:
    # A payload the ingest stored but no agent wrote may hold anything there: not a cast
    # that fails the whole view.
    field = f"{alias}.payload->'revision'"
    return f"CASE WHEN jsonb_typeof({field}) = 'number' THEN ({field})::numeric ELSE 0 END"


_LATEST_REVISION = f"""    {_revision("r")} AS revision
FROM massgate.records r WHERE kind = 'balance' AND NOT EXISTS (
    SELECT 1 FROM massgate.records later
    WHERE later.kind = 'balance' AND later.site = r.site AND later.gateway = r.gateway
        AND later.payload->>'node' = r.payload->>'node'
        AND later.payload->>'window_start' = r.payload->>'window_start'
        AND later.payload->>'window_end' = r.payload->>'window_end'
        AND {_revision("later")} > {_revision("r")}
)"""

# The balance records as mass-balance events (migration 1; migration 3 adds the site's).
_BALANCE_EVENTS = (
    """SELECT
    created AS time, site, gateway,
    payload->>'node' AS node,
    payload->>'window' AS window_kind,
    (payload->>'window_start')::timestamptz AS window_start,
    (payload->>'window_end')::timestamptz AS window_end,
"""
    + _AMOUNTS
    + """    payload->>'status' AS status,
    epoch, seq
FROM massgate.records WHERE kind = 'balance'"""
)


def _site_events(extra: str = "") -> str:
    """The site's own windows as mass-balance events, after the gateways' (migration 3;
    migration 5 adds `extra` columns)."""
    return (
        """
UNION ALL
SELECT
    window_end AS time, site, NULL AS gateway, node,
    payload->>'window' AS window_kind,
    window_start, window_end,
"""
        + _AMOUNTS
        + f"""    status, NULL AS epoch, NULL AS seq{extra}
FROM massgate.site_balances;
"""
    )


# Each migration takes the database from the version before it to its own; they run in one
# transaction with the version row, under an advisory lock, so two ingest processes starting
# together migrate once.
MIGRATIONS: dict[int, str] = {
    1: """
CREATE TABLE massgate.records (
    site text NOT NULL,
    gateway text NOT NULL,
    epoch text NOT NULL,
    seq bigint NOT NULL,
    kind text NOT NULL,
    created timestamptz,
    payload jsonb NOT NULL,
    received_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (site, gateway, epoch, seq)
);
CREATE INDEX records_kind_created ON massgate.records (kind, created);

CREATE TABLE massgate.arrivals (
    site text NOT NULL,
    gateway text NOT NULL,
    epoch text NOT NULL,
    received bigint NOT NULL DEFAULT 0,
    duplicates bigint NOT NULL DEFAULT 0,
    first_at timestamptz NOT NULL DEFAULT now(),
    last_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (site, gateway, epoch)
);

CREATE TABLE massgate.gateway_status (
    site text NOT NULL,
    gateway text NOT NULL,
    epoch text,
    depth bigint,
    dropped bigint,
    last_seq bigint,
    payload jsonb NOT NULL,
    received_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (site, gateway)
);

CREATE TABLE massgate.rejects (
    id bigserial PRIMARY KEY,
    topic text NOT NULL,
    reason text NOT NULL,
    payload bytea NOT NULL,
    received_at timestamptz NOT NULL DEFAULT now()
);

CREATE VIEW massgate.mass_balance_events AS
"""
    + _BALANCE_EVENTS
    + """;

CREATE VIEW massgate.totals AS
SELECT
    r.site, r.gateway, s->>'stream' AS stream,
    (s->>'period_start')::timestamptz AS period_start,
    (s->>'period_end')::timestamptz AS period_end,
    (s->>'mass_kg')::double precision AS mass_kg,
    (s->>'forward_kg')::double precision AS forward_kg,
    (s->>'reverse_kg')::double precision AS reverse_kg,
    (s->>'estimated_kg')::double precision AS estimated_kg,
    (s->>'gap_s')::double precision AS gap_s,
    r.epoch, r.seq
FROM massgate.records r, jsonb_array_elements(r.payload->'streams') s
WHERE r.kind = 'totals' AND jsonb_typeof(r.payload->'streams') = 'array';

CREATE VIEW massgate.accounting AS
WITH seen AS (
    SELECT site, gateway, epoch, count(*) AS stored, min(seq) AS first_seq, max(seq) AS max_seq
    FROM massgate.records GROUP BY site, gateway, epoch
), known AS (
    SELECT a.site, a.gateway, a.epoch, a.received, a.duplicates,
        coalesce(s.stored, 0) AS stored, s.first_seq,
        greatest(coalesce(s.max_seq, 0),
            CASE WHEN g.epoch = a.epoch THEN coalesce(g.last_seq, 0) ELSE 0 END) AS last_seq,
        CASE WHEN g.epoch = a.epoch THEN coalesce(g.depth, 0) ELSE 0 END AS pending,
        CASE WHEN g.epoch = a.epoch THEN coalesce(g.dropped, 0) ELSE 0 END AS dropped,
        g.received_at AS status_at
    FROM massgate.arrivals a
    LEFT JOIN seen s USING (site, gateway, epoch)
    LEFT JOIN massgate.gateway_status g USING (site, gateway)
), gaps AS (
    -- Numbers before the first one stored are not counted: the ingest was not yet taking
    -- this gateway (its session did not exist); first_seq says where it began.
    SELECT *, CASE WHEN first_seq IS NULL THEN 0 ELSE last_seq - first_seq + 1 - stored END
        AS missing
    FROM known
)
SELECT site, gateway, epoch, received, duplicates, stored, first_seq, last_seq, missing,
    pending, dropped, greatest(missing - pending - dropped, 0) AS unexplained, status_at
FROM gaps;
""",
    # Typed views of the other kinds, for Grafana, Directus or an MES to read as they are.
    2: """
CREATE VIEW massgate.alarms AS
SELECT
    created AS time, site, gateway,
    payload->>'node' AS node,
    payload->>'event' AS event,
    (payload->>'since')::timestamptz AS since,
    payload->>'hint' AS hint,
    payload->'balance'->>'status' AS balance_status,
    (payload->'balance'->>'imbalance_kg')::double precision AS imbalance_kg,
    epoch, seq
FROM massgate.records WHERE kind = 'alarm';

CREATE VIEW massgate.hourly AS
SELECT
    site, gateway,
    payload->>'stream' AS stream,
    (payload->>'hour_start')::timestamptz AS hour_start,
    (payload->>'hour_end')::timestamptz AS hour_end,
    (payload->>'quantity_kg')::double precision AS quantity_kg,
    (payload->>'forward_kg')::double precision AS forward_kg,
    (payload->>'reverse_kg')::double precision AS reverse_kg,
    (payload->>'estimated_kg')::double precision AS estimated_kg,
    (payload->>'faulted_s')::double precision AS faulted_s,
    epoch, seq
FROM massgate.records WHERE kind = 'hourly';

CREATE VIEW massgate.telemetry_points AS
SELECT
    r.created AS time, r.site, r.gateway, p.key AS tag,
    CASE WHEN jsonb_typeof(p.value->'value') = 'number'
        THEN (p.value->>'value')::double precision END AS value,
    p.value->>'quality' AS quality,
    r.epoch, r.seq
FROM massgate.records r, jsonb_each(r.payload->'points') p
WHERE r.kind = 'telemetry' AND jsonb_typeof(r.payload->'points') = 'object'
    AND jsonb_typeof(p.value) = 'object';
""",
    # Balances across gateways, judged by the ingest on the gateways' totals.
    3: """
CREATE TABLE massgate.site_balances (
    site text NOT NULL,
    node text NOT NULL,
    window_end timestamptz NOT NULL,
    window_start timestamptz,
    status text NOT NULL,
    payload jsonb NOT NULL,
    evaluated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (site, node, window_end)
);

CREATE TABLE massgate.site_alarms (
    site text NOT NULL,
    node text NOT NULL,
    event text NOT NULL,
    at timestamptz NOT NULL,
    since timestamptz,
    hint text NOT NULL,
    payload jsonb NOT NULL,
    evaluated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (site, node, event, at)
);

CREATE TABLE massgate.site_reconciliations (
    site text NOT NULL,
    window_end timestamptz NOT NULL,
    window_start timestamptz,
    passed boolean,
    payload jsonb NOT NULL,
    evaluated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (site, window_end)
);

CREATE TABLE massgate.site_progress (
    site text NOT NULL,
    node text NOT NULL,
    evaluated_to timestamptz,
    waiting text,
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (site, node)
);

CREATE OR REPLACE VIEW massgate.mass_balance_events AS
"""
    + _BALANCE_EVENTS
    + _site_events(),
    # Late records: what the judge gave up as lost, and the windows it judged again.
    4: """
CREATE TABLE massgate.site_gaps (
    site text NOT NULL,
    gateway text NOT NULL,
    epoch text NOT NULL,
    after_seq bigint NOT NULL,
    before_seq bigint NOT NULL,
    gap_start timestamptz NOT NULL,
    gap_end timestamptz NOT NULL,
    given_up_at timestamptz NOT NULL DEFAULT now(),
    filled_at timestamptz,
    PRIMARY KEY (site, gateway, epoch, after_seq, before_seq)
);

ALTER TABLE massgate.site_progress
    ADD COLUMN judged_to timestamptz,
    ADD COLUMN revise_after timestamptz;
ALTER TABLE massgate.site_balances
    ADD COLUMN superseded jsonb,
    ADD COLUMN revised_at timestamptz;
ALTER TABLE massgate.site_reconciliations
    ADD COLUMN superseded jsonb,
    ADD COLUMN revised_at timestamptz;
""",
    # A gateway's corrected windows (massgate enter): each window once, its latest revision.
    5: """
CREATE OR REPLACE VIEW massgate.mass_balance_events AS
"""
    + _BALANCE_EVENTS.replace("    epoch, seq\n", "    r.epoch, r.seq,\n").replace(
        "FROM massgate.records WHERE kind = 'balance'", _LATEST_REVISION
    )
    + _site_events(", NULL AS revision"),
}


def migrate(conn: Any) -> int:
    """Bring the database to VERSION; returns the version it was at. `conn` is a psycopg
    connection (not in a transaction)."""
    with conn.transaction():
        # One ingest migrates; another starting at the same time waits here, then finds
        # the work done.
        conn.execute("SELECT pg_advisory_xact_lock(hashtext('massgate.schema'))")
        conn.execute("CREATE SCHEMA IF NOT EXISTS massgate")
        conn.execute(
            "CREATE TABLE IF NOT EXISTS massgate.meta (key text PRIMARY KEY, value text NOT NULL)"
        )
        row = conn.execute("SELECT value FROM massgate.meta WHERE key = 'version'").fetchone()
        found = int(row[0]) if row else 0
        if found > VERSION:
            raise RuntimeError(
                f"the database's massgate schema is version {found}, newer than this massgate "
                f"knows ({VERSION}); upgrade massgate"
            )
        for version in range(found + 1, VERSION + 1):
            conn.execute(MIGRATIONS[version])
        conn.execute(
            "INSERT INTO massgate.meta VALUES ('version', %s) "
            "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            (str(VERSION),),
        )
    return found
