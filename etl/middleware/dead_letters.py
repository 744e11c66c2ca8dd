"""Dead-lettering of messages that failed for good: permanently, or after their last retry.

``FailureClock``'s hook must run before Dramatiq's ``Retries`` re-enqueues a message, so the first failure time
it stamps travels with the retry; ``DeadLetterOnFailure``'s must run after, so it sees whether ``Retries``
failed the message. ``etl.broker.build_broker`` places them so.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

import dramatiq
from dramatiq.middleware import Middleware

from etl.pipeline.dlq import DeadLetter, DeadLetterStore
from etl.runtime.redis_durability import patiently

log = logging.getLogger(__name__)

# (event, encoding) pairs a failed message carried; encoding is "json", "text" or "base64". Middleware hooks get
# the worker's MessageProxy, which stands for the Message.
Unpacker = Callable[[dramatiq.MessageProxy], Sequence[tuple[Any, str]]]


class FailureClock(Middleware):
    """Stamps ``first_failure`` (Unix seconds) on a message the first time it fails."""

    def after_process_message(self, broker: dramatiq.Broker, message: dramatiq.MessageProxy, *,
                              result: Any = None, exception: BaseException | None = None) -> None:
        if exception is not None:
            message.options.setdefault("first_failure", time.time())


class DeadLetterOnFailure(Middleware):
    """Writes every event of a failed message to the dead-letter store, with the stage and the reason; flushes
    the store's log when the worker shuts down."""

    def __init__(self, store: Callable[[], DeadLetterStore], unpack: Unpacker) -> None:
        self._store = store
        self._unpack = unpack

    def after_process_message(self, broker: dramatiq.Broker, message: dramatiq.MessageProxy, *,
                              result: Any = None, exception: BaseException | None = None) -> None:
        if exception is None or not message.failed:
            return
        self._dead_letter(message, f"{type(exception).__name__}: {exception}")

    def after_skip_message(self, broker: dramatiq.Broker, message: dramatiq.MessageProxy) -> None:
        if message.failed:
            self._dead_letter(message, "skipped: message exceeded its age limit")

    def after_worker_shutdown(self, broker: dramatiq.Broker, worker: dramatiq.Worker) -> None:
        # After the worker threads have finished their messages: the dead-letter log's last summary, which would
        # otherwise wait for a timer that dies with the process.
        self._store().flush_log()

    def _dead_letter(self, message: dramatiq.MessageProxy, reason: str) -> None:
        now = time.time()
        attempts = int(message.options.get("retries", 0)) or 1
        first = float(message.options.get("first_failure", now))
        letters = [
            DeadLetter(message.queue_name, reason, event, attempts=attempts, first_failure=first,
                       last_failure=now, event_encoding=encoding)
            for event, encoding in self._unpack(message)
        ]
        # DEBUG: isolation fails each poison event as a message of its own, and the dead-letter summary already
        # says stage, reason and ids once per window; only the message id and attempts are this line's own.
        log.debug("message %s failed for good at %s after %d attempt(s): %s", message.message_id,
                  message.queue_name, attempts, reason,
                  extra={"stage": message.queue_name, "events": len(letters), "error": reason})
        # Losing Redis here must not lose the dead letters: the message is acked once this hook returns.
        patiently(lambda: self._store().add(letters), "store dead letters")
