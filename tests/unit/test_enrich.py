"""Pure enrichment, the choice of addresses to resolve, and the fake reverse DNS."""

from __future__ import annotations

import copy
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta, timezone

import pytest

from etl.config import Settings
from etl.pipeline.enrich import ENRICHMENT_VERSION, enrich_batch, format_time, host_of
from etl.pipeline.peers import MAX_ADDRESS_CHARS, destination_of
from etl.rdns import strategies
from etl.rdns.hosts import MAX_HOST_CHARS, ptr_address
from etl.rdns.ptr import PtrResolver
from etl.rdns.strategies import FakeResolver, OffResolver, fake_name, resolver_for

NOW = datetime(2024, 1, 1, 12, 0, 0, 123456, tzinfo=UTC)


@pytest.mark.parametrize(("host", "name"), [
    ("192.168.1.100", "host-100.local"),
    ("10.1.2.3", "host-3.local"),
    ("2001:db8::8a2e:370:7334", "host-7334.local"),
    ("fe80::", "host-0.local"),
    ("web01.prod.example.com", "host-com.local"),
    ("host-001", "host-001.local"),
    ("db-eu-7", "host-7.local"),
    ("laptop", "host-laptop.local"),
    ("example.org.", "host-org.local"),
])
def test_fake_names(host: str, name: str) -> None:
    assert fake_name(host) == name


def test_host_prefers_ip_then_hostname_then_host_id() -> None:
    assert host_of({"metadata": {"host_id": "h", "hostname": "n.x", "host_ip": "1.2.3.4"}}) == "1.2.3.4"
    assert host_of({"metadata": {"host_id": "h", "hostname": "n.x"}}) == "n.x"
    assert host_of({"metadata": {"host_id": "h", "host_ip": ""}}) == "h"
    assert host_of({"metadata": {}}) is None


def test_enriched_at_is_utc_with_milliseconds() -> None:
    assert format_time(NOW) == "2024-01-01T12:00:00.123Z"
    assert format_time(NOW.astimezone(timezone(timedelta(hours=2)))) == "2024-01-01T12:00:00.123Z"


def test_enrich_keeps_every_field_and_adds_the_enrichment() -> None:
    events = [
        {"id": "a", "type": "t", "source": "s", "timestamp": 1, "x": [1], "metadata": {"host_ip": "10.0.0.9"}},
        {"id": "b", "type": "t", "source": "s", "timestamp": 2, "metadata": {}},
    ]
    out = enrich_batch(events, env="prod", resolver=FakeResolver(), now=NOW)
    assert out[0]["x"] == [1] and out[0]["env"] == "prod" and out[0]["rdns"] == "host-9.local"
    assert out[0]["metadata"] == {"host_ip": "10.0.0.9", "enriched_at": "2024-01-01T12:00:00.123Z",
                                  "enrichment_version": ENRICHMENT_VERSION}
    assert out[1]["rdns"] is None
    assert events[0]["metadata"] == {"host_ip": "10.0.0.9"}, "input must not be mutated"
    assert set(out[1]) == {"id", "type", "source", "timestamp", "metadata", "env", "rdns", "dst_rdns", "host_id",
                           "context", "intel", "src_asset", "dst_asset", "dst_geo"}


@pytest.mark.parametrize(("metadata", "host_id"), [
    ({"host_id": "host-001"}, "host-001"), ({"host_id": 42}, "42"), ({"host_id": ""}, None), ({}, None),
])
def test_host_id_is_lifted_to_the_top_as_a_string(metadata: dict[str, object], host_id: str | None) -> None:
    events = [{"id": "a", "host_id": "sent by the agent", "metadata": metadata}]
    out = enrich_batch(events, env="prod", resolver=OffResolver(), now=NOW)
    assert out[0]["host_id"] == host_id
    assert out[0]["metadata"].get("host_id") == metadata.get("host_id"), "metadata keeps it as it was"
    assert events[0]["host_id"] == "sent by the agent"


