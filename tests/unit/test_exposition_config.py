"""The seam that reads where Dramatiq's exposition server would listen: its constants, else the environment."""

from __future__ import annotations

import types

import pytest
from dramatiq.middleware import prometheus

from etl.middleware.exposition import ExpositionConfig, exposition_config


def test_reads_dramatiqs_constants() -> None:
    config = exposition_config(prometheus)
    assert config == ExpositionConfig(prometheus.HTTP_HOST, prometheus.HTTP_PORT, prometheus.DB_PATH)


@pytest.mark.parametrize("module", [None, types.ModuleType("changed"), types.SimpleNamespace(
    HTTP_HOST="h", HTTP_PORT="9191", DB_PATH="/d")])
def test_falls_back_to_the_environment(module: object, monkeypatch: pytest.MonkeyPatch,
                                       caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setenv("dramatiq_prom_host", "127.0.0.2")
    monkeypatch.setenv("dramatiq_prom_port", "9999")
    monkeypatch.setenv("dramatiq_prom_db", "/tmp/metrics-dir")
    assert exposition_config(module) == ExpositionConfig("127.0.0.2", 9999, "/tmp/metrics-dir")
    assert "reading dramatiq_prom_* from the environment" in caplog.text
