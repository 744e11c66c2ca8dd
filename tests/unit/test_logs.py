"""Log lines: one JSON object each, in ECS field names, with the context the call passed."""

from __future__ import annotations

import io
import json
import logging
import os
import re
import socket
from collections.abc import Iterator

import pytest

from etl.errors import SinkDataError, SinkMisconfigured
from etl.runtime.ecslog import ECS_VERSION
from etl.runtime.logs import resolve_format, setup_logging


@pytest.fixture(autouse=True)
def restore_root_logger() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def test_json_lines_follow_ecs_and_keep_the_context() -> None:
    out = io.StringIO()
    setup_logging("INFO", "json", service="worker-graph", stream=out)
    log = logging.getLogger("etl.test")
    log.info("wrote %d events", 100, extra={"sink": "graph", "events": 100})
    log.debug("not shown")
    try:
        raise ValueError("bad")
    except ValueError:
        log.exception("failed", extra={"event_id": "e1"})
    log.warning("retrying", extra={"error": "SinkUnavailable: refused", "stage": "graph"})
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert len(lines) == 3
    first, second, third = lines
    assert list(first)[:3] == ["@timestamp", "log.level", "message"], "the ECS logging spec's order"
    assert {k: first[k] for k in ("log.level", "message", "log", "service", "ecs", "sink", "events")} == {
        "log.level": "INFO", "message": "wrote 100 events", "log": {"logger": "etl.test"},
        "service": {"name": "worker-graph", "instance": {"id": f"{socket.gethostname()}:{os.getpid()}"}},
        "ecs": {"version": ECS_VERSION}, "sink": "graph", "events": 100}
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", first["@timestamp"]), first["@timestamp"]
    assert not {"time", "level", "logger", "process", "exc_info", "error"} & set(first)
    assert second["event_id"] == "e1" and second["log.level"] == "ERROR"
    assert {k: second["error"][k] for k in ("type", "message")} == {"type": "ValueError", "message": "bad"}
    trace = second["error"]["stack_trace"]
    assert trace.startswith("Traceback") and "ValueError: bad" in trace
    assert third["error"] == {"message": "SinkUnavailable: refused"} and third["stage"] == "graph"


def test_text_in_a_terminal_json_elsewhere() -> None:
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    assert resolve_format("auto", Tty()) == "text"
    assert resolve_format("auto", io.StringIO()) == "json"
    assert resolve_format("text", io.StringIO()) == "text"


def test_dramatiq_lines_never_carry_a_batch() -> None:
    import dramatiq

    out = io.StringIO()
    setup_logging("INFO", "json", service="worker-timescale", stream=out)
    message = dramatiq.Message(queue_name="timescale", actor_name="store_batch",
                               args=([{"id": "e1", "payload": "SECRET"}] * 3,), kwargs={}, options={})
    logging.getLogger("dramatiq.worker.WorkerThread").error("Failed to process message %s with unhandled exception.",
                                                            message)
    logging.getLogger("dramatiq.worker.WorkerThread").warning("Message %s was skipped.", message)
    [line] = [json.loads(x) for x in out.getvalue().splitlines()]
    assert "SECRET" not in line["message"]
    assert line["message"] == (f"Failed to process message store_batch({message.message_id}, 3 item(s)) "
                               "with unhandled exception.")


def failure(exception: Exception, level: str = "INFO") -> list[dict[str, object]]:
    """The JSON lines of Dramatiq failing a message with ``exception``, then giving up on it."""
    import dramatiq

    out = io.StringIO()
    setup_logging(level, "json", service="worker-graph", stream=out)
    message = dramatiq.Message(queue_name="graph", actor_name="merge_batch", args=([{"id": "e1"}],), kwargs={},
                               options={})
    try:
        raise exception
    except Exception:
        logging.getLogger("dramatiq.worker.WorkerThread").error(
            "Failed to process message %s with unhandled exception.", message, exc_info=True)
    logging.getLogger("dramatiq.middleware.retries.PatientRetries").warning(
        "Retries exceeded for message %r.", message.message_id)
    return [json.loads(x) for x in out.getvalue().splitlines()]


def test_a_poison_event_is_no_dramatiq_line_of_its_own_the_dead_letter_summary_is() -> None:
    assert failure(SinkDataError("event 'e1': a NUL byte")) == []
    lines = failure(SinkDataError("event 'e1': a NUL byte"), level="DEBUG")
    assert [line["log.level"] for line in lines] == ["DEBUG", "DEBUG"]
    assert lines[0]["error"]["type"].endswith("SinkDataError"), "kept whole at DEBUG, traceback and all"


def test_a_failure_not_about_the_data_stays_an_error() -> None:
    [line] = failure(SinkMisconfigured("permission denied for table events"))
    assert line["log.level"] == "ERROR" and line["error"]["type"].endswith("SinkMisconfigured")
    [line] = failure(ValueError("a bug"))
    assert line["log.level"] == "ERROR"
