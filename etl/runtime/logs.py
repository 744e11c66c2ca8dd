"""Logging for every process: one JSON object per line on stdout, or readable text in a terminal.

JSON lines follow the Elastic Common Schema (``@timestamp``, ``log.level``, ``message``, ``log.logger``,
``service.name``, ``service.instance.id``, ``error.*``; see ``etl.runtime.ecslog``), plus whatever context the call
passed in ``extra`` (pool, stage, sink, batch size, event id, error).
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from typing import TextIO

from etl.errors import SinkDataError
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


def _is_data_error(record: logging.LogRecord) -> bool:
    return record.exc_info is not None and isinstance(record.exc_info[1], SinkDataError)


# Dramatiq's lines that repeat once per message where a line of ours says it once, keyed by format and the level
# Dramatiq logs them at, with the test a record must pass to go to DEBUG. Should Dramatiq reword one, it comes back
# at its own level: tests/integration/test_logs_pipeline.py would see it.
_PER_MESSAGE: dict[tuple[str, int], Callable[[logging.LogRecord], bool]] = {
    # Every message our circuit breaker delays, i.e. one per batch per cool-down during an outage: the breaker
    # logs its own transitions.
    ("Message %s was skipped.", logging.WARNING): lambda record: True,
    # A sink refusing an event's data: isolation splits the batch down to single events, so every poison event
    # fails as a message of its own. The dead-letter summary names its stage, reason and id.
    ("Failed to process message %s with unhandled exception.", logging.ERROR): _is_data_error,
    # Every message that fails for good is dead-lettered, so it is in the dead-letter summary.
    ("Retries exceeded for message %r.", logging.WARNING): lambda record: True,
}


class _DramatiqLogFilter(logging.Filter):
    """Dramatiq's log lines, made fit for ours.

    - A message is printed with its arguments, i.e. a whole batch of events; we print its actor, id and size.
    - The lines in ``_PER_MESSAGE`` would repeat for each message where a line of ours says the same once: they go
      to DEBUG.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.name.startswith("dramatiq"):
            return True
        if isinstance(record.args, tuple):
            record.args = tuple(_describe_message(a) for a in record.args)
        demote = _PER_MESSAGE.get((str(record.msg), record.levelno))
        if demote is not None and demote(record):
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
