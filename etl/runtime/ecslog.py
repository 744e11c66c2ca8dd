"""A log record as an Elastic Common Schema (ECS) document: what every JSON log line of every process says.

Field placement follows ECS and its logging spec: ``@timestamp``, ``log.level`` and ``message`` come first, and
``log.level`` is a top-level key with a dot in it (the spec forbids nesting it, so that a line read by a person
starts with its time, level and message); every other ECS field is a nested object, ECS's canonical form:

    {"@timestamp": "2026-12-06T15:54:08.123Z", "log.level": "WARNING", "message": "...",
     "ecs": {"version": "8.11.0"}, "log": {"logger": "etl.pipeline.dlq"},
     "service": {"name": "worker-enrich", "instance": {"id": "host:1234"}},
     "error": {"type": "...", "message": "...", "stack_trace": "..."}, "stage": "enrich", ...}

The context a call passes in ``extra`` (``pool``, ``stage``, ``sink``, ``events``, ...) stays at the top level,
except ``error``, which is ``error.message``. A context key that names an ECS object of the line (``log``,
``service``, ``ecs``) is dropped: the line's own fields win.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from pythonjsonlogger.core import merge_record_extra
from pythonjsonlogger.json import JsonFormatter

ECS_VERSION = "8.11.0"
# The key of a call's context that carries its error's text; ECS's ``error`` is an object.
CONTEXT_ERROR = "error"


def timestamp(created: float) -> str:
    """``created`` (Unix seconds) as ISO 8601 in UTC with milliseconds, e.g. ``2026-12-06T15:54:08.123Z``."""
    return datetime.fromtimestamp(created, tz=UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def instance_id(host: str, record: logging.LogRecord) -> str:
    """``host:pid`` of the process that made ``record``. The PID is the record's own, taken when it was made: a
    Dramatiq worker process is forked from its parent after logging may have been set up there."""
    return f"{host}:{record.process if record.process is not None else os.getpid()}"


def error_type(exc_type: type[BaseException]) -> str:
    """An exception's class, qualified by its module unless it is a built-in one."""
    module = exc_type.__module__
    return exc_type.__qualname__ if module == "builtins" else f"{module}.{exc_type.__qualname__}"


def error_fields(record: logging.LogRecord, said: object, stack_trace: str | None) -> dict[str, str]:
    """ECS ``error.*``: the exception's type, message and stack trace, if the record carries one; ``said``, the
    call's own ``error`` context, is the message when given."""
    out: dict[str, str] = {}
    if record.exc_info and record.exc_info[0] is not None:
        out["type"] = error_type(record.exc_info[0])
        out["message"] = str(record.exc_info[1])
    if said is not None:
        out["message"] = str(said)
    if stack_trace:
        out["stack_trace"] = stack_trace
    return out


def ecs_document(record: logging.LogRecord, *, service: str, host: str, context: Mapping[str, Any],
                 stack_trace: str | None = None) -> dict[str, Any]:
    """The line for ``record`` (whose ``message`` is formatted already) from ``service`` on ``host``."""
    doc: dict[str, Any] = {
        "@timestamp": timestamp(record.created),
        "log.level": record.levelname,
        "message": record.message,
        "ecs": {"version": ECS_VERSION},
        "log": {"logger": record.name},
        "service": {"name": service, "instance": {"id": instance_id(host, record)}},
    }
    error = error_fields(record, context.get(CONTEXT_ERROR), stack_trace)
    if error:
        doc["error"] = error
    for key, value in context.items():
        if key != CONTEXT_ERROR and key not in doc:
            doc[key] = value
    return doc


class EcsJsonFormatter(JsonFormatter):
    """python-json-logger's formatter (its JSON encoding and its handling of ``extra``), with ECS field names."""

    def __init__(self, service: str, host: str | None = None) -> None:
        super().__init__()
        self._service = service
        self._host = host or socket.gethostname()

    def add_fields(self, log_data: dict[str, Any], record: logging.LogRecord, message_dict: dict[str, Any]) -> None:
        # The base class put the formatted exception, if any, under "exc_info": it is ECS's error.stack_trace.
        context = dict(message_dict)
        stack_trace = context.pop("exc_info", None)
        merge_record_extra(record, context, reserved=self.reserved_attrs)
        log_data.update(ecs_document(record, service=self._service, host=self._host, context=context,
                                     stack_trace=stack_trace))
