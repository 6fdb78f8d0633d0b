"""The ingest's own small YAML file: the brokers (the agent's `mqtt` section, same keys and
checks), the database, and which gateways to take.

    mqtt:
      brokers: [mqtts://broker.example.com:8883]
      ca_file: ca.pem
      client_id: massgate-ingest-1        # one per ingest process; the session is kept by it
      session_expiry: 7d                  # how long the broker keeps our session offline
    database:
      url: postgresql://ingest@db.example.com:5432/plant
      password_file: db-password          # or password_env
    take:
      sites: [north]                      # default: every site under the topic prefix
      shared: ingest                      # share the load: $share/ingest/... (MQTT 5)
    balances:                             # optional: nodes across gateways (ingest.site)
      site: north                         # default: the one site taken
      publish: false                      # true: results also to <prefix>/<site>/site/...
      nodes:
        - name: tank-farm
          inputs: [skid-1/feed]           # GATEWAY/STREAM
          outputs: [skid-2/product]
          inventories: [skid-2/tank-1]    # GATEWAY/INVENTORY
          window: 1 h
          tolerance: {relative: 1 %}
          persistence: 5 min

Errors are reported like the agent's: `file:line: path: what`, all of them at once.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from ..config.model import BATCH, MqttConfig, NodeConfig, NodeCycle, ReconciliationConfig
from ..config.nodes import node_terms, parse_node, parse_reconciliation
from ..config.uplink import env_name, parse_mqtt
from ..core import preflight, units
from ..core.values import DAY, Files
from ..core.yamlsource import (
    Invalid,
    Report,
    Section,
    boolean,
    integer,
    load_file,
    name,
    quantity,
    text,
)

MAX_SESSION_EXPIRY = 0xFFFFFFFE  # s: the largest MQTT 5 expiry short of "never"
DEFAULT_SESSION_EXPIRY = 7 * DAY  # a week offline without losing a record at the broker
DEFAULT_BATCH = 2000  # records written in one transaction at most


@dataclass(frozen=True, slots=True)
class DatabaseConfig:
    url: str
    password_file: Path | None = None
    password_env: str | None = None

    def password(self) -> str | None:
        """The password from its file or environment variable; never logged."""
        return preflight.read_secret(
            file=self.password_file, env=self.password_env, where="database"
        )

    @property
    def shown(self) -> str:
        """The URL without a password, for logs and reports."""
        url = urlsplit(self.url)
        host = url.hostname or "(local socket)"
        port = f":{url.port}" if url.port else ""
        user = f"{url.username}@" if url.username else ""
        return f"{url.scheme}://{user}{host}{port}{url.path}"


@dataclass(frozen=True, slots=True)
class BalancesConfig:
    """Nodes whose terms are streams and inventories of any gateway of one site, judged
    upstream on the gateways' totals records (ingest.site)."""

    site: str
    nodes: tuple[NodeConfig, ...]
    every: float = 5.0  # s between looks at what has arrived
    # Gateway time a missing totals record is waited for, once later ones are in (a
    # re-delivery, or an ingest process down with records in its session); then the span
    # it covered is judged as missing data: inconclusive, never as zero.
    wait_for_missing: float = DAY
    reconciliation: ReconciliationConfig | None = None  # of the innermost nodes' network
    # Also publish each window, alarm and reconciliation to <prefix>/<site>/site/<kind>/<node>
    # (five levels: the ingest's own <prefix>/+/+/+ does not take them back).
    publish: bool = False


@dataclass(frozen=True, slots=True)
class IngestConfig:
    source: Path
    mqtt: MqttConfig
    database: DatabaseConfig
    sites: tuple[str, ...] = ()  # () takes every site
    shared: str | None = None  # MQTT shared-subscription group
    session_expiry: float = DEFAULT_SESSION_EXPIRY
    batch: int = DEFAULT_BATCH
    balances: BalancesConfig | None = None

    def topics(self) -> list[str]:
        """The topic filters subscribed to: every record and status of the sites taken."""
        prefix = self.mqtt.topic_prefix
        filters = [f"{prefix}/{site}/+/+" for site in self.sites] or [f"{prefix}/+/+/+"]
        if self.shared is not None:
            return [f"$share/{self.shared}/{f}" for f in filters]
        return filters


