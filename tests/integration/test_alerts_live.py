"""The shipped alert rules on a real Prometheus server scraping the live pipeline's endpoints: PostgreSQL stops while
events flow, and the Prometheus HTTP API shows the breaker alert go pending, then firing; PostgreSQL restarts, and
once the events are stored the alert leaves firing: no worker process keeps reporting its breaker open.

Prometheus comes from Debian's ``prometheus`` package (``tests/support/prometheus.py``): without it the test skips
with one line, on CI it fails.
"""

from __future__ import annotations

import asyncio
import urllib.parse
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from etl.config import Settings
from etl.dev import servers as devservers
from etl.dev.generator import generate
from etl.dev.supervisor import Pipeline
from etl.stages import TIMESCALE
from tests.integration.accounting import publish_all
from tests.integration.faults_support import wait_settled
from tests.integration.test_circuit_breaker import stop_fast
from tests.support.prometheus import alert_states, api, prometheus_server
from tests.unit.test_alert_rules import ALERTS_FILE
from tests.waiting import wait_for

ALERT = "EtlCircuitBreakerOpen"
# Scraped and evaluated every second, so the states change within the test's deadlines.
INTERVAL = "1s"
# The shipped rules, changed in one thing only: every `for:` is this short, instead of minutes. Long enough that a
# poll every POLL_S sees the pending state before it turns into firing.
SHORT_FOR = "8s"
POLL_S = 0.2
BEFORE_OUTAGE = 100
DURING_OUTAGE = 300
WAIT_S = 60.0
# The rule reads the maximum over the last minute: an alert leaves firing a minute after the last open sample.
RESOLVE_WAIT_S = 60.0 + WAIT_S


@pytest.fixture
def settings(make_settings: Callable[..., Settings], private_postgres: devservers.Server) -> Settings:
    return make_settings(PG_PORT=private_postgres.port, MAX_BATCH_SIZE=10, BATCH_LINGER_MS=20, BREAKER_FAILURES=3,
                         BREAKER_COOLDOWN_MS=500, RETRY_MAX=4, RETRY_MIN_BACKOFF_MS=50, RETRY_MAX_BACKOFF_MS=100)


@pytest.fixture
def pipeline(settings: Settings, start_pipeline: Callable[..., Pipeline]) -> Pipeline:
    return start_pipeline(settings)


def shortened_rules() -> dict[str, Any]:
    rules: dict[str, Any] = yaml.safe_load(ALERTS_FILE.read_text())
    for group in rules["groups"]:
        for rule in group["rules"]:
            if "for" in rule:
                rule["for"] = SHORT_FOR
    return rules


def scrape_config(pipeline: Pipeline) -> dict[str, Any]:
    """One job per process, named as in docker-compose.yml (the bridge's replicas share a job)."""
    jobs: dict[str, list[str]] = {}
    for name, port in pipeline.ports.items():
        jobs.setdefault("bridge" if name.startswith("bridge") else name, []).append(f"127.0.0.1:{port}")
    return {"global": {"scrape_interval": INTERVAL, "scrape_timeout": INTERVAL, "evaluation_interval": INTERVAL},
            "rule_files": [ALERTS_FILE.name],
            "scrape_configs": [{"job_name": job, "static_configs": [{"targets": targets}]}
                               for job, targets in jobs.items()]}


@pytest.fixture
def prometheus(tmp_path: Path, pipeline: Pipeline) -> Iterator[devservers.Server]:
    data_dir = tmp_path / "prometheus"
    data_dir.mkdir()
    (data_dir / ALERTS_FILE.name).write_text(yaml.safe_dump(shortened_rules()))
    server = prometheus_server(data_dir, scrape_config(pipeline)).start()
    yield server
    server.stop()


def targets_up(server: devservers.Server) -> dict[str, str]:
    return {t["labels"]["job"]: t["health"] for t in api(server, "/api/v1/targets")["activeTargets"]}


def breaker_states(server: devservers.Server) -> dict[str, str]:
    """The last scraped ``etl_circuit_breaker_state`` of the timescale sink, by job."""
    query = urllib.parse.quote(f'etl_circuit_breaker_state{{sink="{TIMESCALE.name}"}}')
    result = api(server, f"/api/v1/query?query={query}")["result"]
    return {r["metric"]["job"]: r["value"][1] for r in result}


def test_a_postgres_outage_sets_the_breaker_alert_pending_then_firing_until_it_recovers(
        settings: Settings, pipeline: Pipeline, private_postgres: devservers.Server,
        prometheus: devservers.Server) -> None:
    wait_for(lambda: set(targets_up(prometheus).values()) == {"up"}, timeout_s=WAIT_S,
             describe=lambda: f"{targets_up(prometheus)}\n{prometheus.log_tail()}")
    events = list(generate(BEFORE_OUTAGE + DURING_OUTAGE, hosts=10, seed=18))
    asyncio.run(publish_all(settings, events[:BEFORE_OUTAGE]))
    wait_for(lambda: TIMESCALE.count(settings) == BEFORE_OUTAGE, timeout_s=WAIT_S,
             describe=lambda: pipeline.log_tail("worker-timescale"))
    assert alert_states(prometheus, ALERT) == [], "no breaker alert while PostgreSQL is up"

    stop_fast(private_postgres)
    asyncio.run(publish_all(settings, events[BEFORE_OUTAGE:]))

    def seen(wanted: str) -> list[dict[str, Any]]:
        return [a for a in alert_states(prometheus, ALERT) if a["state"] == wanted]

    def describe() -> str:
        return f"{alert_states(prometheus, ALERT)}\n{pipeline.log_tail('worker-timescale')}"

    (pending,) = wait_for(lambda: seen("pending"), timeout_s=WAIT_S, interval_s=POLL_S, describe=describe)
    (firing,) = wait_for(lambda: seen("firing"), timeout_s=WAIT_S, interval_s=POLL_S, describe=describe)
    print(f"\n{ALERT}: pending since {pending['activeAt']}, then firing: {firing['annotations']['summary']}")
    pool = f"worker-{TIMESCALE.name}"
    assert firing["labels"] == {"alertname": ALERT, "severity": "critical", "sink": TIMESCALE.name, "job": pool,
                                "instance": f"127.0.0.1:{pipeline.ports[pool]}"}
    assert firing["activeAt"] == pending["activeAt"], "the same alert, pending then firing"
    assert TIMESCALE.name in firing["annotations"]["summary"]

    private_postgres.start()
    counts = wait_settled(settings, pipeline, timeout_s=WAIT_S)
    assert counts.totals["stored"] == BEFORE_OUTAGE + DURING_OUTAGE and counts.dead_lettered == {}
    wait_for(lambda: alert_states(prometheus, ALERT) == [], timeout_s=RESOLVE_WAIT_S, interval_s=1.0,
             describe=lambda: f"{describe()}\nlast scraped breaker states: {breaker_states(prometheus)}")
    assert breaker_states(prometheus)[pool] in ("0", "1"), "closed, or half-open in a process that got no batch"
