"""Fuzzing the pure path of an event: raw bytes -> the bridge's packing -> validation -> enrichment -> the fan-out's
JSON -> every sink's encoder (TimescaleDB's COPY rows, the graph's rows and Cypher parameters, NATS's payload,
headers and frames).

Whatever comes in, an event is either refused by the contract at enrich (``BadEvent``, dead-lettered there) or
taken by every sink's encoder. A sink may refuse only what the contract deliberately leaves to it
(``LEFT_TO_THE_SINKS``); any other ``SinkDataError`` is a gap in the contract, which would cost the sink a batch
split for one event, and any other exception would fail and retry a whole batch. The test does not say which
events are accepted: the contract may reject more of them over time.

Two generators: arbitrary bytes, and events shaped as the producers send them (``tests.producers``) with hostile
values put in (NUL and other control characters, lone surrogates as ``\\ud800`` escapes or raw in UTF-8, integers
past 64 bits or of thousands of digits, deep nesting, long strings, scoped addresses). Examples and time are
bounded, and nothing is saved into the repository (``database=None``, and Hypothesis's other caches in a temporary
directory).
"""

from __future__ import annotations

import base64
import json
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
from falkordb.helpers import stringify_param_value
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.configuration import set_hypothesis_home_dir

from etl.errors import PeerDataError, SinkDataError
from etl.natsio import hpub
from etl.pipeline import rawbatch
from etl.pipeline.enrich import enrich_batch
from etl.pipeline.limits import DEFAULT_NATS_MAX_PAYLOAD_BYTES
from etl.pipeline.validate import as_message, encode_enriched, validate_batch
from etl.rdns.hosts import ptr_address
from etl.rdns.strategies import FakeResolver, fake_name
from etl.sinks.copy_format import format_batch
from etl.sinks.graph.cypher import CREATE_CYPHER, MERGE_CYPHER
from etl.sinks.graph.falkordb_backend import query_text
from etl.sinks.graph.rows import as_lists, build_rows, process_keys
from etl.sinks.nats_publish import encode, publish_headers, wire_size
from tests.producers import grpc_event, visibility_event

