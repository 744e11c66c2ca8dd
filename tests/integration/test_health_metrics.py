"""Health, readiness and metrics of the real processes, over HTTP."""

from __future__ import annotations

import asyncio
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from etl.broker import redis_client
from etl.config import Settings
from etl.dev import servers as devservers
from etl.dev.generator import generate
from etl.dev.stack import migrate
from etl.dev.supervisor import Pipeline
from etl.ops import report
from etl.pipeline.dlq import DeadLetterStore
from etl.pipeline.redisgauges import DEFAULT_REDIS_GAUGES_INTERVAL_S
from etl.stages import QUEUES
from tests.integration.accounting import publish_all
from tests.waiting import wait_for

# Time for the bridge's next read of the queues and the dead letters, with room for a loaded machine.
GAUGE_WAIT_S = 3 * DEFAULT_REDIS_GAUGES_INTERVAL_S
# Retries seen before PostgreSQL comes back: more than one batch's first failure.
RETRIES_SEEN = 3


def get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()
    except OSError as e:
        return 0, str(e)


def samples(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    status, text = get(port, "/metrics")
    assert status == 200, text
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(port: int, name: str, **labels: str) -> float | None:
    """The sample's value, or None when the process does not export it."""
    return samples(port).get((name, tuple(sorted(labels.items()))))


@pytest.fixture
def private(tmp_path: Path) -> Iterator[dict[str, devservers.Server]]:
    servers = {"nats": devservers.nats_server(tmp_path / "nats").start(),
               "redis": devservers.redis_server(tmp_path / "redis").start()}
    yield servers
    for server in servers.values():
        server.stop()


def test_bridge_readiness_follows_nats_and_redis(make_settings: Callable[..., Settings], tmp_path: Path,
                                                 private: dict[str, devservers.Server]) -> None:
    settings = make_settings(NATS_URL=f"nats://127.0.0.1:{private['nats'].port}",
                             REDIS_URL=f"redis://127.0.0.1:{private['redis'].port}/0")
    bridge = Pipeline(settings.to_env(), tmp_path / "logs", pools=()).start()
    port = bridge.ports["bridge-0"]
    try:
        wait_for(lambda: get(port, "/readyz")[0] == 200, timeout_s=20, describe=lambda: bridge.log_tail("bridge-0"))
        assert get(port, "/healthz") == (200, "ok\n")

        private["redis"].stop()
        status, body = wait_for(lambda: (r := get(port, "/readyz"))[0] == 503 and r, timeout_s=20)
        assert "Redis is unreachable" in body
        private["redis"].start()
        wait_for(lambda: get(port, "/readyz")[0] == 200, timeout_s=20)

        private["nats"].stop()
        status, body = wait_for(lambda: (r := get(port, "/readyz"))[0] == 503 and r, timeout_s=20)
        assert "NATS is not connected" in body
        assert get(port, "/healthz")[0] == 200, "alive while not ready"
        private["nats"].start()
        wait_for(lambda: get(port, "/readyz")[0] == 200, timeout_s=30, describe=lambda: bridge.log_tail("bridge-0"))
    finally:
        assert bridge.stop() == {"bridge-0": 0}


def test_metrics_move_when_events_flow(make_settings: Callable[..., Settings], tmp_path: Path) -> None:
    settings = make_settings(MAX_BATCH_SIZE=50)
    migrate(settings)
    pipeline = Pipeline(settings.to_env(), tmp_path / "logs").start()
    try:
        wait_for(lambda: get(pipeline.ports["bridge-0"], "/readyz")[0] == 200, timeout_s=20)
        events = list(generate(300, hosts=5, seed=5, malformed_every=50))
        asyncio.run(publish_all(settings, events))
        wait_for(lambda: report.collect(settings).totals["stored"] == 294, timeout_s=60)

        bridge = pipeline.ports["bridge-0"]
        assert value(bridge, "etl_events_total", stage="received") == 300
        assert value(bridge, "etl_bridge_paused") == 0
        wait_for(lambda: value(bridge, "etl_consumer_lag") == 0 and value(bridge, "etl_consumer_ack_pending") == 0,
                 timeout_s=15)
        assert value(bridge, "etl_queue_depth", queue="enrich") is not None
        enrich = pipeline.ports["worker-enrich"]
        wait_for(lambda: value(enrich, "etl_events_total", stage="enrich") == 294, timeout_s=20)
        # The generator's malformed events (etl.dev.generator.MALFORMED), the first six, by the rule each breaks.
        for violation, n in {"json": 3, "id": 1, "timestamp": 1, "field": 1}.items():
            assert value(enrich, "etl_dead_letters_total", stage="enrich", reason=f"BadEvent/{violation}") == n
        assert (value(enrich, "dramatiq_messages_total", queue_name="enrich", actor_name="enrich_batch") or 0) > 0
        for pool, stage in (("timescale", "timescale"), ("graph", "graph"), ("publish", "publish")):
            port = pipeline.ports[f"worker-{pool}"]
            wait_for(lambda p=port, s=stage: value(p, "etl_events_total", stage=s) == 294, timeout_s=20)
            assert (value(port, "etl_sink_write_seconds_count", sink=stage) or 0) > 0
            assert value(port, "etl_circuit_breaker_state", sink=stage) == 0
        # Read again while the bridge has nothing to take: the depths drop to 0 rather than keep the last read.
        wait_for(lambda: all(value(bridge, "etl_queue_depth", queue=q) == 0 for q in QUEUES), timeout_s=GAUGE_WAIT_S,
                 describe=lambda: str({q: value(bridge, "etl_queue_depth", queue=q) for q in QUEUES}))
        check_dead_letters_stored(settings, bridge, expected=6)
    finally:
        pipeline.stop()


def check_dead_letters_stored(settings: Settings, bridge_port: int, *, expected: int) -> None:
    """The bridge exports what the dead-letter queue holds now: ``expected`` entries, then none once purged
    (from outside the pipeline, as ``etl dlq purge`` does), which no counter of dead letters would show."""
    def stored() -> float | None:
        return value(bridge_port, "etl_dead_letters_stored")

    wait_for(lambda: stored() == expected, timeout_s=GAUGE_WAIT_S, describe=lambda: f"gauge {stored()}")
    with redis_client(settings) as client:
        store = DeadLetterStore.from_settings(client, settings)
        assert store.count() == expected
        assert store.purge(older_than_s=0) == expected
    wait_for(lambda: stored() == 0, timeout_s=GAUGE_WAIT_S, describe=lambda: f"gauge {stored()}")


def test_a_sinks_transient_failure_counts_retries_for_its_stage(make_settings: Callable[..., Settings],
                                                                 tmp_path: Path,
                                                                 private_postgres: devservers.Server) -> None:
    """PostgreSQL down: each timescale batch fails with ``SinkUnavailable`` (transient) and is scheduled for a retry,
    counted in ``etl_retries_total{stage="timescale"}`` by the timescale pool; no other stage counts one. The
    bridge's ``etl_queue_delayed`` shows the retries waiting."""
    # The breaker never opens (it would delay batches without a retry) and the retries outlast the outage.
    settings = make_settings(PG_PORT=private_postgres.port, MAX_BATCH_SIZE=50, BREAKER_FAILURES=1_000_000,
                             RETRY_MAX=1_000, RETRY_MIN_BACKOFF_MS=100, RETRY_MAX_BACKOFF_MS=200)
    migrate(settings)
    pipeline = Pipeline(settings.to_env(), tmp_path / "logs").start()
    try:
        bridge = pipeline.ports["bridge-0"]
        wait_for(lambda: get(bridge, "/readyz")[0] == 200, timeout_s=20)
        timescale = pipeline.ports["worker-timescale"]
        wait_for(lambda: get(timescale, "/metrics")[0] == 200, timeout_s=20)
        assert value(timescale, "etl_retries_total", stage="timescale") is None
        private_postgres.stop()
        asyncio.run(publish_all(settings, list(generate(100, hosts=5, seed=7))))
        wait_for(lambda: (value(timescale, "etl_retries_total", stage="timescale") or 0) >= RETRIES_SEEN,
                 timeout_s=30, describe=lambda: f"{value(timescale, 'etl_retries_total', stage='timescale')} retries")
        # The bridge sees the retries wait in the timescale queue's delay queue.
        wait_for(lambda: (value(bridge, "etl_queue_delayed", queue="timescale") or 0) > 0, timeout_s=30)
        private_postgres.start()
        wait_for(lambda: report.collect(settings).totals["stored"] == 100, timeout_s=60,
                 describe=lambda: pipeline.log_tail("worker-timescale"))
        wait_for(lambda: value(bridge, "etl_queue_delayed", queue="timescale") == 0, timeout_s=30)
        for pool in ("enrich", "graph", "publish"):
            assert value(pipeline.ports[f"worker-{pool}"], "etl_retries_total", stage=pool) is None, pool
        assert report.dead_letter_counts(settings) == {}
    finally:
        assert all(code == 0 for code in pipeline.stop().values())


def test_health_command_for_each_process(make_settings: Callable[..., Settings], tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    settings = make_settings()
    migrate(settings)
    pipeline = Pipeline(settings.to_env(), tmp_path / "logs").start()

    def health(pool: str) -> subprocess.CompletedProcess[str]:
        name = "bridge-0" if pool == "bridge" else f"worker-{pool}"
        port = str(pipeline.ports[name])
        env = {**os.environ, **settings.to_env(), "HEALTH_PORT": port, "METRICS_PORT": port}
        return subprocess.run([sys.executable, "-m", "etl.cli", "health", "--pool", pool], capture_output=True,
                              text=True, env=env)

    try:
        for pool in ("bridge", "enrich", "publish", "timescale", "graph"):
            done = wait_for(lambda p=pool: (r := health(p)).returncode == 0 and r, timeout_s=30,
                            describe=lambda p=pool: health(p).stderr)
            assert done.stdout == f"{pool}: healthy\n"
        pipeline.kill("worker-graph")
        failed = health("graph")
        assert failed.returncode == 1 and failed.stderr.startswith("graph: unhealthy: ")
    finally:
        pipeline.stop()
