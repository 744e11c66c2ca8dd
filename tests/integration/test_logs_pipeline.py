"""The logs of the real processes (bridge, enrich and graph pools): ECS fields naming each process by its own
PID, and dead letters, a flood of bad events or poison events isolated at a sink, logged as one summary line per
stage and reason, with ids, including what was counted just before the pool stopped, which only the flush at
shutdown can say."""

from __future__ import annotations

import asyncio
import base64
import json
import socket
import time
from collections import Counter
from collections.abc import Callable
from datetime import datetime
from typing import Any

import orjson
import psutil

from etl.broker import redis_client
from etl.config import Settings
from etl.dev.generator import generate
from etl.dev.supervisor import Pipeline
from etl.ops import report
from etl.pipeline.dlq import DeadLetterStore
from etl.pipeline.dlqlog import SUMMARY_FIRST_IDS, SUMMARY_INTERVAL_S
from tests.integration.accounting import publish_all
from tests.waiting import wait_for

NOT_JSON = 300
WITH_NUL = 120
TOO_DEEP = 80
WAIT_S = 60.0
POISON = 7
GOOD = {"id": "e", "type": "t", "source": "s", "timestamp": 5}


def not_json(n: int) -> list[bytes]:
    return [b"not json %d" % i for i in range(n)]


def with_nul(n: int) -> list[bytes]:
    return [orjson.dumps({**GOOD, "id": f"nul-{i}", "type": "t\x00"}) for i in range(n)]


def too_deep(n: int) -> list[bytes]:
    return [b'{"x":' + b"[" * 200 + b"%d" % i + b"]" * 200 + b"}" for i in range(n)]


def peer_port(port: int) -> str:
    """A payload whose peer port the graph cannot make an endpoint of, though the event contract lets it by."""
    return base64.b64encode(orjson.dumps({"dst_ip": "203.0.113.9", "dst_port": port})).decode()


def json_lines(pipeline: Pipeline, name: str) -> list[dict[str, Any]]:
    """The process's JSON lines (the Dramatiq parent process writes its own few in text)."""
    text = (pipeline.log_dir / f"{name}.log").read_text(errors="replace")
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def summaries(pipeline: Pipeline) -> list[dict[str, Any]]:
    return [line for line in json_lines(pipeline, "worker-enrich") if line["message"].startswith("dead-lettered")]


def summed(lines: list[dict[str, Any]]) -> Counter[str]:
    total: Counter[str] = Counter()
    for line in lines:
        total[line["reason"]] += line["events"]
    return total


def pid_of(line: dict[str, Any]) -> int:
    return int(line["service"]["instance"]["id"].rpartition(":")[2])


def counted(settings: Settings, n: int) -> Callable[[], bool]:
    return lambda: report.dead_letter_counts(settings).get("enrich", 0) >= n


def test_a_flood_of_bad_events_is_one_summary_line_per_reason_from_the_process_that_counted_it(
        make_settings: Callable[..., Settings], start_pipeline: Callable[..., Pipeline]) -> None:
    settings = make_settings(MAX_BATCH_SIZE=50, BATCH_LINGER_MS=100, WORKER_PROCESSES=2)
    pipeline = start_pipeline(settings, pools=("enrich",))
    asyncio.run(publish_all(settings, not_json(NOT_JSON) + with_nul(WITH_NUL)))
    wait_for(counted(settings, NOT_JSON + WITH_NUL), timeout_s=WAIT_S, describe=lambda: pipeline.log_tail("bridge-0"))

    expected = {"BadEvent/json": NOT_JSON, "BadEvent/nul": WITH_NUL}
    lines = wait_for(lambda: summaries(pipeline) if summed(summaries(pipeline)) == expected else None,
                     timeout_s=SUMMARY_INTERVAL_S + WAIT_S, describe=lambda: pipeline.log_tail("worker-enrich"))
    per_process = Counter((line["service"]["instance"]["id"], line["reason"]) for line in lines)
    assert set(per_process.values()) == {1}, f"one line per process and reason, not one per batch: {per_process}"
    store = DeadLetterStore(redis_client(settings), retention_s=3600)
    for line in lines:
        assert line["stage"] == "enrich" and line["error"]["message"].startswith(line["reason"]), line
        assert len(line["dead_letter_ids"]) == SUMMARY_FIRST_IDS, line
        assert all(store.get(entry) is not None for entry in line["dead_letter_ids"]), line

    workers = {child.pid for child in psutil.Process(pipeline.procs["worker-enrich"].pid).children()}
    for line in lines:
        assert line["log.level"] == "WARNING" and line["log"]["logger"] == "etl.pipeline.dlq", line
        assert line["service"]["name"] == "worker-enrich" and line["ecs"]["version"], line
        assert line["service"]["instance"]["id"].startswith(f"{socket.gethostname()}:"), line
        assert pid_of(line) in workers, (line, workers)
    [exposition] = [line for line in json_lines(pipeline, "worker-enrich")
                    if line["log"]["logger"] == "etl.middleware.exposition"]
    assert pid_of(exposition) in workers, "the metrics process is forked from Dramatiq's parent too"
    [bridge] = json_lines(pipeline, "bridge-0")[:1]
    assert bridge["service"] == {"name": "bridge",
                                 "instance": {"id": f"{socket.gethostname()}:{pipeline.procs['bridge-0'].pid}"}}
    assert bridge["@timestamp"].endswith("Z") and {"log.level", "message", "log"} <= set(bridge), bridge