def test_context_gathers_the_flattened_agent_context_and_the_enrichment() -> None:
    metadata = {"host_id": "h1", "host_ip": "10.0.0.9", "context_tags": "[dev web]", "context_kernel": "6.6",
                "context_seq": 7, "pid": "42", "contextual": "not a context key"}
    events = [{"id": "a", "args": {"dst_ip": "203.0.113.10"}, "metadata": metadata}]
    out = enrich_batch(events, env="prod", resolver=FakeResolver(), now=NOW)[0]
    assert out["context"] == {"tags": "[dev web]", "kernel": "6.6", "seq": 7, "env": "prod",
                              "rdns": "host-9.local", "dst_rdns": "host-10.local", "intel_match": False}
    assert (out["env"], out["rdns"], out["dst_rdns"]) == ("prod", "host-9.local", "host-10.local")
    assert out["metadata"]["context_tags"] == "[dev web]", "metadata keeps the flattened keys"


def test_context_without_any_is_the_enrichment_alone() -> None:
    out = enrich_batch([{"id": "a", "metadata": {}}], env="dev", resolver=OffResolver(), now=NOW)[0]
    assert out["context"] == {"env": "dev", "rdns": None, "dst_rdns": None, "intel_match": False}


def test_an_agents_context_object_is_kept_and_the_enrichment_wins_a_clash() -> None:
    agent_context = {"team": "payments", "tags": "from the object", "env": "agent's", "rdns": "agent's"}
    event = {"id": "a", "metadata": {"host_ip": "10.0.0.9", "context_tags": "[dev web]"}, "context": agent_context}
    before = copy.deepcopy(event)
    out = enrich_batch([event], env="prod", resolver=FakeResolver(), now=NOW)[0]
    assert out["context"] == {"team": "payments", "tags": "[dev web]", "env": "prod", "rdns": "host-9.local",
                              "dst_rdns": None, "intel_match": False}
    assert event == before, "input must not be mutated"


def test_rdns_off_gives_null() -> None:
    out = enrich_batch([{"id": "a", "metadata": {"host_ip": "10.0.0.9"}}], env="dev", resolver=OffResolver(), now=NOW)
    assert out[0]["rdns"] is None


class Recording:
    """A resolver that remembers what it was asked, and names every host ``<host>.ptr``."""

    def __init__(self) -> None:
        self.calls: list[list[str]] = []

    def resolve(self, hosts: Iterable[str]) -> dict[str, str | None]:
        asked = list(hosts)
        self.calls.append(asked)
        return {h: f"{h}.ptr" for h in asked}


def connect(event_id: str, host_ip: str, args: dict[str, object] | None) -> dict[str, object]:
    event: dict[str, object] = {"id": event_id, "type": "connect", "metadata": {"host_ip": host_ip}}
    if args is not None:
        event["args"] = args
    return event


@pytest.mark.parametrize(("args", "peer"), [
    ({"dst_ip": "203.0.113.10", "dst_port": 443}, "203.0.113.10"),
    ({"remote_ip": " 2001:db8::5 "}, "2001:db8::5"),
    ({"dst_ip": "203.0.113.10", "remote_ip": "198.51.100.1"}, "203.0.113.10"),
    ({"dst_ip": "", "remote_ip": "198.51.100.1"}, "198.51.100.1"),
    ({"dst_ip": 3405803786}, None),
    ({"path": "/etc/passwd"}, None),
    (None, None),
])
def test_destination_comes_from_the_decoded_payload(args: dict[str, object] | None, peer: str | None) -> None:
    assert destination_of(connect("a", "10.0.0.1", args)) == peer


def test_one_resolve_call_per_batch_for_every_distinct_host_and_peer() -> None:
    events = [connect("a", "10.0.0.1", {"dst_ip": "203.0.113.10"}),
              connect("b", "10.0.0.1", {"dst_ip": "10.0.0.2"}),
              connect("c", "10.0.0.2", {"remote_ip": "203.0.113.10"}),
              connect("d", "10.0.0.3", {"path": "/tmp/x"})]
    resolver = Recording()
    out = enrich_batch(events, env="prod", resolver=resolver, now=NOW)
    assert len(resolver.calls) == 1
    assert sorted(resolver.calls[0]) == ["10.0.0.1", "10.0.0.2", "10.0.0.3", "203.0.113.10"]
    assert [(e["rdns"], e["dst_rdns"]) for e in out] == [
        ("10.0.0.1.ptr", "203.0.113.10.ptr"), ("10.0.0.1.ptr", "10.0.0.2.ptr"),
        ("10.0.0.2.ptr", "203.0.113.10.ptr"), ("10.0.0.3.ptr", None)]


