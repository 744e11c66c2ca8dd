"""Settings: defaults, parsing (lists into tuples, once), one-line errors, redaction."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path

import pytest

from etl.config import ENV_VARS, Settings
from etl.envvalues import declaration
from etl.errors import ConfigError


def test_defaults() -> None:
    s = Settings.from_env({})
    assert (s.max_batch_size, s.pg_db, s.af_env, s.fake_rdns, s.processing_timeout_s) == (500, "aegisflux", "dev",
                                                                                          False, 30)
    assert s.max_event_bytes == 1024 * 1024
    assert (s.pg_user, s.pg_password) == ("postgres", "password")  # the original AegisFlux's defaults


@pytest.mark.parametrize(("env", "message"), [
    ({"MAX_BATCH_SIZE": "abc"}, "MAX_BATCH_SIZE must be a positive integer, got 'abc'"),
    ({"MAX_BATCH_SIZE": "0"}, "MAX_BATCH_SIZE must be a positive integer, got '0'"),
    ({"AF_FAKE_RDNS": "maybe"}, "AF_FAKE_RDNS must be true or false, got 'maybe'"),
    ({"PG_TABLE": "events; drop"}, "PG_TABLE must be an identifier"),
    ({"NATS_URL": "http://x"}, "NATS_URL must be a URL with scheme"),
    ({"NEO4J_URI": "falkor://h:notaport"}, "NEO4J_URI has an invalid port"),
    ({"NATS_SUBJECT_RAW": "events.>"}, "NATS_SUBJECT_RAW must be a literal NATS subject"),
    ({"RETRY_MIN_BACKOFF_MS": "9", "RETRY_MAX_BACKOFF_MS": "5"}, "must not exceed"),
    ({"LOOKUP_RELOAD_S": "-1"}, "LOOKUP_RELOAD_S must be a non-negative integer, got '-1'"),
    ({"ASSETS_PATH": "/"}, "ASSETS_PATH must name a file, not a directory, got '/'"),
    ({"GEOIP_ASN_PATH": "/"}, "GEOIP_ASN_PATH must name a file, not a directory"),
    ({"INTEL_PATHS": "/feeds,/bad\npath"}, "INTEL_PATHS must be a path without control characters"),
])
def test_bad_values_fail_with_one_clear_line(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        Settings.from_env(env)
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_lookup_paths_need_not_exist_yet(tmp_path: Path) -> None:
    """A feed or database may be delivered after the workers start: a missing path is no configuration error."""
    s = Settings.from_env({"INTEL_PATHS": f" {tmp_path}/feeds , {tmp_path}/bad.txt,",
                           "ASSETS_PATH": f"{tmp_path}/a.csv", "GEOIP_CITY_PATH": f"{tmp_path}/c.mmdb"})
    assert s.intel_paths == (f"{tmp_path}/feeds", f"{tmp_path}/bad.txt")
    assert (s.assets_path, s.geoip_city_path, s.geoip_asn_path, s.lookup_reload_s) == (f"{tmp_path}/a.csv",
                                                                                       f"{tmp_path}/c.mmdb", "", 30)
    assert s.to_env()["INTEL_PATHS"] == f"{tmp_path}/feeds,{tmp_path}/bad.txt"
    assert Settings.from_env({}).intel_paths == ()


def test_secrets_are_redacted() -> None:
    s = Settings.from_env({"PG_PASSWORD": "hunter2", "NEO4J_PASSWORD": "pw2", "NATS_URL": "nats://u:tok@h:4222"})
    text = repr(s)
    assert "hunter2" not in text and "pw2" not in text and "tok" not in text
    assert s.redacted()["NATS_URL"] == "nats://u:***@h:4222"
    assert set(s.redacted()) == set(ENV_VARS)


def test_to_env_round_trips() -> None:
    s = Settings.from_env({"PG_PASSWORD": "pw", "AF_FAKE_RDNS": "yes", "MAX_BATCH_SIZE": "7"})
    assert Settings.from_env(s.to_env()) == s


@pytest.mark.parametrize(("env", "mode"), [
    ({}, "off"),
    ({"AF_FAKE_RDNS": "true"}, "fake"),
    ({"AF_FAKE_RDNS": "false"}, "off"),
    ({"RDNS_MODE": "PTR"}, "ptr"),
    ({"RDNS_MODE": "off", "AF_FAKE_RDNS": "true"}, "off"),
    ({"RDNS_MODE": "ptr", "AF_FAKE_RDNS": "true"}, "ptr"),
    ({"RDNS_MODE": "", "AF_FAKE_RDNS": "true"}, "fake"),
    ({"RDNS_MODE": ""}, "off"),
])
def test_rdns_mode_with_af_fake_rdns_for_compatibility(env: dict[str, str], mode: str) -> None:
    s = Settings.from_env(env)
    assert s.rdns_mode == mode
    assert Settings.from_env(s.to_env()) == s


def test_rdns_defaults() -> None:
    s = Settings.from_env({})
    assert (s.rdns_nameservers, s.rdns_timeout_ms, s.rdns_batch_budget_ms, s.rdns_cache_size) == ((), 500, 1000,
                                                                                                   100_000)
    assert (s.rdns_min_ttl_s, s.rdns_max_ttl_s, s.rdns_negative_ttl_s) == (60, 86_400, 30)


@pytest.mark.parametrize(("raw", "parsed", "text"), [
    ("", (), ""),
    ("10.0.0.53", (("10.0.0.53", 53),), "10.0.0.53:53"),
    ("127.0.0.1:5353, ::1", (("127.0.0.1", 5353), ("::1", 53)), "127.0.0.1:5353,[::1]:53"),
    ("[2001:DB8::53]:5300,[::1]", (("2001:db8::53", 5300), ("::1", 53)), "[2001:db8::53]:5300,[::1]:53"),
])
def test_nameservers_are_parsed_once_into_address_port_pairs(raw: str, parsed: tuple[tuple[str, int], ...],
                                                             text: str) -> None:
    s = Settings.from_env({"RDNS_NAMESERVERS": raw})
    assert s.rdns_nameservers == parsed
    assert s.to_env()["RDNS_NAMESERVERS"] == text and Settings.from_env(s.to_env()) == s


@pytest.mark.parametrize(("env", "message"), [
    ({"RDNS_MODE": "dns"}, "RDNS_MODE must be one of off, fake, ptr, got 'dns'"),
    ({"RDNS_NAMESERVERS": "dns.google"}, "RDNS_NAMESERVERS must be comma-separated IP addresses"),
    ({"RDNS_NAMESERVERS": "10.0.0.1:99999"}, "RDNS_NAMESERVERS must be comma-separated IP addresses"),
    ({"RDNS_NAMESERVERS": "[::1]x"}, "RDNS_NAMESERVERS must be comma-separated IP addresses"),
    ({"RDNS_TIMEOUT_MS": "0"}, "RDNS_TIMEOUT_MS must be a positive integer"),
    ({"RDNS_CACHE_SIZE": "-1"}, "RDNS_CACHE_SIZE must be a positive integer"),
    ({"RDNS_MIN_TTL_S": "600", "RDNS_MAX_TTL_S": "60"}, "RDNS_MIN_TTL_S (600) must not exceed RDNS_MAX_TTL_S"),
    ({"RDNS_MODE": "ptr", "RDNS_BATCH_BUDGET_MS": "30000"},
     "RDNS_BATCH_BUDGET_MS (30000) must be less than PROCESSING_TIMEOUT"),
])
def test_bad_rdns_values(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        Settings.from_env(env)
    assert message in str(info.value)


def test_sentinels_default_to_port_26379_and_bad_ones_are_named() -> None:
    s = Settings.from_env({"REDIS_SENTINELS": "s1, s2:26380,[::1]:5000,"})
    assert s.redis_sentinels == (("s1", 26379), ("s2", 26380), ("::1", 5000))
    assert s.redacted()["REDIS_SENTINELS"] == "s1:26379,s2:26380,[::1]:5000" and Settings.from_env(s.to_env()) == s
    assert Settings.from_env({}).redis_sentinels == () and Settings.from_env({}).redis_wait_replicas == 0
    for bad in ("s1:0", "s1:port", ":26379"):
        with pytest.raises(ConfigError, match="REDIS_SENTINELS must be comma-separated host"):
            Settings.from_env({"REDIS_SENTINELS": bad})


def test_nats_url_lists_every_seed_of_a_cluster_and_redacts_each() -> None:
    s = Settings.from_env({"NATS_URL": "nats://u:s3cret@n1:4222, nats://u:s3cret@n2:4222,tls://t0ken@n3:4222",
                           "NATS_STREAM_REPLICAS": "3"})
    assert s.nats_servers == ["nats://u:s3cret@n1:4222", "nats://u:s3cret@n2:4222", "tls://t0ken@n3:4222"]
    assert s.redacted()["NATS_URL"] == "nats://u:***@n1:4222,nats://u:***@n2:4222,tls://***@n3:4222"
    assert "s3cret" not in repr(s) and "t0ken" not in repr(s)
    assert s.nats_stream_replicas == 3 and Settings.from_env(s.to_env()) == s
    # A comma inside a password does not start a new URL: only one followed by a scheme does.
    assert Settings.from_env({"NATS_URL": "nats://u:a,b@n1"}).nats_servers == ["nats://u:a,b@n1"]
    assert Settings.from_env({}).nats_servers == ["nats://127.0.0.1:4222"]
    assert s.nats_urls == tuple(s.nats_servers) and s.nats_url == ",".join(s.nats_servers)
    assert Settings.from_env({}).nats_stream_replicas == 1


@pytest.mark.parametrize(("env", "message"), [
    ({"NATS_URL": "nats://n1:4222,http://n2"}, "NATS_URL must be a URL with scheme"),
    ({"NATS_URL": "nats://n1:4222,nats://n2:x"}, "NATS_URL has an invalid port"),
    ({"NATS_URL": "nats://u:pw@n1:4222,ws://n2"}, "NATS_URL mixes URL schemes: use nats/tls or ws/wss for all, "
                                                  "got 'nats://u:***@n1:4222,ws://n2'"),
    ({"NATS_STREAM_REPLICAS": "0"}, "NATS_STREAM_REPLICAS must be a positive integer"),
    ({"NATS_STREAM_REPLICAS": "6"}, "NATS_STREAM_REPLICAS must be from 1 to 5, got '6'"),
])
def test_bad_nats_cluster_values(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        Settings.from_env(env)
    assert message in str(info.value)


def test_metrics_urls_are_comma_separated_http_urls() -> None:
    s = Settings.from_env({"STATUS_METRICS_URLS": " http://a:9191/metrics, ,https://b/metrics ,"})
    assert s.status_metrics_urls == ("http://a:9191/metrics", "https://b/metrics")
    assert Settings.from_env({}).status_metrics_urls == () and Settings.from_env(s.to_env()) == s


@pytest.mark.parametrize("url", ["file:///etc/passwd", "ftp://host/metrics", "http:///metrics", "localhost:9191"])
def test_only_http_metrics_urls_with_a_host_are_accepted(url: str) -> None:
    with pytest.raises(ConfigError, match="STATUS_METRICS_URLS must be comma-separated http:// or https://"):
        Settings.from_env({"STATUS_METRICS_URLS": f"http://ok/metrics,{url}"})


def test_a_rejected_metrics_url_does_not_show_its_password() -> None:
    with pytest.raises(ConfigError) as caught:
        Settings.from_env({"STATUS_METRICS_URLS": "ftp://user:hunter2@host/metrics"})
    assert "hunter2" not in str(caught.value)


def test_worker_counts_are_unset_unless_given_and_left_out_of_the_environment() -> None:
    s = Settings.from_env({})
    assert (s.worker_processes, s.worker_threads) == (None, None)
    assert "WORKER_PROCESSES" not in s.to_env() and Settings.from_env(s.to_env()) == s
    assert Settings.from_env({"WORKER_THREADS": "3"}).worker_threads == 3


def test_every_field_is_declared_with_its_variable_once() -> None:
    assert len(set(ENV_VARS)) == len(ENV_VARS) == len(fields(Settings))
    assert all(declaration(f).help for f in fields(Settings))
