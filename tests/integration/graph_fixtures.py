"""The fixtures of the graph sink's suites (``test_graph_sink.py``, ``test_graph_flows.py``), on every backend
(``graph_env``): a test imports the ones it uses by name, and pytest finds them there."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from etl.config import Settings
from etl.sinks.graph.sink import GraphSink
from tests.graphs import Probe, open_probe


@pytest.fixture
def settings(make_settings: Callable[..., Settings], graph_env: dict[str, str]) -> Settings:
    return make_settings(**graph_env)


@pytest.fixture
def probe(settings: Settings) -> Iterator[Probe]:
    """The graph read back through the backend's own client; dropped after the test."""
    p = open_probe(settings)
    yield p
    p.drop()
    p.close()


@pytest.fixture
def sink(settings: Settings, probe: Probe) -> Iterator[GraphSink]:
    s = GraphSink(settings)
    s.open()
    yield s
    s.close()
