"""Pure enrichment and the fake reverse DNS."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from etl.enrich import ENRICHMENT_VERSION, enrich_batch, format_time, host_of
from etl.rdns import FakeResolver, OffResolver, fake_name

NOW = datetime(2024, 1, 1, 12, 0, 0, 123456, tzinfo=timezone.utc)


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


def test_rdns_off_gives_null() -> None:
    out = enrich_batch([{"id": "a", "metadata": {"host_ip": "10.0.0.9"}}], env="dev", resolver=OffResolver(), now=NOW)
    assert out[0]["rdns"] is None