def written_at(line: dict[str, Any]) -> float:
    """The line's ``@timestamp`` in Unix seconds (it has milliseconds)."""
    return datetime.fromisoformat(line["@timestamp"]).timestamp()


def test_dead_letters_counted_just_before_the_pool_stops_are_in_its_last_lines(
        make_settings: Callable[..., Settings], start_pipeline: Callable[..., Pipeline]) -> None:
    """Only the flush at shutdown can write a line after the stop was asked for and before the window's timer
    could fire: the window opened after ``published``, so its timer is not due before ``published`` plus the
    interval."""
    settings = make_settings(MAX_BATCH_SIZE=20, BATCH_LINGER_MS=100, WORKER_PROCESSES=1)
    pipeline = start_pipeline(settings, pools=("enrich",))
    published = time.time()
    asyncio.run(publish_all(settings, too_deep(TOO_DEEP)))
    wait_for(counted(settings, TOO_DEEP), timeout_s=WAIT_S, describe=lambda: pipeline.log_tail("worker-enrich"))
    stop_asked = time.time()
    codes = pipeline.stop()
    assert set(codes.values()) == {0}, {name: pipeline.log_tail(name) for name in codes}
    lines = summaries(pipeline)
    assert summed(lines) == {"BadEvent/depth": TOO_DEEP}, [line["message"] for line in lines]
    timer_due = published + SUMMARY_INTERVAL_S
    assert stop_asked < timer_due, f"the machine was too slow to tell the flush from the timer: {stop_asked=}"
    assert [stop_asked <= written_at(line) < timer_due for line in lines] == [True], (
        "one line, written by the flush at shutdown", stop_asked, timer_due, lines)


def test_poison_events_isolated_at_a_sink_are_one_summary_line_not_an_error_each(
        make_settings: Callable[..., Settings], start_pipeline: Callable[..., Pipeline]) -> None:
    """Isolation splits a batch down to single events at a sink, and each poison event fails as a message of its
    own: the dead-letter summary is its line, not one ERROR per event from us or from Dramatiq."""
    settings = make_settings(MAX_BATCH_SIZE=100, BATCH_LINGER_MS=200, WORKER_PROCESSES=1)
    pipeline = start_pipeline(settings, pools=("enrich", "graph"))
    valid = [orjson.loads(raw) for raw in generate(96, hosts=5, seed=7)]
    poison = [dict(valid[10 * i], id=f"poison-{i}", payload=peer_port(70_000 + i)) for i in range(POISON)]
    asyncio.run(publish_all(settings, [orjson.dumps(e) for e in valid + poison]))
    wait_for(lambda: report.dead_letter_counts(settings).get("graph", 0) >= POISON, timeout_s=WAIT_S,
             describe=lambda: pipeline.log_tail("worker-graph"))
    codes = pipeline.stop()
    assert set(codes.values()) == {0}, {name: pipeline.log_tail(name) for name in codes}

    lines = json_lines(pipeline, "worker-graph")
    [summary] = [line for line in lines if line["message"].startswith("dead-lettered")]
    assert (summary["stage"], summary["reason"], summary["events"]) == ("graph", "PeerDataError", POISON), summary
    assert len(summary["dead_letter_ids"]) == SUMMARY_FIRST_IDS, summary
    loud = Counter((line["log.level"], line["log"]["logger"]) for line in lines if line["log.level"] != "INFO")
    split = ("WARNING", "etl.pipeline.isolation")  # one per batch split, not per event
    assert set(loud) - {split} == {("WARNING", "etl.pipeline.dlq")}, "no ERROR nor WARNING per failed message"
