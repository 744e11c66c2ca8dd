"""A circuit breaker: a pure, thread-safe state machine that decides whether a call may go to a server now.

No I/O and no clock of its own: the caller injects ``clock`` (monotonic seconds) and reports each outcome.

- CLOSED: every call goes ahead. ``failures`` connection failures in a row open the breaker.
- OPEN: every call is refused with the seconds left of the cool-down. Results reported meanwhile come from calls
  that started before it opened, and are ignored.
- HALF_OPEN: when the cool-down has passed, the next call is the one probe; everyone else is refused until the
  probe reports. A success closes the breaker; a connection failure opens it again, for twice the previous
  cool-down (``COOLDOWN_GROWTH``), up to ``max_cooldown_s``; a probe that ended neither way (``release``) frees
  the slot for the next caller. ``allow`` notices the end of a cool-down when it is called; ``expire`` lets a
  caller with a timer move the state on time without sending a probe, so an idle breaker does not stay OPEN.

Only connection failures count (server down, unreachable, timed out). A call that failed for another reason, such
as a rejected event, is reported with ``release``: it says nothing reliable about the server, because several
sinks reject bad data before sending anything, so counting it as a success could close the breaker on a server
that is still down.
"""

from __future__ import annotations

import enum
import threading
import time
from collections.abc import Callable

COOLDOWN_GROWTH = 2.0  # each failed probe doubles the cool-down ...
DEFAULT_MAX_COOLDOWN_GROWTH = 8  # ... up to this multiple of the configured one, unless max_cooldown_s is given
DEFAULT_PROBE_TIMEOUT_S = 60.0  # a probe that never reports frees its slot after this long


class State(enum.IntEnum):
    """The breaker's states; the values are those of the ``etl_circuit_breaker_state`` metric."""

    CLOSED = 0
    HALF_OPEN = 1
    OPEN = 2


# on_change(name, old, new): called on every transition, in order, with the breaker's lock held by the caller's
# thread. It may read the breaker; it must be quick and must not report outcomes from inside.
OnChange = Callable[[str, State, State], None]


def _ignore(name: str, old: State, new: State) -> None:
    pass


class CircuitBreaker:
    """Counts consecutive connection failures to one server and fails fast while it is down. Thread-safe.

    ``failures`` (>= 1) failures in a row open the breaker for ``cooldown_s`` seconds (> 0). Raises
    ``ValueError`` on a bad argument.
    """

    def __init__(self, name: str, *, failures: int, cooldown_s: float, max_cooldown_s: float | None = None,
                 probe_timeout_s: float = DEFAULT_PROBE_TIMEOUT_S, clock: Callable[[], float] = time.monotonic,
                 on_change: OnChange = _ignore) -> None:
        if failures < 1:
            raise ValueError(f"failures must be at least 1, got {failures}")
        if cooldown_s <= 0 or probe_timeout_s <= 0:
            raise ValueError(f"cool-down and probe timeout must be positive, got {cooldown_s}, {probe_timeout_s}")
        self.name = name
        self._threshold = failures
        self._base_cooldown_s = cooldown_s
        self._max_cooldown_s = max(cooldown_s, max_cooldown_s or cooldown_s * DEFAULT_MAX_COOLDOWN_GROWTH)
        self._probe_timeout_s = probe_timeout_s
        self._clock = clock
        self._on_change = on_change
        self._lock = threading.RLock()  # re-entrant: on_change may read the breaker
        self._state = State.CLOSED
        self._failures = 0  # consecutive connection failures while CLOSED
        self._cooldown_s = cooldown_s  # the cool-down of the current (or next) opening
        self._open_until = 0.0
        self._probe_since: float | None = None  # when the HALF_OPEN probe went out, if one is out

    @property
    def state(self) -> State:
        """The state as of the last call; OPEN turns HALF_OPEN when ``allow`` or ``expire`` is called after the
        cool-down."""
        with self._lock:
            return self._state

    @property
    def cooldown_s(self) -> float:
        """The cool-down, in seconds, of the current opening (or of the next one while CLOSED/HALF_OPEN)."""
        with self._lock:
            return self._cooldown_s

    def allow(self) -> float | None:
        """None when a call may go ahead now; otherwise how many seconds to wait before asking again (> 0).

        In HALF_OPEN, a None makes the caller the probe: it must report with ``record_success``,
        ``record_failure`` or ``release``.
        """
        with self._lock:
            if self._state is State.CLOSED:
                return None
            now = self._clock()
            if self._state is State.OPEN:
                if now < self._open_until:
                    return self._open_until - now
                self._move_to(State.HALF_OPEN)
            if self._probe_since is not None and now - self._probe_since < self._probe_timeout_s:
                return self._base_cooldown_s  # the probe's verdict is pending
            self._probe_since = now
            return None

    def expire(self) -> float | None:
        """Ends a cool-down that has passed: OPEN turns HALF_OPEN, the probe slot stays free for the next ``allow``.

        Returns the seconds of cool-down left (> 0) while the breaker stays OPEN, None in any other state.
        """
        with self._lock:
            if self._state is not State.OPEN:
                return None
            left = self._open_until - self._clock()
            if left > 0:
                return left
            self._move_to(State.HALF_OPEN)
            return None

    def record_success(self) -> None:
        """A call reached the server and succeeded: resets the failure count; a HALF_OPEN breaker closes."""
        with self._lock:
            if self._state is State.OPEN:
                return
            self._failures = 0
            if self._state is State.HALF_OPEN:
                self._probe_since = None
                self._cooldown_s = self._base_cooldown_s
                self._move_to(State.CLOSED)

    def record_failure(self) -> None:
        """A call failed to reach the server (refused, unreachable, timed out)."""
        with self._lock:
            if self._state is State.OPEN:
                return
            if self._state is State.HALF_OPEN:
                self._cooldown_s = min(self._cooldown_s * COOLDOWN_GROWTH, self._max_cooldown_s)
                self._open()
                return
            self._failures += 1
            if self._failures >= self._threshold:
                self._open()

    def release(self) -> None:
        """A call ended neither way (e.g. the data was rejected): frees the HALF_OPEN probe slot, nothing else."""
        with self._lock:
            if self._state is State.HALF_OPEN:
                self._probe_since = None

    def _open(self) -> None:
        self._failures = 0
        self._probe_since = None
        self._open_until = self._clock() + self._cooldown_s
        self._move_to(State.OPEN)

    def _move_to(self, new: State) -> None:
        old, self._state = self._state, new
        self._on_change(self.name, old, new)
