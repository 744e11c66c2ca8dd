"""The Grafana dashboard stays in step with the code: every query reads metrics and labels our processes export,
keeps to the replicas its variables select, and answers what an operator asks."""

from __future__ import annotations

import json
import re
from typing import Any

import yaml

from tests.support.promql import known_metrics, promql_metrics_and_grouping, vector_selectors
from tests.unit.test_deploy import ROOT, compose, url_port

GRAFANA_DIR = ROOT / "deploy/grafana"
OPERATOR_QUESTIONS = ("etl_events_total", "etl_dead_letters_total", "etl_batch_size_bucket",
                      "etl_sink_write_seconds_bucket", "etl_queue_depth", "etl_bridge_paused",
                      "etl_circuit_breaker_state", "dramatiq_message_retries_total", "dramatiq_message_errors_total",
                      "etl_consumer_lag", "etl_bridge_unacked_events", "etl_retention_removed_total",
                      "etl_retention_last_run_timestamp_seconds", "etl_retention_last_run_seconds")


def dashboard() -> dict[str, Any]:
    return json.loads((GRAFANA_DIR / "dashboards/etl.json").read_text())


def test_every_metric_and_label_the_dashboard_queries_exists() -> None:
    known = known_metrics()
    exprs = [t["expr"] for panel in dashboard()["panels"] for t in panel["targets"]]
    assert exprs
    for expr in exprs:
        names, grouping = promql_metrics_and_grouping(expr)
        assert names and names <= known.keys(), f"unknown metric {names - known.keys()} in {expr}"
        labels = set().union(*(known[n] for n in names)) | {"job", "instance"}
        labels |= {"le"} if any(n.endswith("_bucket") for n in names) else set()
        assert grouping <= labels, f"no label {grouping - labels} on {names} in {expr}"
    for metric in OPERATOR_QUESTIONS:
        assert any(metric in promql_metrics_and_grouping(e)[0] for e in exprs), f"no panel shows {metric}"


def test_grafana_provisions_the_dashboard_on_the_prometheus_of_the_stack() -> None:
    (source,) = yaml.safe_load((GRAFANA_DIR / "provisioning/datasources/prometheus.yml").read_text())["datasources"]
    assert url_port(source["url"]) == ("prometheus", 9090)
    uids = {panel["datasource"]["uid"] for panel in dashboard()["panels"]}
    uids |= {t["datasource"]["uid"] for panel in dashboard()["panels"] for t in panel["targets"]}
    assert uids == {source["uid"]}
    services = compose()["services"]
    mounts = dict(v.split(":")[:2] for v in services["grafana"]["volumes"])
    (provider,) = yaml.safe_load((GRAFANA_DIR / "provisioning/dashboards/etl.yml").read_text())["providers"]
    assert mounts["./deploy/grafana/dashboards"] == provider["options"]["path"]
    assert mounts["./deploy/grafana/provisioning"] == "/etc/grafana/provisioning"
    prometheus_mounts = dict(v.split(":")[:2] for v in services["prometheus"]["volumes"])
    assert prometheus_mounts["./deploy/prometheus/prometheus.yml"] == "/etc/prometheus/prometheus.yml"


# Every query keeps to the replicas the dashboard's variables select: label -> the matcher's value.
DASHBOARD_SCOPE = {"job": "$job", "instance": "$instance"}
# What an operator asks of the dashboard besides OPERATOR_QUESTIONS: how long a batch takes per pool, the retries
# waiting, every retry scheduled by stage, what the dead-letter queue holds, the consumer's pending acks.
REPLICA_QUESTIONS = ("dramatiq_message_duration_milliseconds_bucket", "etl_queue_delayed",
                     "etl_retries_total", "etl_dead_letters_stored", "etl_consumer_ack_pending", "up")
_AGGREGATIONS = re.compile(r"\b(?:sum|min|max|avg|count|group|topk|bottomk|quantile|stddev|stdvar)\b")
def dashboard_exprs() -> list[tuple[dict[str, Any], str]]:
    return [(panel, t["expr"]) for panel in dashboard()["panels"] for t in panel["targets"]]


