"""What our processes expose to Prometheus, and what a PromQL expression reads: shared by the checks of the
dashboard (``tests/unit/test_dashboard.py``) and of the alert rules (``tests/unit/test_alert_rules.py``)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import dramatiq.middleware.prometheus as dramatiq_prometheus
import prometheus_client
from prometheus_client.metrics import MetricWrapperBase

from etl.runtime import metrics

# Series Prometheus records itself for every target.
PROMETHEUS_OWN: dict[str, set[str]] = {"up": set()}


def exposed(kind: str, name: str) -> set[str]:
    """The series names a ``prometheus_client`` metric of this kind and name exposes."""
    registry = prometheus_client.CollectorRegistry()
    getattr(prometheus_client, kind)(name, "doc", registry=registry)
    return {sample.name for family in registry.collect() for sample in family.samples}


def known_metrics() -> dict[str, set[str]]:
    """Every series name our processes expose -> its label names: ours, Dramatiq's, Prometheus's own."""
    known = dict(PROMETHEUS_OWN)
    for obj in vars(metrics).values():
        if isinstance(obj, MetricWrapperBase):
            for series in exposed(type(obj).__name__, obj._name):
                known[series] = set(obj._labelnames)
    source = ast.parse(Path(dramatiq_prometheus.__file__).read_text())
    for call in ast.walk(source):
        if isinstance(call, ast.Call) and getattr(call.func, "attr", "") in ("Counter", "Gauge", "Histogram"):
            name, labels = ast.literal_eval(call.args[0]), ast.literal_eval(call.args[2])
            for series in exposed(call.func.attr, name):
                known[series] = set(labels)
    return known


PROMQL_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or", "unless",
                    "offset", "inf", "nan"}


def promql_metrics_and_grouping(expr: str) -> tuple[set[str], set[str]]:
    """The metric names an expression selects, and the label names it groups by."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    expr = re.sub(r"\{[^}]*\}|\[[^]]*\]", "", expr)
    grouping = {label.strip() for labels in re.findall(r"\b(?:by|without)\s*\(([^)]*)\)", expr)
                for label in labels.split(",") if label.strip()}
    expr = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", expr)
    names = {m.group() for m in re.finditer(r"(?<![\w.])[A-Za-z_:][\w:]*", expr)
             if not expr[m.end():].lstrip().startswith("(") and m.group().lower() not in PROMQL_KEYWORDS}
    return names, grouping


_PROMQL_TOKEN = re.compile(r'\{[^}]*\}|\[[^]]*\]|"(?:[^"\\]|\\.)*"'
                           r"|\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)"
                           r"|(?<![\w.])[A-Za-z_:][\w:]*")
_MATCHER = re.compile(r'\s*([A-Za-z_]\w*)\s*(?:=~|!~|!=|=)\s*"((?:[^"\\]|\\.)*)"\s*(?:,|$)')


def vector_selectors(expr: str) -> list[tuple[str, dict[str, str]]]:
    """Each metric an expression selects, with its label matchers (label -> value)."""
    found = []
    for token in _PROMQL_TOKEN.finditer(expr):
        name, rest = token.group(), expr[token.end():]
        if not re.fullmatch(r"[A-Za-z_:][\w:]*", name) or name.lower() in PROMQL_KEYWORDS:
            continue
        if re.match(r"\s*(?:(?:by|without)\s*\([^)]*\)\s*)?\(", rest):
            continue  # a function or an aggregation
        braces = re.match(r"\{([^}]*)\}", rest)
        matchers = dict(_MATCHER.findall(braces[1])) if braces else {}
        found.append((name, matchers))
    return found
