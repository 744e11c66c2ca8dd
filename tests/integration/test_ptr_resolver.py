"""The ptr resolver against a real DNS server on loopback (``tests.support.ptrserver``): answers, failures, the time
budget, the cache, deduplication and concurrency. Every query the resolver makes is seen (and counted) by the
server."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime

import pytest
from prometheus_client import REGISTRY

from etl.config import Settings
from etl.pipeline.enrich import enrich_batch
from etl.rdns.cache import entry_bytes
from etl.rdns.ptr import PtrResolver
from tests.support.ptrserver import PtrServer
from tests.waiting import wait_for

SERVFAIL_NET = "192.0.2.0/24"
# Bounds on elapsed time are generous: the machine is shared and the tests run beside real servers.
SLACK_S = 1.0
NOW = datetime(2024, 1, 1, tzinfo=UTC)


def metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


@pytest.fixture
def server() -> Iterator[PtrServer]:
    with PtrServer(servfail=[SERVFAIL_NET]) as srv:
        srv.add("10.0.0.1", "a.example.com.", 300)
        srv.add("2001:db8::1", "v6.example.com", 300)
        yield srv


@pytest.fixture
def make_resolver() -> Iterator[Callable[..., PtrResolver]]:
    made: list[PtrResolver] = []

    def make(*servers: PtrServer, **env: object) -> PtrResolver:
        settings = Settings.from_env({"RDNS_MODE": "ptr", "RDNS_NAMESERVERS": ",".join(s.nameserver for s in servers),
                                      **{k: str(v) for k, v in env.items()}})
        made.append(PtrResolver.from_settings(settings))
        return made[-1]

    yield make
    for resolver in made:
        resolver.close()


def test_a_hit_is_the_ptr_name_without_its_final_dot(server: PtrServer, make_resolver: Callable[..., PtrResolver]
                                                     ) -> None:
    ok, latencies = metric("etl_rdns_lookups_total", result="ok"), metric("etl_rdns_lookup_seconds_count")
    assert make_resolver(server).resolve(["10.0.0.1"]) == {"10.0.0.1": "a.example.com"}
    assert server.queries("10.0.0.1") == 1
    assert metric("etl_rdns_lookups_total", result="ok") == ok + 1
    assert metric("etl_rdns_lookup_seconds_count") == latencies + 1


def test_ipv6_addresses_are_asked_under_ip6_arpa(server: PtrServer, make_resolver: Callable[..., PtrResolver]
                                                 ) -> None:
    resolver = make_resolver(server)
    assert resolver.resolve(["2001:DB8:0::1"]) == {"2001:DB8:0::1": "v6.example.com"}
    assert server.queries("2001:db8::1") == 1, "the server decoded the nibble name back to the address"


def test_nxdomain_is_null_and_kept_as_a_negative_answer(server: PtrServer,
                                                        make_resolver: Callable[..., PtrResolver]) -> None:
    resolver = make_resolver(server)
    nxdomain, hits = metric("etl_rdns_lookups_total", result="nxdomain"), metric("etl_rdns_cache_requests_total",
                                                                                 result="hit")
    assert resolver.resolve(["10.9.9.9"]) == {"10.9.9.9": None}
    assert metric("etl_rdns_lookups_total", result="nxdomain") == nxdomain + 1
    assert resolver.resolve(["10.9.9.9"]) == {"10.9.9.9": None}
    assert server.queries("10.9.9.9") == 1, "the negative answer came from the cache the second time"
    assert metric("etl_rdns_cache_requests_total", result="hit") == hits + 1


def test_servfail_is_null_and_counted(server: PtrServer, make_resolver: Callable[..., PtrResolver]) -> None:
    servfail = metric("etl_rdns_lookups_total", result="servfail")
    assert make_resolver(server).resolve(["192.0.2.7", "10.0.0.1"]) == {"192.0.2.7": None, "10.0.0.1": "a.example.com"}
    assert server.queries("192.0.2.7") >= 1
    assert metric("etl_rdns_lookups_total", result="servfail") == servfail + 1


def test_host_names_are_not_ptr_resolved(server: PtrServer, make_resolver: Callable[..., PtrResolver]) -> None:
    assert make_resolver(server).resolve(["web01.example.com", "host-001"]) == {"web01.example.com": None,
                                                                                 "host-001": None}
    assert server.queries() == 0


def test_a_server_that_never_answers_is_held_to_the_batch_budget(make_resolver: Callable[..., PtrResolver]) -> None:
    addresses = [f"10.1.0.{i}" for i in range(1, 11)]
    with PtrServer(silent=True) as silent:
        resolver = make_resolver(silent, RDNS_TIMEOUT_MS=10_000, RDNS_BATCH_BUDGET_MS=300)
        exhausted = metric("etl_rdns_budget_exhausted_total")
        started = time.monotonic()
        names = resolver.resolve(addresses)
        elapsed = time.monotonic() - started
        assert names == dict.fromkeys(addresses)
        assert 0.25 <= elapsed < 0.3 + SLACK_S, f"took {elapsed:.2f}s with a 0.3s budget and 10s lookups"
        assert metric("etl_rdns_budget_exhausted_total") == exhausted + len(addresses)
        wait_for(lambda: silent.queries() >= len(addresses), timeout_s=5, describe=lambda: f"{silent.queries()}")


def test_a_lookup_timeout_is_null_counted_and_kept_as_negative(make_resolver: Callable[..., PtrResolver]) -> None:
    with PtrServer(silent=True) as silent:
        resolver = make_resolver(silent, RDNS_TIMEOUT_MS=200, RDNS_BATCH_BUDGET_MS=5_000)
        timeouts, exhausted = metric("etl_rdns_lookups_total", result="timeout"), metric(
            "etl_rdns_budget_exhausted_total")
        started = time.monotonic()
        assert resolver.resolve(["10.2.0.1"]) == {"10.2.0.1": None}
        assert time.monotonic() - started < 0.2 + SLACK_S, "the lookup's own timeout ended it, not the budget"
        assert metric("etl_rdns_lookups_total", result="timeout") == timeouts + 1
        assert metric("etl_rdns_budget_exhausted_total") == exhausted, "answered (negatively) within the budget"
        asked = silent.queries("10.2.0.1")
        assert resolver.resolve(["10.2.0.1"]) == {"10.2.0.1": None}
        assert silent.queries("10.2.0.1") == asked, "a timeout is cached like any negative answer"


def test_the_next_nameserver_answers_when_the_first_does_not(server: PtrServer,
                                                             make_resolver: Callable[..., PtrResolver]) -> None:
    with PtrServer(silent=True) as silent:
        resolver = make_resolver(silent, server, RDNS_TIMEOUT_MS=2_000, RDNS_BATCH_BUDGET_MS=5_000)
        assert resolver.resolve(["10.0.0.1"]) == {"10.0.0.1": "a.example.com"}
        assert silent.queries("10.0.0.1") == 1 and server.queries("10.0.0.1") == 1


def test_an_expired_answer_is_asked_again(server: PtrServer, make_resolver: Callable[..., PtrResolver]) -> None:
    server.add("10.3.0.1", "old.example.com", 1)
    resolver = make_resolver(server, RDNS_MIN_TTL_S=0)
    assert resolver.resolve(["10.3.0.1"]) == {"10.3.0.1": "old.example.com"}
    server.add("10.3.0.1", "new.example.com", 1)
    assert resolver.resolve(["10.3.0.1"]) == {"10.3.0.1": "old.example.com"}, "still within its TTL"
    assert server.queries("10.3.0.1") == 1
    wait_for(lambda: resolver.resolve(["10.3.0.1"])["10.3.0.1"] == "new.example.com", timeout_s=10, interval_s=0.1)
    assert server.queries("10.3.0.1") == 2, "asked again once, after the TTL ran out"


def test_max_ttl_shortens_a_long_record_ttl(server: PtrServer, make_resolver: Callable[..., PtrResolver]) -> None:
    resolver = make_resolver(server, RDNS_MIN_TTL_S=0, RDNS_MAX_TTL_S=1)
    assert resolver.resolve(["10.0.0.1"]) == {"10.0.0.1": "a.example.com"}  # the record says 300 s
    wait_for(lambda: resolver.resolve(["10.0.0.1"]) and server.queries("10.0.0.1") == 2, timeout_s=10,
             interval_s=0.1)


def test_one_query_per_distinct_address(server: PtrServer, make_resolver: Callable[..., PtrResolver]) -> None:
    hosts = ["10.0.0.1", " 10.0.0.1", "2001:db8::1", "2001:DB8:0:0::1", "10.9.9.8", "10.9.9.8"]
    names = make_resolver(server).resolve(hosts)
    assert names == {"10.0.0.1": "a.example.com", " 10.0.0.1": "a.example.com", "2001:db8::1": "v6.example.com",
                     "2001:DB8:0:0::1": "v6.example.com", "10.9.9.8": None}
    assert server.queries() == 3


def test_lookups_of_a_batch_run_concurrently(make_resolver: Callable[..., PtrResolver]) -> None:
    addresses = [f"10.4.0.{i}" for i in range(1, 21)]
    with PtrServer(delay_s=0.2) as slow:
        for i, address in enumerate(addresses):
            slow.add(address, f"n{i}.example.com", 300)
        resolver = make_resolver(slow, RDNS_TIMEOUT_MS=5_000, RDNS_BATCH_BUDGET_MS=10_000)
        started = time.monotonic()
        names = resolver.resolve(addresses)
        elapsed = time.monotonic() - started
    assert names == {a: f"n{i}.example.com" for i, a in enumerate(addresses)}
    assert elapsed < 0.2 + SLACK_S, f"20 lookups of 0.2s each took {elapsed:.2f}s: not concurrent"


def test_concurrent_batches_share_a_lookup_in_flight(make_resolver: Callable[..., PtrResolver]) -> None:
    addresses = [f"10.5.0.{i}" for i in range(1, 6)]
    with PtrServer(delay_s=0.3) as slow:
        for address in addresses:
            slow.add(address, f"{address.replace('.', '-')}.example.com", 300)
        resolver = make_resolver(slow, RDNS_TIMEOUT_MS=5_000, RDNS_BATCH_BUDGET_MS=10_000)
        results: list[dict[str, str | None]] = []
        threads = [threading.Thread(target=lambda: results.append(resolver.resolve(addresses))) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=10)
        assert len(results) == 4 and all(r == results[0] for r in results)
        assert all(name is not None for name in results[0].values())
        assert [slow.queries(a) for a in addresses] == [1] * len(addresses)


def test_an_answer_after_the_budget_still_fills_the_cache(make_resolver: Callable[..., PtrResolver]) -> None:
    with PtrServer(delay_s=0.5) as slow:
        slow.add("10.6.0.1", "late.example.com", 300)
        resolver = make_resolver(slow, RDNS_TIMEOUT_MS=5_000, RDNS_BATCH_BUDGET_MS=100)
        exhausted = metric("etl_rdns_budget_exhausted_total")
        started = time.monotonic()
        assert resolver.resolve(["10.6.0.1"]) == {"10.6.0.1": None}
        assert time.monotonic() - started < 0.1 + SLACK_S
        assert metric("etl_rdns_budget_exhausted_total") == exhausted + 1
        wait_for(lambda: resolver.resolve(["10.6.0.1"])["10.6.0.1"] == "late.example.com", timeout_s=10)
        assert slow.queries("10.6.0.1") == 1, "later batches joined the lookup in flight, then hit the cache"


def test_an_answer_cached_after_a_miss_is_not_asked_again(server: PtrServer, make_resolver: Callable[..., PtrResolver],
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """Thread B misses the cache just before thread A's lookup of the same address fills it and leaves the table
    of lookups in flight; B must then take A's answer from the cache instead of querying again."""
    resolver = make_resolver(server)
    assert resolver.resolve(["10.0.0.1"]) == {"10.0.0.1": "a.example.com"}  # A: one query, cached
    cache = resolver._cache
    real_get = cache.get
    stale = {"10.0.0.1"}  # B's first look, made before A's answer landed

    def get(address: str) -> object:
        return None if stale and stale.pop() == address else real_get(address)

    monkeypatch.setattr(cache, "get", get)
    assert resolver.resolve(["10.0.0.1"]) == {"10.0.0.1": "a.example.com"}
    assert server.queries("10.0.0.1") == 1



