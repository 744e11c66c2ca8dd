"""The alert rules of deploy/prometheus/alerts.yml: they use only what the code exports, each is loaded by the
compose Prometheus, tested by ``promtool test rules`` and has a runbook line in the README.

``promtool`` comes from Debian's ``prometheus`` package: without it those tests skip with one line, on CI they fail.
"""

from __future__ import annotations

import re
import subprocess
from typing import Any

import pytest
import yaml

from tests.support.prometheus import binary
from tests.unit.test_deploy import PROMETHEUS_FILE, README, compose, known_metrics, promql_metrics_and_grouping

ALERTS_FILE = PROMETHEUS_FILE.parent / "alerts.yml"
ALERTS_TEST_FILE = PROMETHEUS_FILE.parent / "alerts_test.yml"
SEVERITIES = {"critical", "warning"}
ANNOTATIONS = {"summary", "description"}
# What the issue asks to be alerted on, by the series each alert must read.
ALERTED = {"up", "etl_dead_letters_total", "etl_circuit_breaker_state", "etl_bridge_paused", "etl_consumer_lag",
           "etl_queue_depth", "dramatiq_messages_total", "etl_sink_write_seconds_bucket"}
PROMTOOL_TIMEOUT_S = 60
_LABEL_REPLACE = re.compile(r'label_replace\(.*?,\s*"(\w+)",\s*"[^"]*",\s*"(\w+)"', re.S)
_MATCHING = re.compile(r"\b(?:on|ignoring)\s*\(([^)]*)\)")
_TEMPLATE_LABEL = re.compile(r"\$labels\.(\w+)")


def alert_rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load(ALERTS_FILE.read_text())["groups"]
    rules = [rule for group in groups for rule in group["rules"]]
    assert rules and all("alert" in rule for rule in rules), "alerts.yml holds alerting rules only"
    return rules


def labels_of(expr: str) -> tuple[set[str], set[str]]:
    """The labels an expression may use (its metrics' own, job, instance, le on buckets, label_replace's new ones)
    and the labels its result can carry (its by() sets and new labels when it aggregates, else all of them)."""
    known = known_metrics()
    names, grouping = promql_metrics_and_grouping(expr)
    assert names and names <= known.keys(), f"unknown metric {names - known.keys()} in {expr}"
    available = set().union(*(known[n] for n in names)) | {"job", "instance"}
    available |= {"le"} if any(n.endswith("_bucket") for n in names) else set()
    replaced = {}
    for new, source in _LABEL_REPLACE.findall(expr):
        assert source in available, f"label_replace reads no label {source} in {expr}"
        replaced[new] = source
    available |= replaced.keys()
    return available, (grouping | replaced.keys()) if grouping else available


def test_every_metric_and_label_the_alert_rules_use_exists() -> None:
    used = set()
    for rule in alert_rules():
        expr = rule["expr"]
        available, result = labels_of(expr)
        _, grouping = promql_metrics_and_grouping(expr)
        matching = {label.strip() for labels in _MATCHING.findall(expr) for label in labels.split(",")}
        assert grouping | matching <= available, f"{rule['alert']}: no label {(grouping | matching) - available}"
        templated = set(_TEMPLATE_LABEL.findall(" ".join(rule["annotations"].values())))
        assert templated <= result, f"{rule['alert']}: the alert has no label {templated - result}"
        used |= promql_metrics_and_grouping(expr)[0]
    assert ALERTED <= used, f"no alert reads {ALERTED - used}"


def test_every_alert_has_a_severity_a_summary_a_description_and_a_runbook_line() -> None:
    readme = README.read_text()
    for rule in alert_rules():
        name = rule["alert"]
        assert rule["labels"]["severity"] in SEVERITIES, name
        assert rule["annotations"].keys() == ANNOTATIONS, name
        assert re.search(rf"^\| `{name}` \|", readme, flags=re.M), f"no runbook row for {name} in the README"


def test_every_alert_is_tested_firing_and_silent() -> None:
    tests = yaml.safe_load(ALERTS_TEST_FILE.read_text())
    assert tests["rule_files"] == [ALERTS_FILE.name]
    evals = [e for test in tests["tests"] for e in test["alert_rule_test"]]
    for rule in alert_rules():
        mine = [e for e in evals if e["alertname"] == rule["alert"]]
        assert any(e.get("exp_alerts") for e in mine), f"{rule['alert']} is never expected to fire"
        assert any(not e.get("exp_alerts") for e in mine), f"{rule['alert']} is never expected to stay silent"


def test_the_compose_prometheus_loads_the_rules() -> None:
    config = yaml.safe_load(PROMETHEUS_FILE.read_text())
    assert config["rule_files"] == [ALERTS_FILE.name]
    mounts = dict(v.split(":")[:2] for v in compose()["services"]["prometheus"]["volumes"])
    # rule_files are relative to the configuration file, in the container too.
    config_dir = mounts[f"./{PROMETHEUS_FILE.relative_to(PROMETHEUS_FILE.parents[2])}"].rpartition("/")[0]
    assert mounts[f"./{ALERTS_FILE.relative_to(ALERTS_FILE.parents[2])}"] == f"{config_dir}/{ALERTS_FILE.name}"


def promtool(*args: str) -> str:
    done = subprocess.run([binary("promtool"), *args], capture_output=True, text=True, timeout=PROMTOOL_TIMEOUT_S)
    assert done.returncode == 0, f"promtool {' '.join(args)}:\n{done.stdout}{done.stderr}"
    return done.stdout


@pytest.mark.parametrize("args", [("check", "config", str(PROMETHEUS_FILE)), ("check", "rules", str(ALERTS_FILE)),
                                  ("test", "rules", str(ALERTS_TEST_FILE))],
                         ids=["check config", "check rules", "test rules"])
def test_promtool_accepts_the_configuration_and_the_rules_pass_their_tests(args: tuple[str, ...]) -> None:
    assert "SUCCESS" in promtool(*args)