def _database_url(value: Any) -> str:
    url = text(value)
    parts = urlsplit(url)
    if parts.scheme not in ("postgresql", "postgres"):
        raise Invalid(
            f"'{url}' is not a PostgreSQL URL like postgresql://ingest@db.example.com:5432/plant"
        )
    if parts.password:
        raise Invalid(
            "the URL holds a password; give it by 'password_file' or 'password_env' so that it "
            "is not in this file"
        )
    try:
        parts.port  # noqa: B018  # raises for a port that is not a number
    except ValueError:
        raise Invalid(f"'{url}' has an invalid port") from None
    return url


def load(path: Path) -> IngestConfig:
    """Read and check an ingest configuration. Raises ConfigError listing every problem."""
    raw = load_file(path)
    report = Report(str(path))
    root = Section(raw, path="", report=report, line=1)
    user = preflight.service_user(path)
    resolve = Files(base=path.resolve().parent, user=user).resolve
    mqtt_section = root.section("mqtt")
    mqtt = None
    session_expiry = DEFAULT_SESSION_EXPIRY
    if mqtt_section is not None:
        # Our own key in the agent's section: taken before the shared parser finishes it.
        session_expiry = mqtt_section.take(
            "session_expiry",
            quantity(units.TIME, minimum=60.0, maximum=float(MAX_SESSION_EXPIRY)),
            DEFAULT_SESSION_EXPIRY,
        )
        if not mqtt_section.has("client_id"):
            mqtt_section.fail(
                "client_id",
                "give each ingest process a client id of its own: the broker keeps the "
                "session (and the records waiting in it) by that id",
            )
        mqtt = parse_mqtt(mqtt_section, resolve, "massgate-ingest", user, commands=False)
        if len(mqtt.brokers) > 1:
            # Said, not ignored: the session (and what waits in it) lives on one broker or
            # cluster, so the ingest does not hop between the agent's fail-over list.
            mqtt_section.fail(
                "brokers", "ingest takes one broker (a cluster's one address), not a list"
            )
        if mqtt.protocol != "5":
            mqtt_section.fail(
                "protocol", "ingest needs MQTT 5 (session expiry, shared subscriptions)"
            )
    database = None
    if (db := root.section("database")) is not None:
        url = db.take("url", _database_url)
        password_file = db.take("password_file", resolve, None)
        password_env = db.take("password_env", env_name, None)
        if password_file is not None and password_env is not None:
            db.fail(
                "password_env", "give the password by 'password_file' or 'password_env', not both"
            )
        if password_file is not None:
            try:
                preflight.password_file(password_file, user=user)
            except preflight.PreflightError as exc:
                db.fail("password_file", str(exc))
        db.finish()
        database = DatabaseConfig(url, password_file, password_env)
    sites: tuple[str, ...] = ()
    shared = None
    batch = DEFAULT_BATCH
    if (take := root.section("take", required=False)) is not None:
        sites = take.take("sites", _sites, ()) or ()  # None when it was refused
        shared = take.take("shared", name, None)
        batch = take.take("batch", integer(1, 100_000), DEFAULT_BATCH) or DEFAULT_BATCH
        take.finish()
    balances = None
    if (section := root.section("balances", required=False)) is not None:
        balances = _balances(section, sites)
    root.finish()
    report.raise_if_any()
    # Both sections are required: raise_if_any has said so when one is missing.
    assert mqtt is not None
    assert database is not None
    return IngestConfig(
        source=path,
        mqtt=mqtt,
        database=database,
        sites=sites,
        shared=shared,
        session_expiry=session_expiry,
        batch=batch,
        balances=balances,
    )


