"""The shipped Grafana dashboard and Prometheus config stay in step with the metrics and ports the code has."""

from __future__ import annotations

import json
import re
from pathlib import Path

import dramatiq.middleware.prometheus as dramatiq_prometheus
from prometheus_client.metrics import MetricWrapperBase

from etl import metrics
from etl.config import Settings

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "deploy/grafana/dashboards/etl.json"
PROMETHEUS = ROOT / "deploy/prometheus/prometheus.yml"
SUFFIXES = ("", "_total", "_bucket", "_count", "_sum", "_created")


def known_metric_names() -> set[str]:
    ours = {obj._name for obj in vars(metrics).values() if isinstance(obj, MetricWrapperBase)}
    source = Path(dramatiq_prometheus.__file__).read_text()
    dramatiqs = set(re.findall(r'"(dramatiq_[a-z_]+)"', source)) - {"dramatiq_prom_db", "dramatiq_prom_host",
                                                                    "dramatiq_prom_port"}
    return {name + suffix for name in ours | dramatiqs for suffix in SUFFIXES}


def dashboard_exprs() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    return [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]


def test_every_metric_the_dashboard_queries_exists() -> None:
    used = {name for expr in dashboard_exprs() for name in re.findall(r"\b((?:etl|dramatiq)_[a-z_]+)\b", expr)}
    assert used, "the dashboard queries something"
    assert used <= known_metric_names(), used - known_metric_names()


def test_the_dashboard_covers_the_operators_questions() -> None:
    text = " ".join(dashboard_exprs())
    for metric in ("etl_events_total", "etl_dead_letters_total", "etl_sink_write_seconds_bucket",
                   "etl_batch_size", "etl_queue_depth", "etl_bridge_paused", "etl_circuit_breaker_state",
                   "dramatiq_message_retries_total"):
        assert metric in text


def test_prometheus_scrapes_the_ports_the_processes_serve() -> None:
    defaults = Settings()
    config = PROMETHEUS.read_text()
    ports = dict(re.findall(r"job_name: ([a-z-]+).*?port: (\d+)", config, flags=re.S))
    assert ports["bridge"] == str(defaults.health_port)
    for pool in ("enrich", "publish", "timescale", "graph"):
        assert ports[f"worker-{pool}"] == str(defaults.metrics_port)
