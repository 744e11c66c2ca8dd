"""Pool command lines and the retry policy: pure decisions, no servers."""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import pytest

from etl.broker import retry_when
from etl.errors import ConfigError, SinkDataError, SinkUnavailable
from etl.pools import dramatiq_command


def test_each_pool_runs_dramatiq_on_its_own_queue_with_bounded_prefetch() -> None:
    argv, env = dramatiq_command("timescale", {"WORKER_THREADS": "6", "METRICS_PORT": "9300"})
    assert argv[:6] == [sys.executable, "-m", "dramatiq", "etl.actors", "--queues", "timescale"]
    assert argv[argv.index("--threads") + 1] == "6"
    assert (env["dramatiq_queue_prefetch"], env["dramatiq_delay_queue_prefetch"]) == ("12", "12")  # 2 per thread
    assert env["dramatiq_prom_port"] == "9300" and env["dramatiq_prom_db"] == env["PROMETHEUS_MULTIPROC_DIR"]
    graph_argv, _ = dramatiq_command("graph", {})
    # Neo4j, the default: two processes of one writer each
    assert (graph_argv[graph_argv.index("--processes") + 1], graph_argv[graph_argv.index("--threads") + 1]) == (
        "2", "1")


def test_the_timescale_pool_opens_a_connection_per_thread_and_one_for_health_checks() -> None:
    _, env = dramatiq_command("timescale", {"WORKER_THREADS": "3"})
    assert env["PG_POOL_SIZE"] == "4"
    _, env = dramatiq_command("timescale", {"WORKER_THREADS": "3", "PG_POOL_SIZE": "10"})
    assert "PG_POOL_SIZE" not in env  # the operator's own setting stays
    _, env = dramatiq_command("publish", {})
    assert "PG_POOL_SIZE" not in env


def size(argv: list[str]) -> tuple[str, str]:
    return argv[argv.index("--processes") + 1], argv[argv.index("--threads") + 1]


def test_the_graph_pool_is_one_process_of_two_threads_on_falkordb_two_of_one_on_neo4j_unless_told() -> None:
    falkor = {"NEO4J_URI": "falkor://127.0.0.1:6380"}
    argv, env = dramatiq_command("graph", falkor)
    assert size(argv) == ("1", "2")
    assert env["dramatiq_queue_prefetch"] == "4"
    argv, _ = dramatiq_command("graph", {**falkor, "WORKER_THREADS": "1", "WORKER_PROCESSES": "3"})
    assert size(argv) == ("3", "1")
    argv, _ = dramatiq_command("graph", {"NEO4J_URI": "neo4j://graph.internal:7687"})
    assert size(argv) == ("2", "1")


def test_a_pool_reuses_its_metrics_directory_and_starts_it_empty(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    _, first = dramatiq_command("graph", {"METRICS_PORT": "9301"})
    directory = Path(first["PROMETHEUS_MULTIPROC_DIR"])
    (directory / "counter_123.db").write_bytes(b"stale")
    (directory / "keep.txt").write_text("not ours")
    _, again = dramatiq_command("graph", {"METRICS_PORT": "9301"})
    _, other = dramatiq_command("enrich", {"METRICS_PORT": "9302"})
    assert again["PROMETHEUS_MULTIPROC_DIR"] == str(directory)
    assert sorted(p.name for p in directory.iterdir()) == ["keep.txt"]
    assert other["PROMETHEUS_MULTIPROC_DIR"] != str(directory)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["etl-metrics-enrich-9302", "etl-metrics-graph-9301"]


@pytest.mark.parametrize(("pool", "env", "message"), [
    ("nope", {}, "pool must be one of"),
    ("graph", {"WORKER_PROCESSES": "0"}, "WORKER_PROCESSES must be a positive integer, got '0'"),
    ("graph", {"WORKER_THREADS": "x"}, "WORKER_THREADS must be a positive integer, got 'x'"),
])
def test_bad_pool_settings_are_clear(pool: str, env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        dramatiq_command(pool, env)


def test_transient_errors_retry_until_the_budget_and_permanent_ones_never() -> None:
    should_retry = retry_when(3)
    assert should_retry(0, SinkUnavailable("down")) and should_retry(2, TimeoutError())
    assert not should_retry(3, SinkUnavailable("down"))
    assert not should_retry(0, SinkDataError("NUL byte"))
