"""The statements the graph sink runs, the same text on both backends.

Model::

    (Host)-[:GENERATED]->(Event)<-[:GENERATED]-(Container)
    (User)-[:EXECUTED]->(Event)<-[:EXECUTED]-(Process)

Each label has one key property (``NODE_KEYS``), so one uniqueness constraint per label works on both backends,
and every MERGE matches on that key alone; how keys are made is in ``etl.sinks.graph.rows``.
"""

from __future__ import annotations

import re

from etl.sinks.graph.rows import ROW_FIELDS

# (label, key property): one uniqueness constraint each.
NODE_KEYS: tuple[tuple[str, str], ...] = (
    ("Event", "id"),
    ("Host", "host_id"),
    ("User", "key"),
    ("Process", "key"),
    ("Container", "container_id"),
)

# Every node but Event is MERGEd on its key only; what its key determines is set once, ON CREATE, and a readable
# property is SET only when the event changes it (a SET of an unchanged value still costs FalkorDB a write).
# {link} is how each one is tied to the event: CREATE for a new event, MERGE for one that may exist. A Process
# the sink knows to be new (``process_new``, see as_lists) is left to CREATE_CYPHER.
_CONTEXT_CYPHER = """
FOREACH (i IN CASE WHEN r.host_id IS NULL THEN [] ELSE [1] END |
    MERGE (h:Host {host_id: r.host_id})
    FOREACH (j IN CASE WHEN h.host_ip = r.host_ip AND h.hostname = r.hostname THEN [] ELSE [1] END |
        SET h.host_ip = coalesce(r.host_ip, h.host_ip), h.hostname = coalesce(r.hostname, h.hostname))
    {link} (h)-[:GENERATED]->(e))
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
    CREATE (p)-[:EXECUTED]->(e))""" + _CONTEXT_CYPHER.replace("{link}", "CREATE") + """RETURN count(e) AS created
"""

# For any batch (a replay, or part of one): everything is MERGEd, so nothing is created twice. The OPTIONAL
# MATCH before the MERGE tells which events are new (rows are unique by id, see build_rows). Rows must not
# have process_new set (as_lists without stored processes).
NAMED_MERGE_CYPHER = """
UNWIND $rows AS r
OPTIONAL MATCH (seen:Event {id: r.id})
WITH r, seen IS NULL AS fresh
MERGE (e:Event {id: r.id})
SET e.type = r.type, e.source = r.source, e.timestamp = r.timestamp, e.env = r.env,
    e.rdns = r.rdns, e.dst_rdns = r.dst_rdns, e.host_id = r.host_id, e.enriched_at = r.enriched_at
""" + _CONTEXT_CYPHER.replace("{link}", "MERGE") + """RETURN sum(CASE WHEN fresh THEN 1 ELSE 0 END) AS created
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