def _sites(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not value:
        raise Invalid("expected a list of site ids, e.g. [north, south]")
    return tuple(name(v) for v in value)


def gateway_terms(value: Any) -> tuple[str, ...]:
    """A node's streams or inventories upstream: GATEWAY/NAME each."""
    items = value if isinstance(value, list) else [value]
    found = []
    for item in items:
        parts = text(item).split("/")
        if len(parts) != 2:
            raise Invalid(
                f"'{item}' is not GATEWAY/NAME: a node here takes a stream or inventory of a "
                "gateway, like skid-1/feed"
            )
        found.append("/".join(name(p) for p in parts))
    return tuple(found)


def _balances(s: Section, sites: tuple[str, ...]) -> BalancesConfig | None:
    site = s.take("site", name, sites[0] if len(sites) == 1 else None)
    if site is None and not s.has("site"):
        s.fail(None, "'site' is required when 'take.sites' does not name exactly one site")
    elif site is not None and sites and site not in sites:
        s.fail("site", f"'{site}' is not among the sites taken ({', '.join(sites)})")
    every = s.take("every", quantity(units.TIME, minimum=0.1, maximum=3600.0), 5.0)
    wait = s.take("wait_for_missing", quantity(units.TIME, minimum=0.0, maximum=30 * DAY), DAY)
    publish = s.take("publish", boolean, False)
    items = s.sections("nodes", required=True)
    nodes = [parse_node(n, gateway_terms) for n in items]
    reconciliation = None
    if (section := s.section("reconciliation", required=False)) is not None:
        reconciliation = parse_reconciliation(section, lambda v: gateway_terms(v)[0])
    s.finish()
    seen: dict[str, int] = {}
    for i, (item, node) in enumerate(zip(items, nodes, strict=True)):
        if node is None:
            continue
        if node.window_kind == BATCH:
            item.fail(
                "window",
                "a node across gateways has a rolling or calendar window: a batch tag is read "
                "by one gateway, so balance its batches there",
            )
        if node.zero_check is not None:
            item.fail(
                "zero_check",
                "a zero check reads a meter's flow while its line stands still: the gateway "
                "that reads the meter checks it, in its own node",
            )
        if node.name in seen:
            item.fail("name", f"'{node.name}' is already used by nodes[{seen[node.name]}]")
        if node.name == "network":
            item.fail("name", "'network' names the reconciliation's alarms: give another name")
        seen.setdefault(node.name, i)
        roles = [*node.inputs, *node.outputs, *node.generation, *node.consumption]
        if twice := sorted({r for r in roles if roles.count(r) > 1}):
            item.fail(
                "outputs", f"{twice} can be only one of input, output, generation, consumption"
            )
        for child in node.nodes:
            if child not in {n.name for n in nodes if n is not None}:
                item.fail("nodes", f"no node named '{child}'")
    if not s.ok or any(n is None for n in nodes) or not all(i.ok for i in items):
        return None
    parsed = tuple(n for n in nodes if n is not None)
    try:
        terms = node_terms(parsed)
    except NodeCycle as exc:
        items[next(i for i, n in enumerate(parsed) if n.name == exc.node)].fail("nodes", str(exc))
        return None
    if reconciliation is not None:
        from ..balance.reconcile import network_of  # noqa: PLC0415

        leaves = [n.name for n in parsed if not n.nodes]
        try:
            network_of(
                leaves,
                {n: terms[n].inputs for n in leaves},
                {n: terms[n].outputs for n in leaves},
            )
        except ValueError as exc:
            s.fail("reconciliation", f"the nodes do not form a network: {exc}")
            return None
        within = {x for n in leaves for g in (terms[n].inputs, terms[n].outputs) for x in g}
        for a, b, _ in reconciliation.correlations:
            for end in (a, b):
                if end not in within:
                    s.fail("reconciliation", f"'{end}' is no stream of the reconciled nodes")
                    return None
    assert site is not None
    return BalancesConfig(
        site=site,
        nodes=parsed,
        every=every,
        wait_for_missing=wait,
        reconciliation=reconciliation,
        publish=bool(publish),
    )
