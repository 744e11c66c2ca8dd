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

from etl.runtime.metrics import BRIDGE_PAUSED
from tests.support.prometheus import binary
from tests.support.promql import known_metrics, promql_metrics_and_grouping
from tests.unit.test_dashboard import dashboard
from tests.unit.test_deploy import PROMETHEUS_FILE, README, compose

ALERTS_FILE = PROMETHEUS_FILE.parent / "alerts.yml"
ALERTS_TEST_FILE = PROMETHEUS_FILE.parent / "alerts_test.yml"
SEVERITIES = {"critical", "warning"}
ANNOTATIONS = {"summary", "description"}
# What the issue asks to be alerted on, by the series each alert must read.
ALERTED = {"up", "etl_dead_letters_total", "etl_circuit_breaker_state", "etl_bridge_paused", "etl_consumer_lag",
           "etl_queue_depth", "dramatiq_messages_total", "etl_sink_write_seconds_bucket",
           "etl_lookup_table_failing"}
PROMTOOL_TIMEOUT_S = 60
# A near miss is checked silent this long after the rule's `for:` has elapsed, its series starting at 0.
SILENT_AFTER_FOR_S = 300
_UNIT_S = {"s": 1, "m": 60, "h": 3600}
_DURATION = re.compile(r"(\d+)([smh])")
_AGGREGATION = re.compile(r"\b(?:by|without)\s*\(([^)]*)\)\s*\(")
_LABEL_REPLACE = re.compile(r"\blabel_replace\s*\(")
_MATCHING = re.compile(r"\b(?:on|ignoring)\s*\(([^)]*)\)")
_JOB_ABSENT_TERM = re.compile(r'label_replace\(absent\(up\{job="([^"]+)"\} == 1\), "job", "([^"]+)", "", ""\)')
_TEMPLATE_LABEL = re.compile(r"\$labels\.(\w+)")
_SERIES = re.compile(r"^(?P<name>[A-Za-z_:][\w:]*)\{(?P<labels>[^}]*)\}$")


def alert_rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load(ALERTS_FILE.read_text())["groups"]
    rules = [rule for group in groups for rule in group["rules"]]
    assert rules and all("alert" in rule for rule in rules), "alerts.yml holds alerting rules only"
    return rules


def label_set(text: str) -> set[str]:
    return {label.strip() for label in text.split(",") if label.strip()}


def inside(expr: str, start: int) -> str:
    """The text from ``start`` (just after an opening parenthesis) to its closing one."""
    depth, i = 1, start
    while depth:
        depth += {"(": 1, ")": -1}.get(expr[i], 0)
        i += 1
    return expr[start:i - 1]


def series_labels(name: str) -> set[str]:
    """The labels a series of ours carries once scraped: its own, and the target's job and instance."""
    known = known_metrics()
    assert name in known, f"no metric {name} is exported"
    return known[name] | {"job", "instance"} | ({"le"} if name.endswith("_bucket") else set())


def scope(expr: str) -> set[str]:
    """The labels the series an expression reads may carry: each metric's (``series_labels``) and those the
    ``label_replace`` calls in it add, whose source label must be on the series they read (or be ``""``: the new
    label is then a constant).

    Raises ``AssertionError`` naming an unknown metric or a label_replace source that is not there."""
    names, _ = promql_metrics_and_grouping(expr)
    labels = set().union(*(series_labels(name) for name in names))
    for call in _LABEL_REPLACE.finditer(expr):
        series, new, _, source, _ = (arg.strip().strip('"') for arg in inside(expr, call.end()).rsplit(",", 4))
        assert source in scope(series) | {""}, f"label_replace reads no label {source} of {series}"
        labels.add(new)
    return labels


def check_labels(expr: str) -> set[str]:
    """Check that each aggregation groups by labels its operand has, and that vector matching uses labels the
    expression has; return the labels the result can carry."""
    result: set[str] = set()
    for aggregation in _AGGREGATION.finditer(expr):
        grouping = label_set(aggregation[1])
        operand = inside(expr, aggregation.end())
        assert grouping <= scope(operand), f"no label {grouping - scope(operand)} on {operand}"
        result |= grouping
    for matching in _MATCHING.finditer(expr):
        assert label_set(matching[1]) <= scope(expr), f"no label {label_set(matching[1]) - scope(expr)} in {expr}"
    replaced = {inside(expr, c.end()).rsplit(",", 4)[1].strip().strip('"') for c in _LABEL_REPLACE.finditer(expr)}
    return result | replaced if result else scope(expr)


def test_every_metric_and_label_the_alert_rules_use_exists() -> None:
    used = set()
    for rule in alert_rules():
        result = check_labels(rule["expr"])
        templated = set(_TEMPLATE_LABEL.findall(" ".join(rule["annotations"].values())))
        assert templated <= result, f"{rule['alert']}: the alert has no label {templated - result}"
        used |= promql_metrics_and_grouping(rule["expr"])[0]
    assert ALERTED <= used, f"no alert reads {ALERTED - used}"