def test_the_dashboard_selects_replicas_with_job_and_instance_variables() -> None:
    variables = dashboard()["templating"]["list"]
    assert [v["name"] for v in variables] == list(DASHBOARD_SCOPE)
    panel_sources = {panel["datasource"]["uid"] for panel in dashboard()["panels"]}
    known = known_metrics()
    for variable in variables:
        name = variable["name"]
        assert variable["type"] == "query" and {variable["datasource"]["uid"]} == panel_sources, name
        # "All" as a regex, so replicas found after the dashboard loaded are shown too.
        assert variable["includeAll"] and variable["multi"] and variable["allValue"] == ".*", name
        query = variable["query"]["query"]
        call = re.fullmatch(r"label_values\((.+),\s*(\w+)\)", query)
        assert call and call[2] == name, query
        ((metric, matchers),) = vector_selectors(call[1])
        assert metric in known, query
        # The replicas offered are those of the services selected.
        assert matchers == ({"job": "$job"} if name == "instance" else {}), query


def test_every_dashboard_query_keeps_to_the_selected_replicas() -> None:
    known = known_metrics()
    for _, expr in dashboard_exprs():
        selectors = vector_selectors(expr)
        assert selectors, expr
        for metric, matchers in selectors:
            assert {k: matchers.get(k) for k in DASHBOARD_SCOPE} == DASHBOARD_SCOPE, f"{metric} in {expr}"
            labels = known[metric] | set(DASHBOARD_SCOPE) | ({"le"} if metric.endswith("_bucket") else set())
            assert matchers.keys() <= labels, f"no label {matchers.keys() - labels} on {metric} in {expr}"
        assert set(re.findall(r"\$(\w+)", expr)) <= DASHBOARD_SCOPE.keys(), expr


def test_the_dashboard_shows_each_replica_batch_durations_retries_dead_letters_stored_and_acks() -> None:
    exprs = dashboard_exprs()
    shown = {metric: [(panel, expr) for panel, expr in exprs if metric in promql_metrics_and_grouping(expr)[0]]
             for metric in REPLICA_QUESTIONS}
    assert all(shown.values()), f"no panel shows {[m for m, panels in shown.items() if not panels]}"
    # One replica of two down shows: 'up' of each replica, not summed by service.
    assert any(promql_metrics_and_grouping(e)[0] == {"up"} and ("instance" in promql_metrics_and_grouping(e)[1]
                                                                  or not _AGGREGATIONS.search(e))
               for _, e in shown["up"]), [e for _, e in shown["up"]]
    assert any({"le", "queue_name"} <= promql_metrics_and_grouping(e)[1]
               for _, e in shown["dramatiq_message_duration_milliseconds_bucket"]), "batch duration per pool"
    assert any("stage" in promql_metrics_and_grouping(e)[1] for _, e in shown["etl_retries_total"])
    # The consumer's pending acks have a panel of their own.
    assert any({m for t in panel["targets"] for m in promql_metrics_and_grouping(t["expr"])[0]}
               == {"etl_consumer_ack_pending"} for panel, _ in shown["etl_consumer_ack_pending"])


def test_the_dashboard_shows_each_lookup_table_and_the_matches_by_source_and_type() -> None:
    """Per table: its entries, the malformed lines skipped, its failed loads, whether it is failing and its age
    (now minus the newest file's mtime, not the mtime itself); the indicator matches by feed source and type."""
    exprs = [expr for _, expr in dashboard_exprs()]

    def groupings(metric: str) -> list[set[str]]:
        return [grouping for names, grouping in map(promql_metrics_and_grouping, exprs) if metric in names]

    for metric in ("etl_lookup_entries", "etl_lookup_skipped_lines", "etl_lookup_reload_failures_total",
                   "etl_lookup_table_failing"):
        assert any("table" in grouping for grouping in groupings(metric)), f"no panel shows {metric} by table"
    assert any(re.match(r"time\(\) - \w+ by \(table\) \(etl_lookup_source_timestamp_seconds\{", e) for e in exprs)
    assert any({"source", "type"} <= grouping for grouping in groupings("etl_intel_matches_total"))
