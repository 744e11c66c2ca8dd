"""The reverse-DNS cache: TTL clamping, negative answers, expiry on an injected clock, the size limits (entries
and bytes)."""

from __future__ import annotations

import sys

import pytest

from etl.rdns.cache import ENTRY_OVERHEAD_BYTES, DnsCache, TtlPolicy, entry_bytes

POLICY = TtlPolicy(min_ttl_s=60, max_ttl_s=3600, negative_ttl_s=30)
ROOMY = 1 << 30  # bytes: a bound no test but the byte-bound ones reaches


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize(("record_ttl", "kept"), [(0, 60), (59, 60), (60, 60), (300, 300), (3600, 3600),
                                                  (86_400, 3600)])
def test_positive_ttl_is_clamped_to_the_bounds(record_ttl: int, kept: int) -> None:
    assert POLICY.positive(record_ttl) == kept


def test_a_positive_answer_lives_for_its_clamped_ttl() -> None:
    clock = Clock()
    cache = DnsCache(10, POLICY, max_bytes=ROOMY, clock=clock)
    cache.put_name("10.0.0.1", "a.example.com", 300)
    clock.now += 299.9
    entry = cache.get("10.0.0.1")
    assert entry is not None and entry.name == "a.example.com"
    clock.now += 0.1
    assert cache.get("10.0.0.1") is None
    assert len(cache) == 0, "an expired entry is dropped when met"


def test_a_short_record_ttl_is_kept_for_the_minimum() -> None:
    clock = Clock()
    cache = DnsCache(10, POLICY, max_bytes=ROOMY, clock=clock)
    cache.put_name("10.0.0.1", "a.example.com", 5)
    clock.now += 59
    assert cache.get("10.0.0.1") is not None
    clock.now += 1
    assert cache.get("10.0.0.1") is None


def test_a_negative_answer_is_kept_for_the_negative_ttl() -> None:
    clock = Clock()
    cache = DnsCache(10, POLICY, max_bytes=ROOMY, clock=clock)
    cache.put_negative("10.0.0.2")
    entry = cache.get("10.0.0.2")
    assert entry is not None and entry.name is None, "a cached 'no name' is a hit, not a miss"
    clock.now += 30
    assert cache.get("10.0.0.2") is None


def test_a_new_answer_replaces_the_old_one() -> None:
    clock = Clock()
    cache = DnsCache(10, POLICY, max_bytes=ROOMY, clock=clock)
    cache.put_negative("10.0.0.1")
    cache.put_name("10.0.0.1", "a.example.com", 600)
    clock.now += 100
    entry = cache.get("10.0.0.1")
    assert entry is not None and entry.name == "a.example.com"


def test_the_least_recently_used_entry_goes_first_when_full() -> None:
    cache = DnsCache(3, POLICY, max_bytes=ROOMY, clock=Clock())
    for i in range(3):
        cache.put_name(f"10.0.0.{i}", f"h{i}", 600)
    assert cache.get("10.0.0.0") is not None  # now the most recently used
    cache.put_name("10.0.0.9", "h9", 600)
    assert len(cache) == 3
    assert cache.get("10.0.0.1") is None, "the least recently used was evicted"
    assert [cache.get(a) is not None for a in ("10.0.0.0", "10.0.0.2", "10.0.0.9")] == [True, True, True]


def test_zero_ttl_keeps_nothing() -> None:
    cache = DnsCache(3, TtlPolicy(min_ttl_s=0, max_ttl_s=10, negative_ttl_s=1), max_bytes=ROOMY, clock=Clock())
    cache.put_name("10.0.0.1", "a", 10)
    cache.put_name("10.0.0.1", "a", 0)
    assert cache.get("10.0.0.1") is None and len(cache) == 0


def test_size_must_be_positive() -> None:
    with pytest.raises(ValueError):
        DnsCache(0, POLICY, max_bytes=ROOMY)
    with pytest.raises(ValueError):
        DnsCache(10, POLICY, max_bytes=0)


def test_an_entry_counts_its_strings_and_a_fixed_overhead() -> None:
    assert entry_bytes("10.0.0.1", None) == sys.getsizeof("10.0.0.1") + ENTRY_OVERHEAD_BYTES
    assert entry_bytes("10.0.0.1", "a.example.com") == (sys.getsizeof("10.0.0.1") + sys.getsizeof("a.example.com")
                                                        + ENTRY_OVERHEAD_BYTES)


def test_the_least_recently_used_entries_go_first_past_the_byte_bound() -> None:
    one = entry_bytes("10.0.0.0", "h0.example.com")
    cache = DnsCache(1000, POLICY, max_bytes=3 * one, clock=Clock())
    for i in range(3):
        cache.put_name(f"10.0.0.{i}", f"h{i}.example.com", 600)
    assert (len(cache), cache.size_bytes) == (3, 3 * one)
    assert cache.get("10.0.0.0") is not None  # now the most recently used
    cache.put_name("10.0.0.9", "h9.example.com", 600)
    assert (len(cache), cache.size_bytes) == (3, 3 * one), "the entry limit is far; the byte bound evicted"
    assert cache.get("10.0.0.1") is None, "the least recently used was evicted"
    cache.put_name("10.0.0.8", "a-much-longer-name-than-the-others.example.com", 600)
    assert cache.size_bytes <= 3 * one and len(cache) == 2, "a larger entry pushes out as many as it needs"
    assert [cache.get(a) is not None for a in ("10.0.0.2", "10.0.0.0", "10.0.0.9")] == [False, False, True]


def test_an_entry_larger_than_the_whole_bound_is_not_kept() -> None:
    cache = DnsCache(10, POLICY, max_bytes=1000, clock=Clock())
    cache.put_name("10.0.0.1", "a.example.com", 600)
    cache.put_negative("fe80::1%" + "x" * 2000)
    assert len(cache) == 1 and cache.get("10.0.0.1") is not None, "it pushed nothing out either"


def test_bytes_are_given_back_on_replace_expiry_and_eviction() -> None:
    clock = Clock()
    cache = DnsCache(2, POLICY, max_bytes=ROOMY, clock=clock)
    cache.put_negative("10.0.0.1")
    cache.put_name("10.0.0.1", "a.example.com", 60)
    assert cache.size_bytes == entry_bytes("10.0.0.1", "a.example.com"), "the replaced entry's bytes went back"
    cache.put_negative("10.0.0.2")
    cache.put_negative("10.0.0.3")  # past two entries: 10.0.0.1 goes
    assert cache.size_bytes == 2 * entry_bytes("10.0.0.2", None)
    clock.now += 30
    assert cache.get("10.0.0.2") is None and cache.get("10.0.0.3") is None
    assert (len(cache), cache.size_bytes) == (0, 0)