def scoped_events(count: int, scope_chars: int) -> Iterator[dict[str, object]]:
    """Parsed events whose host and peer are link-local IPv6 addresses with a long scope id, each a distinct one."""
    for i in range(count):
        scope = f"{i:06d}" + "s" * scope_chars
        yield {"id": f"scoped-{i}", "type": "connect", "source": "", "timestamp": 1,
               "args": {"dst_ip": f"fe80::2%{scope}"},
               "metadata": {"host_id": f"host-{i}", "host_ip": f"fe80::1%{scope}"}}


def test_addresses_with_a_long_scope_id_leave_the_cache_small(server: PtrServer,
                                                              make_resolver: Callable[..., PtrResolver]) -> None:
    """400 events with a 200 KB scope id on both sides, in batches of 50, beside a plain address and a short
    scope id: only the plain address is asked and cached."""
    resolver = make_resolver(server)
    events = scoped_events(400, 200_000)
    for _ in range(8):
        batch = [next(events) for _ in range(50)]
        batch.append({**batch[0], "id": "plain", "metadata": {"host_ip": "10.0.0.1"},
                      "args": {"dst_ip": "fe80::3%eth0"}})
        out = enrich_batch(batch, env="test", resolver=resolver, now=NOW)
        assert [(e["rdns"], e["dst_rdns"]) for e in out] == [(None, None)] * 50 + [("a.example.com", None)]
    assert server.queries() == 1, "only the plain address was asked"
    assert metric("etl_rdns_cache_entries") == 1
    assert metric("etl_rdns_cache_bytes") == entry_bytes("10.0.0.1", "a.example.com")


def test_the_cache_byte_bound_evicts_the_least_recently_used(make_resolver: Callable[..., PtrResolver]) -> None:
    addresses = [f"10.7.0.{i}" for i in range(1, 10)]
    bound = 3 * entry_bytes(addresses[0], "n1.example.com")
    with PtrServer() as names:
        for i, address in enumerate(addresses, start=1):
            names.add(address, f"n{i}.example.com", 300)
        resolver = make_resolver(names, RDNS_CACHE_BYTES=bound)
        for address in addresses:
            resolver.resolve([address])
        assert metric("etl_rdns_cache_entries") == 3 and metric("etl_rdns_cache_bytes") == bound
        assert resolver.resolve([addresses[-1]]) == {addresses[-1]: "n9.example.com"}
        assert names.queries(addresses[-1]) == 1, "among the most recent: still cached"
        assert resolver.resolve([addresses[0]]) == {addresses[0]: "n1.example.com"}
        assert names.queries(addresses[0]) == 2, "the first was evicted and asked again"
