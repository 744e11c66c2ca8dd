"""Log lines: one JSON object each, with the context the call passed."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest

from etl.runtime.logs import resolve_format, setup_logging


@pytest.fixture(autouse=True)
def restore_root_logger() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def test_json_lines_carry_time_level_logger_message_and_context() -> None:
    out = io.StringIO()
    setup_logging("INFO", "json", process="worker-graph", stream=out)
    log = logging.getLogger("etl.test")
    log.info("wrote %d events", 100, extra={"sink": "graph", "events": 100})
    log.debug("not shown")
    try:
        raise ValueError("bad")
    except ValueError:
        log.exception("failed", extra={"event_id": "e1"})
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert len(lines) == 2
    first, second = lines
    assert {k: first[k] for k in ("level", "logger", "message", "process", "sink", "events")} == {
        "level": "INFO", "logger": "etl.test", "message": "wrote 100 events", "process": "worker-graph",
        "sink": "graph", "events": 100}
    assert first["time"].endswith("+00:00")
    assert second["event_id"] == "e1" and "ValueError: bad" in second["exc_info"]


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
    setup_logging("INFO", "json", process="worker-timescale", stream=out)
    message = dramatiq.Message(queue_name="timescale", actor_name="store_batch",
                               args=([{"id": "e1", "payload": "SECRET"}] * 3,), kwargs={}, options={})
    logging.getLogger("dramatiq.worker.WorkerThread").error("Failed to process message %s with unhandled exception.",
                                                            message)
    logging.getLogger("dramatiq.worker.WorkerThread").warning("Message %s was skipped.", message)
    [line] = [json.loads(x) for x in out.getvalue().splitlines()]
    assert "SECRET" not in line["message"]
    assert line["message"] == (f"Failed to process message store_batch({message.message_id}, 3 item(s)) "
                               "with unhandled exception.")