NOW = datetime(2024, 1, 1, 12, tzinfo=UTC)
MAX_EVENT_BYTES = 1024 * 1024
# A few seconds in the suite. The deadline is per example, generous for a shared machine.
FUZZ = settings(max_examples=100, deadline=2000, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
Event = dict[str, Any]
# Hypothesis keeps caches (Unicode tables, constants of the code under test) in ./.hypothesis unless told otherwise;
# they are kept out of the repository, and shared by the runs of one machine.
set_hypothesis_home_dir(Path(tempfile.gettempdir()) / "aegisflux-etl-hypothesis")


# --- the path under test --------------------------------------------------------------------------------------

def timescale(events: list[Event]) -> object:
    return format_batch(events)


def graph(events: list[Event]) -> object:
    """The rows and their parameter headers, as either of FalkorDB's statements and its read of Processes send
    them: ours, or the client's when ours would need escapes."""
    rows = build_rows(events)
    keys = process_keys(rows)
    out = []
    for statement, name, values in ((CREATE_CYPHER, "rows", as_lists(rows, set(keys[:1]))),
                                    (MERGE_CYPHER, "rows", as_lists(rows)), ("RETURN $keys", "keys", keys)):
        text = query_text(statement, values, name)
        out.append(text if text is not None else stringify_param_value(values))
    return out


def nats(stream: str | None) -> Callable[[list[Event]], object]:
    """The payloads, header values and HPUB frames of a publish, with or without a stream."""
    headers, extra = publish_headers(stream)

    def publish(events: list[Event]) -> object:
        messages = [encode(e, extra) for e in events]
        return [wire_size(m, headers) for m in messages], hpub.frames("events.enriched", "_INBOX.x", headers,
                                                                       messages)

    return publish


ENCODERS = [timescale, graph, nats(None), nats("ENRICHED")]


def enrich_stage(raws: list[bytes]) -> list[Event]:
    """What the enrich actor does to ``raws`` as one batch from the bridge: the events every sink's actor gets."""
    texts, binary = rawbatch.pack(raws)
    valid, _ = validate_batch(rawbatch.unpack(texts, binary), max_bytes=MAX_EVENT_BYTES)
    enriched = enrich_batch([v.event for v in valid], env="fuzz", resolver=FakeResolver(), now=NOW)
    encoded, _, _ = encode_enriched(enriched, [v.raw for v in valid], max_payload=DEFAULT_NATS_MAX_PAYLOAD_BYTES)
    # The enrich actor's fan-out: one JSON message for every sink, decoded by the broker for each sink's actor.
    return list(orjson.loads(orjson.dumps(as_message(encoded))))


# What a sink may refuse of an event the contract took, and why the contract leaves it to the sink:
# - PeerDataError: the graph's reading of the peer in ``args`` (a port that is not one, a protocol that is not
#   text, an address too long for a key). ``args`` is the agent's own payload, which no other sink reads; refused
#   by the graph alone, the event is still stored and published by the others.
LEFT_TO_THE_SINKS: tuple[type[SinkDataError], ...] = (PeerDataError,)


def through_the_pipeline(raws: list[bytes]) -> None:
    """Run ``raws`` as one batch through every pure stage; raise anything a sink's encoder raises for an event
    that passed the contract, but ``LEFT_TO_THE_SINKS``."""
    events = enrich_stage(raws)
    for encoder in ENCODERS:
        # Each event alone, as a sink's poison isolation would split a batch; then the batch, when none is refused.
        refused = 0
        for event in events:
            try:
                encoder([event])
            except LEFT_TO_THE_SINKS:
                refused += 1
        if not refused:
            encoder(events)


# --- hostile JSON ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Raw:
    """JSON text written as it is: what no Python value would serialise to (``1e400``, 5,000 digits, deep
    nesting)."""

    text: str


def to_json(value: Any, *, ascii_only: bool) -> str:
    """``value`` as JSON text; strings through the stdlib, which writes a lone surrogate as a ``\\ud800`` escape
    (``ascii_only``) or raw."""
    if isinstance(value, Raw):
        return value.text
    if isinstance(value, dict):
        return "{" + ",".join(f"{to_json(str(k), ascii_only=ascii_only)}:{to_json(v, ascii_only=ascii_only)}"
                              for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ",".join(to_json(v, ascii_only=ascii_only) for v in value) + "]"
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=ascii_only)
    if isinstance(value, bool) or value is None:
        return json.dumps(value)
    if isinstance(value, int):
        return str(value)
    return repr(value) if value == value and abs(value) != float("inf") else json.dumps(value)


def encoded(text: str) -> bytes:
    """UTF-8, lone surrogates included as the (invalid) bytes they would be."""
    return text.encode("utf-8", "surrogatepass")


def nested(depth: int, leaf: str = "1") -> Raw:
    return Raw('{"x":[' * depth + leaf + "]}" * depth)


SPECIAL_TEXT = ["", " ", "\x00", "a\x00b", "\r\nx-injected: 1", "\t", "\x7f", "\x1b[31m", "\ud800", "\udfff",
                "a\udc80b", "\u00a0", "\u2028", "%", "%s", "%(x)s", "\\", '"', "'", "`", "{", "$rows", "}]}",
                "fe80::1%eth0", "fe80::1%" + "x" * 5000, "::ffff:10.0.0.1", "2001:DB8::1", "10.0.0.1",
                " 10.0.0.1 ", "203.0.113.10\x00", "host-001", "ä" * 300, "😀" * 200]
SPECIAL_NUMBERS = [Raw(t) for t in ("9" * 5000, "-" + "9" * 5000, "1e400", "-1e400", "-0", "0.0", "1E2",
                                    "18446744073709551615", "18446744073709551616", "9223372036854775808",
                                    "-9223372036854775809", "1.5e308", "5e-324")]
EDGE_INTS = [2**63 - 1, 2**63, 2**64 - 1, 2**64, -(2**63), -(2**63) - 1, 0, -1]

hostile_text = st.one_of(
    st.sampled_from(SPECIAL_TEXT),
    st.text(st.characters(codec=None, exclude_categories=()), max_size=40),
    st.builds(lambda s, n: s * n, st.text(min_size=1, max_size=4), st.integers(1, 6_000)),
)
hostile_number = st.one_of(st.sampled_from(EDGE_INTS), st.sampled_from(SPECIAL_NUMBERS),
                           st.integers(-(2**70), 2**70), st.floats())
hostile_scalar = st.one_of(hostile_text, hostile_number, st.booleans(), st.none())
hostile_value = st.one_of(
    hostile_scalar,
    st.integers(1, 200).map(nested),
    st.recursive(hostile_scalar, lambda inner: st.lists(inner, max_size=4)
                 | st.dictionaries(hostile_text, inner, max_size=4), max_leaves=12),
)

METADATA_KEYS = ["host_id", "host_ip", "hostname", "pid", "uid", "user", "container_id", "binary_sha256",
                 "context_tags", "enriched_at", "enrichment_version", hostile_text]
ARGS_KEYS = ["dst_ip", "remote_ip", "dst_port", "remote_port", "protocol", "proto", "argv"]
TOP_FIELDS = ["id", "type", "source", "timestamp", "metadata", "payload", "context", "args", "env", "rdns",
              "host_id", "dst_rdns"]


@st.composite
def hostile_mapping(draw: st.DrawFn, base: Event, keys: list[Any], *, at_least: int = 0) -> Event:
    """``base`` with a few of ``keys`` (a key may be a strategy of its own) set to hostile values."""
    out = dict(base)
    for key in draw(st.lists(st.sampled_from(keys), min_size=at_least, max_size=4)):
        name = draw(key) if isinstance(key, st.SearchStrategy) else key
        out[name] = draw(hostile_scalar if draw(st.booleans()) else hostile_value)
    return out


@st.composite
def payloads(draw: st.DrawFn) -> Any:
    """A payload as producers send it (an object, base64 of JSON, or base64 of base64 of JSON), hostile args
    inside, or a hostile value in its place."""
    args = draw(hostile_mapping({"dst_ip": "203.0.113.10", "dst_port": 443, "protocol": "tcp"}, ARGS_KEYS,
                                at_least=1))
    text = encoded(to_json(args, ascii_only=draw(st.booleans())))
    form = draw(st.sampled_from(["object", "base64", "base64-twice", "hostile", "nested"]))
    if form == "object":
        return args
    if form == "base64":
        return base64.b64encode(text).decode()
    if form == "base64-twice":
        return base64.b64encode(base64.b64encode(text)).decode()
    if form == "nested":
        return base64.b64encode(nested(draw(st.integers(1, 200))).text.encode()).decode()
    return draw(hostile_value)


@st.composite
def near_valid_events(draw: st.DrawFn) -> bytes:
    """A producer's event (``tests.producers``) with hostile metadata, payload and top-level fields."""
    event = draw(st.sampled_from([grpc_event, visibility_event]))(f"fuzz-{draw(st.integers(0, 3))}")
    event["metadata"] = draw(hostile_mapping(event["metadata"], METADATA_KEYS))
    event["payload"] = draw(payloads())
    event = draw(hostile_mapping(event, TOP_FIELDS)) if draw(st.booleans()) else event
    return encoded(to_json(event, ascii_only=draw(st.booleans())))


# --- the tests ------------------------------------------------------------------------------------------------

@settings(FUZZ, max_examples=300)  # cheap: most are not JSON
@given(st.lists(st.binary(max_size=512), min_size=1, max_size=4))
def test_arbitrary_bytes_are_refused_by_the_contract_or_taken_by_every_sink(raws: list[bytes]) -> None:
    through_the_pipeline(raws)


@FUZZ
@given(st.lists(near_valid_events(), min_size=1, max_size=4))
def test_hostile_producer_events_are_refused_by_the_contract_or_taken_by_every_sink(raws: list[bytes]) -> None:
    through_the_pipeline(raws)


@FUZZ
@given(hostile_text | st.from_regex(r"[0-9a-fA-F:.% ]{0,60}", fullmatch=True))
def test_reverse_dns_takes_any_host_text(host: str) -> None:
    """The cache key of a host is a short address without a scope id, or there is none; no host text raises."""
    address = ptr_address(host)
    assert address is None or (len(address) <= len("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff") and "%" not in address)
    fake_name(host)


def test_the_generators_reach_every_encoder() -> None:
    """Events of the producers go all the way through: the fuzzing is not all stopped by validation."""
    raws = [encoded(to_json(grpc_event(), ascii_only=True)), orjson.dumps(visibility_event())]
    events = enrich_stage(raws)
    assert len(events) == 2
    assert all(encoder(events) for encoder in ENCODERS)
