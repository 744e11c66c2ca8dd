"""The one small interface every sink implements, and how a sink keeps a write within its time budget.

A sink's budget, ``Settings.sink_budget_s``, ends before Dramatiq's time limit interrupts the actor; a sink derives
all its time-outs from it, never from ``PROCESSING_TIMEOUT`` itself. A write takes one deadline when it starts
(``write_deadline``: the budget from then), and every request it then makes of its server (waiting for a pooled
connection, each statement or query, each attempt a driver makes again) gets only the time left: a server-side
timeout that ends a grace before the deadline (``request_timeout_s``), so that the server's answer is back by then.
When no time is left, the write raises ``TransientError`` before sending anything: not ``SinkUnavailable``, since
earlier requests spending the budget is no sign that the server is down (and the circuit breaker counts only that).
So a write the server answers ends within the budget, with the sink's own error, which Dramatiq retries. The NATS
publisher's write is one call, bounded as a whole.

Not bounded by the deadline, though each within its own time-out from the budget:

- opening the sink, which a write does first when it is not open yet (connecting, the schema);
- a server that stops answering altogether: it enforces no timeout, so the request ends at the client's socket
  timeout or TCP keepalives, set per connection; so does a request the server does not time out (FalkorDB's
  writes run to completion);
- a server slower to enforce a timeout than the grace allows for, which the margin between the budget and the
  time limit (``SINK_TIME_MARGIN_S``) absorbs.

Each sink's module names its own waits of these kinds.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any, Protocol

from etl.errors import TransientError

Event = dict[str, Any]

# One connection attempt gets at most this share of a sink's budget, so the call it was made for has time left.
CONNECT_BUDGET_SHARE = 0.25


class Sink(Protocol):
    """A destination for enriched events.

    Contract, for every implementation:
    - ``open`` connects and applies any schema idempotently; ``close`` releases connections and may be called twice.
    - ``write`` stores a whole batch or raises, and returns how many events it newly stored (a replay may
      return 0). It is idempotent: writing the same batch again changes nothing.
      It raises ``TransientError`` (usually ``SinkUnavailable``) when a retry may succeed and ``SinkDataError``
      when the data itself was rejected. It ends within ``Settings.sink_budget_s`` as the module's docstring
      says, raising ``TransientError`` if the budget runs out between its requests.
    - ``check`` raises ``SinkUnavailable`` when the server cannot be reached.
    - Methods are safe to call from several threads at once.
    """

    def open(self) -> None: ...

    def write(self, events: Sequence[Event]) -> int: ...

    def close(self) -> None: ...

    def check(self) -> None: ...


def connect_timeout_s(budget_s: float, cap_s: float) -> float:
    """Seconds one connection attempt may take: ``cap_s``, or ``CONNECT_BUDGET_SHARE`` of ``budget_s`` if less."""
    return min(cap_s, budget_s * CONNECT_BUDGET_SHARE)


def inner_timeout_s(budget_s: float, grace_s: float) -> float:
    """Seconds for a wait nested in one that ends at ``budget_s``: ``grace_s`` less, so the outer wait sees the
    inner one's answer (a server's own time-out, say, before the socket's), but at least half of ``budget_s``."""
    return max(budget_s - grace_s, budget_s / 2)


def write_deadline(budget_s: float) -> float:
    """The deadline of a write starting now, ``budget_s`` seconds away, in ``time.monotonic()`` seconds."""
    return time.monotonic() + budget_s


def time_left_s(deadline: float, doing: str, *, now: float | None = None) -> float:
    """Seconds from ``now`` (``time.monotonic()`` unless given) to ``deadline``, both in ``time.monotonic()``
    seconds; always more than 0.

    Raises ``TransientError`` naming ``doing`` when no time is left (the write's earlier requests or waits spent
    its budget).
    """
    left_s = deadline - (time.monotonic() if now is None else now)
    if left_s <= 0:
        raise TransientError(f"{doing}: no time left before the write's deadline")
    return left_s


def request_timeout_s(deadline: float, cap_s: float, doing: str, *, grace_s: float = 0.0,
                      now: float | None = None) -> float:
    """Seconds a request sent ``now`` may take: ``cap_s``, or less when ``deadline`` comes sooner: then
    ``inner_timeout_s`` of the time left, ``grace_s`` before the deadline (at least half the time left), so the
    server's answer to its own timeout comes back in time. Times as in ``time_left_s``, which raises the same."""
    return min(cap_s, inner_timeout_s(time_left_s(deadline, doing, now=now), grace_s))
