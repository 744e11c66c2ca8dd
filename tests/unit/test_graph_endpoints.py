"""Pure part of the graph's network flows: the endpoint an event talks to, and what a batch sums up per host."""

from __future__ import annotations

from typing import Any

import pytest

from etl.errors import PeerDataError, SinkDataError
from etl.pipeline.peers import MAX_SCOPE_ID_CHARS, MAX_SCOPED_ADDRESS_CHARS
from etl.sinks.graph.endpoints import Endpoint, endpoint_of
from etl.sinks.graph.rows import build_row, build_rows


def flow(event_id: str = "e1", timestamp: int = 1_000, host_id: str | None = "h1", **args: Any) -> dict[str, Any]:
    metadata = {"host_id": host_id} if host_id else {}
    return {"id": event_id, "type": "connect", "source": "/usr/bin/curl", "timestamp": timestamp,
            "env": "prod", "rdns": f"{host_id}.example", "metadata": metadata, "args": args}


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        ({"dst_ip": "10.0.0.5", "dst_port": 443, "protocol": "tcp"}, Endpoint("10.0.0.5:443", "10.0.0.5", 443, "tcp")),
        ({"remote_ip": "10.0.0.5", "remote_port": "53", "proto": "udp"},
         Endpoint("10.0.0.5:53", "10.0.0.5", 53, "udp")),
        ({"dst_ip": "2001:DB8::1", "dst_port": 22}, Endpoint("[2001:db8::1]:22", "2001:db8::1", 22, None)),
        ({"dst_ip": "::FFFF:0A00:0001", "dst_port": 0}, Endpoint("[::ffff:10.0.0.1]:0", "::ffff:10.0.0.1", 0, None)),
        ({"dst_ip": "::ffff:10.0.0.1"}, Endpoint("::ffff:10.0.0.1", "::ffff:10.0.0.1", None, None)),
        ({"dst_ip": "db:5432"}, Endpoint("[db:5432]", "db:5432", None, None)),
        ({"dst_ip": "db", "dst_port": 5432}, Endpoint("db:5432", "db", 5432, None)),
        ({"dst_ip": " 10.0.0.5 "}, Endpoint("10.0.0.5", "10.0.0.5", None, None)),
        ({"dst_ip": "fe80::1%eth0", "dst_port": 80}, Endpoint("[fe80::1%eth0]:80", "fe80::1%eth0", 80, None)),
        ({"dst_ip": "db.internal", "dst_port": 5432, "protocol": 6}, Endpoint("db.internal:5432", "db.internal", 5432,
                                                                               "6")),
        ({"dst_ip": "", "remote_ip": "10.0.0.9", "dst_port": "", "remote_port": 8080},
         Endpoint("10.0.0.9:8080", "10.0.0.9", 8080, None)),
    ],
)
def test_the_endpoint_is_the_destination_keyed_by_address_and_port(args: dict[str, Any], expected: Endpoint) -> None:
    assert endpoint_of(flow(**args)) == expected


def test_an_address_with_the_longest_scope_id_is_canonical_and_longer_text_is_kept_as_sent() -> None:
    scope = "e" * MAX_SCOPE_ID_CHARS
    scoped = f"FFFF:FFFF:FFFF:FFFF:FFFF:FFFF:255.255.255.255%{scope}"
    assert len(scoped) == MAX_SCOPED_ADDRESS_CHARS
    canonical = f"ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff%{scope}"
    assert endpoint_of(flow(dst_ip=scoped)) == Endpoint(canonical, canonical, None, None)
    longer = scoped + "e"
    assert endpoint_of(flow(dst_ip=longer)) == Endpoint(f"[{longer}]", longer, None, None)


def test_an_event_without_a_destination_has_no_endpoint() -> None:
    assert endpoint_of(flow(dst_port=443)) is None
    assert endpoint_of({"id": "e", "metadata": {}}) is None
    assert endpoint_of({"id": "e", "metadata": {}, "args": ["10.0.0.1"]}) is None


