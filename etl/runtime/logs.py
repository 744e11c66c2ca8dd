"""Logging for every process: one JSON object per line on stdout, or readable text in a terminal.

JSON lines follow the Elastic Common Schema (``@timestamp``, ``log.level``, ``message``, ``log.logger``,
``service.name``, ``service.instance.id``, ``error.*``; see ``etl.runtime.ecslog``), plus whatever context the call
passed in ``extra`` (pool, stage, sink, batch size, event id, error).
"""

from __future__ import annotations

import logging
import sys
from typing import TextIO

from etl.runtime.ecslog import EcsJsonFormatter

TEXT_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"
# Records of these loggers are chatty at INFO and say nothing an operator needs.
QUIET_LOGGERS = ("neo4j", "nats.aio.client")


def _describe_message(arg: object) -> object:
    """A Dramatiq message as ``actor(id, N items)``: its batch of events never goes into a log line."""
    if hasattr(arg, "actor_name") and hasattr(arg, "message_id") and hasattr(arg, "args"):
        batch = arg.args[0] if arg.args else ()
        size = len(batch) if isinstance(batch, (list, tuple)) else 1
        return f"{arg.actor_name}({arg.message_id}, {size} item(s))"
    return arg


class _DramatiqLogFilter(logging.Filter):
    """Dramatiq's log lines, made fit for ours.

    - A message is printed with its arguments, i.e. a whole batch of events; we print its actor, id and size.
    - "Message ... was skipped." comes for every message our circuit breaker delays: one line per batch per
      cool-down during an outage. The breaker logs its own transitions; these go to DEBUG.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.name.startswith("dramatiq"):
            return True
        if isinstance(record.args, tuple):
            record.args = tuple(_describe_message(a) for a in record.args)
        if record.msg == "Message %s was skipped." and record.levelno == logging.WARNING:
            record.levelno, record.levelname = logging.DEBUG, "DEBUG"
            return logging.getLogger().isEnabledFor(logging.DEBUG)
        return True


def resolve_format(log_format: str, stream: TextIO) -> str:
    """``auto`` means text in a terminal and JSON elsewhere."""
    if log_format != "auto":
        return log_format
    return "text" if stream.isatty() else "json"


def setup_logging(level: str, log_format: str, *, service: str, stream: TextIO | None = None) -> None:
    """Replace the root handlers with one that writes ``level`` and above to ``stream`` (stdout).

    ``service`` (``bridge``, ``worker-timescale``, ...) is every JSON line's ``service.name``.
    """
    out = stream or sys.stdout
    handler = logging.StreamHandler(out)
    if resolve_format(log_format, out) == "json":
        handler.setFormatter(EcsJsonFormatter(service))
    else:
        handler.setFormatter(logging.Formatter(TEXT_FORMAT))
    handler.addFilter(_DramatiqLogFilter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(max(logging.WARNING, root.level))
