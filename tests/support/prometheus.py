"""A real Prometheus server for the tests, and its ``promtool``, from Debian's ``prometheus`` package (``.ci/run``
installs it). Where it is missing the tests skip with one line; on CI (``CI=true``) they fail.

The server runs on loopback, on a free port, with its configuration and data under a directory of the caller's.
"""

from __future__ import annotations

import json
import shutil
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml

from etl.dev.servers import Server, free_port
from tests.graphs import in_ci

DEBIAN_PACKAGE = "prometheus"
HTTP_TIMEOUT_S = 5.0


def binary(name: str) -> str:
    """The path of ``name`` (``prometheus`` or ``promtool``); skips the test without it, fails it on CI."""
    path = shutil.which(name)
    if path is None:
        reason = f"{name} is not installed (Debian package {DEBIAN_PACKAGE})"
        if in_ci():
            pytest.fail(f"CI must run the Prometheus tests: {reason}", pytrace=False)
        pytest.skip(reason)
    return path


def prometheus_server(data_dir: Path, config: dict[str, Any]) -> Server:
    """A Prometheus server (not started) running ``config``, written as ``data_dir/prometheus.yml``; rule files
    are found relative to it."""
    data_dir.mkdir(parents=True, exist_ok=True)
    config_path = data_dir / "prometheus.yml"
    config_path.write_text(yaml.safe_dump(config))
    port = free_port()
    argv = [binary("prometheus"), f"--config.file={config_path}", f"--storage.tsdb.path={data_dir / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}"]
    return Server("prometheus", argv, port, data_dir, ready=lambda: _ready(port))


def _ready(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/-/ready", timeout=HTTP_TIMEOUT_S) as response:
            return bool(response.status == 200)
    except OSError:
        return False


def api(server: Server, path: str) -> Any:
    """The ``data`` of a Prometheus HTTP API answer, e.g. ``api(server, "/api/v1/alerts")``. Raises
    ``AssertionError`` unless the status is success."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{server.port}{path}", timeout=HTTP_TIMEOUT_S) as response:
            body = json.load(response)
    except urllib.error.HTTPError as e:
        body = json.load(e)
    assert body.get("status") == "success", body
    return body["data"]


def alert_states(server: Server, alertname: str) -> list[dict[str, Any]]:
    """The active alerts named ``alertname``: each with its ``labels`` and ``state`` (pending or firing)."""
    return [a for a in api(server, "/api/v1/alerts")["alerts"] if a["labels"].get("alertname") == alertname]