@pytest.mark.parametrize("port", [-1, 65_536, "http", "4 43", "\u0664\u0664\u0663", 1.5, True, [443]])
def test_a_port_that_is_not_one_is_a_data_error(port: Any) -> None:
    with pytest.raises(PeerDataError, match="dst_port must be a port number"):
        endpoint_of(flow(dst_ip="10.0.0.1", dst_port=port))


def test_a_protocol_that_is_not_text_is_a_data_error() -> None:
    with pytest.raises(PeerDataError, match="protocol must be"):
        endpoint_of(flow(dst_ip="10.0.0.1", protocol={"name": "tcp"}))


def test_an_endpoint_key_too_long_for_an_index_is_a_data_error() -> None:
    with pytest.raises(PeerDataError, match="endpoint_id"):
        build_row(flow(dst_ip="x" * 5_000))


@pytest.mark.parametrize("args", [{"dst_ip": "x" * 20_000}, {"dst_ip": "10.0.0.1", "protocol": "p" * 20_000}])
def test_a_peer_longer_than_a_property_is_refused_as_the_peers_fault(args: dict[str, Any]) -> None:
    """The payload's peer is the graph's alone to read: its refusals are a kind of their own."""
    with pytest.raises(PeerDataError):
        build_row(flow(**args))


def test_other_refusals_are_not_the_peers() -> None:
    with pytest.raises(SinkDataError) as info:
        build_row(flow(dst_ip="10.0.0.1", host_id="h" * 5_000))
    assert not isinstance(info.value, PeerDataError)


def test_a_row_carries_its_endpoint() -> None:
    row = build_row(flow(dst_ip="10.0.0.5", dst_port="443", protocol="tcp"))
    assert (row["endpoint_id"], row["dst_ip"], row["dst_port"], row["protocol"]) == ("10.0.0.5:443", "10.0.0.5",
                                                                                      443, "tcp")


def test_a_batch_marks_each_hosts_newest_event_whatever_the_order() -> None:
    rows = build_rows([flow("a", 5, "h1"), flow("b", 9, "h1"), flow("c", 7, "h1"), flow("d", 3, "h2"),
                       flow("e", 4, None)])
    assert [r["id"] for r in rows if r["host_newest"]] == ["b", "d"]


def test_a_batch_sums_each_flow_on_its_first_row() -> None:
    to_db = {"dst_ip": "10.0.0.5", "dst_port": 5432}
    rows = build_rows([flow("a", 50, "h1", **to_db), flow("b", 20, "h1", **to_db), flow("c", 90, "h2", **to_db),
                       flow("d", 70, "h1", **to_db), flow("e", 10, "h1", dst_ip="10.0.0.5"),
                       flow("f", 10, None, **to_db), flow("a", 60, "h1", **to_db)])
    sums = {r["id"]: (r["flow_count"], r["flow_first"], r["flow_last"]) for r in rows}
    # "a" came twice: its last copy (at 60) counts, once.
    assert sums == {"a": (3, 20, 70), "b": (0, None, None), "c": (1, 90, 90), "d": (0, None, None),
                    "e": (1, 10, 10), "f": (0, None, None)}


def test_a_row_needs_an_integer_timestamp() -> None:
    with pytest.raises(SinkDataError, match="timestamp must be a number of milliseconds"):
        build_row({"id": "e", "timestamp": "2024-01-01T00:00:00Z"})


def test_every_row_of_an_endpoint_gets_the_first_protocol_the_batch_names_for_it() -> None:
    dns = {"dst_ip": "10.0.0.5", "dst_port": 53}
    rows = build_rows([flow("a", **dns), flow("b", **dns, proto="udp"), flow("c", **dns, protocol="tcp"),
                       flow("d", dst_ip="10.0.0.6")])
    assert [r["protocol"] for r in rows] == ["udp", "udp", "tcp", None]