def test_the_job_absent_alert_covers_every_scraped_job() -> None:
    """A job added to prometheus.yml and not to EtlJobAbsent would vanish unnoticed; each term labels its own job."""
    jobs = [c["job_name"] for c in yaml.safe_load(PROMETHEUS_FILE.read_text())["scrape_configs"]]
    expr = next(rule["expr"] for rule in alert_rules() if rule["alert"] == "EtlJobAbsent")
    terms = _JOB_ABSENT_TERM.findall(expr)
    assert len(terms) == expr.count("absent("), f"a term of EtlJobAbsent is not in the usual form: {expr}"
    assert all(selected == labelled for selected, labelled in terms), terms
    assert sorted(selected for selected, _ in terms) == sorted(jobs)


def test_the_rules_tests_feed_series_as_the_code_exports_them() -> None:
    """Otherwise promtool could pass on a label the code never sets."""
    for test in yaml.safe_load(ALERTS_TEST_FILE.read_text())["tests"]:
        for series in test["input_series"]:
            m = _SERIES.match(series["series"])
            assert m, series["series"]
            labels = {pair.partition("=")[0].strip() for pair in m["labels"].split(",")}
            exported = series_labels(m["name"])
            assert labels <= exported, f"{series['series']}: no label {labels - exported}"


def test_every_alert_has_a_severity_a_summary_a_description_and_a_runbook_line() -> None:
    readme = README.read_text()
    for rule in alert_rules():
        name = rule["alert"]
        assert rule["labels"]["severity"] in SEVERITIES, name
        assert rule["annotations"].keys() == ANNOTATIONS, name
        assert re.search(rf"^\| `{name}` \|", readme, flags=re.M), f"no runbook row for {name} in the README"


def duration_s(text: str) -> int:
    """A Prometheus duration such as ``90s``, ``10m`` or ``1h``, in seconds."""
    return sum(int(n) * _UNIT_S[unit] for n, unit in _DURATION.findall(text))


def series_span_s(values: str, interval_s: int) -> int:
    """How far (seconds) a promtool input series runs: ``'a+bxN'`` is N + 1 samples, ``'_xN'`` N gaps."""
    count = 0
    for token in values.split():
        head, times, n = token.rpartition("x") if "x" in token else (token, "", "")
        count += int(n) + (0 if head == "_" else 1) if times else 1
    return (count - 1) * interval_s


def silent_late_enough(test: dict[str, Any], evaluation: dict[str, Any], rule: dict[str, Any]) -> bool:
    """Whether ``evaluation`` expects ``rule`` silent well after its ``for:`` could have elapsed, while every input
    series of ``test`` still runs: silence inside ``for:``, or once the series ran out, proves nothing."""
    at_s = duration_s(evaluation["eval_time"])
    interval_s = duration_s(test.get("interval", "1m"))
    return (not evaluation.get("exp_alerts") and at_s >= duration_s(rule.get("for", "0s")) + SILENT_AFTER_FOR_S
            and all(series_span_s(s["values"], interval_s) >= at_s for s in test["input_series"]))


def test_every_alert_is_tested_firing_and_silent() -> None:
    tests = yaml.safe_load(ALERTS_TEST_FILE.read_text())
    assert tests["rule_files"] == [ALERTS_FILE.name]
    for rule in alert_rules():
        mine = [(test, e) for test in tests["tests"] for e in test["alert_rule_test"]
                if e["alertname"] == rule["alert"]]
        assert any(e.get("exp_alerts") for _, e in mine), f"{rule['alert']} is never expected to fire"
        assert any(silent_late_enough(test, e, rule) for test, e in mine), (
            f"{rule['alert']} is never expected silent {SILENT_AFTER_FOR_S} s after its for: on series still running")


def test_every_text_that_explains_a_bridge_pause_names_both_causes() -> None:
    """The bridge pauses for a queue at MAX_QUEUE_DEPTH or for a Redis that refuses writes: an operator told of one
    cause only looks in the wrong place."""
    rule = next(rule for rule in alert_rules() if rule["alert"] == "EtlBridgePaused")
    runbook = re.search(r"^\| `EtlBridgePaused` \|.*$", README.read_text(), flags=re.M)
    # The panels that show the pause alone (the one that plots it next to the breakers points there).
    panels = {p["title"]: p.get("description", "") for p in dashboard()["panels"]
              if p["targets"] and all("etl_bridge_paused" in t["expr"] for t in p["targets"])}
    texts = {"alert": rule["annotations"]["description"], "runbook": runbook[0] if runbook else "",
             "metric help": BRIDGE_PAUSED.describe()[0].documentation, **panels}
    assert panels
    for where, text in texts.items():
        assert "queue" in text and "Redis" in text, f"the {where} names one cause of a pause only: {text}"


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
