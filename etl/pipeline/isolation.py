"""Poison isolation: a batch a sink rejects for its data is split until only the bad events fail.

One bad event in a batch of 100 must neither fail the other 99 nor send all 100 to the dead-letter queue.
The halves are handed back to the queue (``resend``) rather than written here, so each half gets its own retries,
time limit and, once it is down to one event, its own dead letter.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

from etl.errors import SinkDataError
from etl.sinks.base import Sink

log = logging.getLogger(__name__)
Event = dict[str, Any]


def write_or_split(sink: Sink, events: Sequence[Event], resend: Callable[[list[Event]], object], *,
                   stage: str) -> bool:
    """Write ``events`` to the sink of ``stage``; on ``SinkDataError`` resend both halves instead.

    Returns True when the sink took the batch, False when it was split. Raises ``SinkDataError`` for a single
    rejected event (it is the poison), and whatever else ``write`` raises (a ``TransientError`` is retried as a
    whole batch). What ``resend`` returns is ignored: it is typically an actor's ``send``, which returns the message.
    """
    try:
        sink.write(events)
        return True
    except SinkDataError as e:
        if len(events) < 2:
            raise
        half = len(events) // 2
        log.warning("%s rejected a batch of %d (%s); retrying its halves to isolate the bad event(s)",
                    stage, len(events), e, extra={"sink": stage, "events": len(events), "error": str(e)})
        resend(list(events[:half]))
        resend(list(events[half:]))
        return False
