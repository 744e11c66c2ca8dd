"""The one small interface every sink implements."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

Event = dict[str, Any]


class Sink(Protocol):
    """A destination for enriched events.

    Contract, for every implementation:
    - ``open`` connects and applies any schema idempotently; ``close`` releases connections and may be called twice.
    - ``write`` stores a whole batch or raises, and returns how many events it newly stored (a replay may
      return 0). It is idempotent: writing the same batch again changes nothing.
      It raises ``TransientError`` (usually ``SinkUnavailable``) when a retry may succeed and ``SinkDataError``
      when the data itself was rejected.
    - ``check`` raises ``SinkUnavailable`` when the server cannot be reached.
    - Methods are safe to call from several threads at once.
    """

    name: str

    def open(self) -> None: ...

    def write(self, events: Sequence[Event]) -> int: ...

    def close(self) -> None: ...

    def check(self) -> None: ...
