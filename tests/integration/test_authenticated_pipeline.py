"""The whole pipeline, real bridge and worker processes, with every server demanding credentials: NATS in operator
mode behind mutual TLS (NATS_CREDS, NATS_TLS_CA/CERT/KEY), Redis with an ACL user and its default user off, over
TLS (a ``rediss://`` REDIS_URL and REDIS_TLS_CA, through a TLS terminator: the test Redis has no TLS of its own),
FalkorDB with a password (NEO4J_URI). Every event is accounted for, read back with the same
credentials, so each process's connection code (bridge, enrich, publish, timescale and graph pools, dead letters)
logged in; no server here lets in a client without them."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from etl.config import Settings
from etl.dev import servers as devservers
from etl.dev.supervisor import Pipeline
from etl.ops import report
from tests.integration.accounting import GENERATED_REASONS, check_accounting, publish_all, sample_events
from tests.integration.test_redis_auth import (
    FALKOR_PASSWORD,
    REDIS_PASSWORD,
    REDIS_PASSWORD_IN_URL,
    REDIS_USER,
    acl_args,
)
from tests.integration.test_tls_auth import mutual_tls_args
from tests.support.natsjwt import make_trust
from tests.support.pki import make_pki
from tests.support.tlsproxy import TlsProxy
from tests.waiting import wait_for

EVENTS = 400
SETTLE_S = 90


@pytest.fixture
def locked_down(tmp_path: Path, make_settings: Callable[..., Settings]) -> Iterator[Settings]:
    pki = make_pki(tmp_path / "pki")
    trust = make_trust(tmp_path / "trust")
    started = [
        devservers.nats_server(tmp_path / "nats", extra_args=["-c", str(trust.server_config),
                                                              *mutual_tls_args(pki)]),
        devservers.redis_server(tmp_path / "redis", extra_args=acl_args(REDIS_USER, REDIS_PASSWORD),
                                auth=[REDIS_USER, REDIS_PASSWORD]),
        devservers.redis_server(tmp_path / "falkordb", falkordb=True, extra_args=["--requirepass", FALKOR_PASSWORD],
                                auth=[FALKOR_PASSWORD]),
    ]
    proxy: TlsProxy | None = None
    try:
        nats, redis, falkordb = (server.start() for server in started)
        proxy = TlsProxy(redis.port, pki["cert"], pki["key"]).start()
        yield make_settings(
            NATS_URL=f"tls://127.0.0.1:{nats.port}", NATS_CREDS=trust.creds, NATS_TLS_CA=pki["ca"],
            NATS_TLS_CERT=pki["client_cert"], NATS_TLS_KEY=pki["client_key"],
            REDIS_URL=f"rediss://{REDIS_USER}:{REDIS_PASSWORD_IN_URL}@127.0.0.1:{proxy.port}/0", REDIS_TLS_CA=pki["ca"],
            NEO4J_URI=f"falkor://:{FALKOR_PASSWORD}@127.0.0.1:{falkordb.port}",
            MAX_BATCH_SIZE=50, BATCH_LINGER_MS=20, RETRY_MIN_BACKOFF_MS=100, RETRY_MAX_BACKOFF_MS=2000)
    finally:
        if proxy is not None:
            proxy.stop()
        for server in started:
            server.stop()


def test_every_event_flows_through_servers_that_demand_credentials(
        locked_down: Settings, start_pipeline: Callable[..., Pipeline]) -> None:
    settings = locked_down
    pipeline = start_pipeline(settings)
    events = sample_events(EVENTS, seed=16, malformed_every=40)
    asyncio.run(publish_all(settings, events.all))

    def settled() -> bool:
        counts = report.collect(settings)
        valid = len(events.valid)
        return ((counts.totals["stored"], counts.totals["merged"], counts.totals["published"]) == (valid,) * 3
                and counts.dead_lettered.get("enrich", 0) == len(events.bad) and not any(counts.queued.values()))

    wait_for(settled, timeout_s=SETTLE_S, interval_s=0.5,
             describe=lambda: f"{report.collect(settings)} alive={pipeline.alive()}")
    check_accounting(settings, events, reasons=GENERATED_REASONS)
