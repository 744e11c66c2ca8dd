"""A log record as an ECS document: the pure mapping, record by record."""

from __future__ import annotations

import logging
import sys

from etl.errors import SinkUnavailable
from etl.runtime.ecslog import ecs_document, error_type, timestamp


def record(msg: str = "hello", *, pid: int | None = 4321, exc: BaseException | None = None) -> logging.LogRecord:
    exc_info = (type(exc), exc, exc.__traceback__) if exc is not None else None
    made = logging.LogRecord("etl.x", logging.WARNING, __file__, 1, msg, None, exc_info)
    made.created, made.process, made.message = 1_796_572_448.1239, pid, made.getMessage()
    return made


def test_the_timestamp_is_utc_iso_8601_with_milliseconds() -> None:
    assert timestamp(1_796_572_448.1239) == "2026-12-06T15:54:08.123Z"
    assert timestamp(0) == "1970-01-01T00:00:00.000Z"


def test_the_instance_is_the_host_and_the_pid_of_the_record_not_of_the_formatting_process() -> None:
    doc = ecs_document(record(pid=4321), service="worker-enrich", host="node-a", context={})
    assert doc["service"] == {"name": "worker-enrich", "instance": {"id": "node-a:4321"}}
    assert doc["log"] == {"logger": "etl.x"} and doc["log.level"] == "WARNING" and doc["message"] == "hello"


def test_context_stays_at_the_top_and_cannot_replace_the_line_s_own_fields() -> None:
    doc = ecs_document(record(), service="bridge", host="h",
                       context={"stage": "enrich", "events": 3, "service": "x", "log": "y", "message": "z"})
    assert doc["stage"] == "enrich" and doc["events"] == 3
    assert doc["service"]["name"] == "bridge" and doc["log"] == {"logger": "etl.x"} and doc["message"] == "hello"
    assert "error" not in doc


def test_an_exception_gives_its_type_message_and_stack_trace() -> None:
    try:
        raise SinkUnavailable("timescale refused")
    except SinkUnavailable:
        exc_info = sys.exc_info()
    made = record(exc=exc_info[1])
    doc = ecs_document(made, service="s", host="h", context={}, stack_trace="Traceback ...")
    assert doc["error"] == {"type": "etl.errors.SinkUnavailable", "message": "timescale refused",
                            "stack_trace": "Traceback ..."}
    said = ecs_document(made, service="s", host="h", context={"error": "SinkUnavailable: as the call put it"})
    assert said["error"]["message"] == "SinkUnavailable: as the call put it", "the call's words, in ECS's place"


def test_built_in_exceptions_are_named_bare() -> None:
    assert error_type(ValueError) == "ValueError"
    assert error_type(SinkUnavailable) == "etl.errors.SinkUnavailable"