def test_fake_mode_names_the_destination_too_and_off_nulls_it() -> None:
    events = [connect("a", "10.0.0.9", {"dst_ip": "203.0.113.10"})]
    assert enrich_batch(events, env="dev", resolver=FakeResolver(), now=NOW)[0]["dst_rdns"] == "host-10.local"
    assert enrich_batch(events, env="dev", resolver=OffResolver(), now=NOW)[0]["dst_rdns"] is None


def test_enrichment_version_changed_with_the_lookup_fields() -> None:
    assert ENRICHMENT_VERSION == "6"


@pytest.mark.parametrize(("mode", "kind"), [("off", OffResolver), ("fake", FakeResolver), ("ptr", PtrResolver)])
def test_resolver_follows_rdns_mode(mode: str, kind: type) -> None:
    resolver = resolver_for(Settings.from_env({"RDNS_MODE": mode, "RDNS_NAMESERVERS": "127.0.0.1:5353"}))
    assert isinstance(resolver, kind)
    if isinstance(resolver, PtrResolver):
        resolver.close()


@pytest.mark.parametrize(("host", "address"), [
    ("10.1.2.3", "10.1.2.3"), (" 10.1.2.3 ", "10.1.2.3"), ("2001:DB8:0::1", "2001:db8::1"),
    ("web01.example.com", None), ("host-001", None), ("", None), ("10.1.2.300", None),
    ("ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255", "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"),
    ("fe80::1%eth0", None), ("fe80::1%" + "x" * 200_000, None), (" " * 300 + "10.1.2.3", None),
    ("0" * 60 + "::1", None),
])
def test_only_ip_addresses_without_a_scope_are_ptr_resolved(host: str, address: str | None) -> None:
    assert ptr_address(host) == address


def test_the_longest_address_text_fits_the_bound() -> None:
    assert len("ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255") == MAX_ADDRESS_CHARS


HUGE = "fe80::1%" + "x" * 200_000


def test_a_host_field_longer_than_a_host_name_is_skipped() -> None:
    assert host_of({"metadata": {"host_ip": HUGE, "hostname": "web01.example.com"}}) == "web01.example.com"
    assert host_of({"metadata": {"host_ip": "1" * (MAX_HOST_CHARS + 1), "host_id": "h"}}) == "h"
    assert host_of({"metadata": {"host_id": "h" * MAX_HOST_CHARS}}) == "h" * MAX_HOST_CHARS
    assert host_of({"metadata": {"host_ip": HUGE}}) is None


def test_no_oversized_host_or_peer_reaches_the_resolver() -> None:
    events = [connect(f"e{i}", HUGE + str(i), {"dst_ip": HUGE + str(i)}) for i in range(3)]
    resolver = Recording()
    out = enrich_batch([*events, connect("ok", "10.0.0.1", {"dst_ip": "fe80::2%eth0"})], env="prod",
                       resolver=resolver, now=NOW)
    assert sorted(resolver.calls[0]) == ["10.0.0.1", "fe80::2%eth0"]
    assert [(e["rdns"], e["dst_rdns"]) for e in out] == [(None, None)] * 3 + [("10.0.0.1.ptr", "fe80::2%eth0.ptr")]


def test_fake_names_of_oversized_hosts_are_null_and_not_cached() -> None:
    before = strategies._fake_name.cache_info().currsize
    assert FakeResolver().resolve([HUGE + str(i) for i in range(50)]) == {HUGE + str(i): None for i in range(50)}
    assert strategies._fake_name.cache_info().currsize == before
