"""The circuit breaker's state machine, with a fake clock."""

from __future__ import annotations

import threading
from collections.abc import Callable

import pytest

from etl.breaker import DEFAULT_MAX_COOLDOWN_GROWTH, CircuitBreaker, State

FAILURES = 3
COOLDOWN_S = 2.0


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def transitions() -> list[tuple[str, State, State]]:
    return []


@pytest.fixture
def breaker(clock: FakeClock, transitions: list[tuple[str, State, State]]) -> CircuitBreaker:
    return CircuitBreaker("timescale", failures=FAILURES, cooldown_s=COOLDOWN_S, clock=clock,
                          on_change=lambda *change: transitions.append(change))


def trip(breaker: CircuitBreaker) -> None:
    for _ in range(FAILURES):
        assert breaker.allow() is None
        breaker.record_failure()


def probe_fails(breaker: CircuitBreaker, clock: FakeClock) -> None:
    clock.advance(breaker.cooldown_s)
    assert breaker.allow() is None
    breaker.record_failure()


def test_closed_lets_everything_through_and_opens_after_n_consecutive_failures(
        breaker: CircuitBreaker, transitions: list[tuple[str, State, State]]) -> None:
    for _ in range(FAILURES - 1):
        assert breaker.allow() is None
        breaker.record_failure()
    assert breaker.state is State.CLOSED and transitions == []
    breaker.record_failure()
    assert breaker.state is State.OPEN
    assert transitions == [("timescale", State.CLOSED, State.OPEN)]


def test_a_success_resets_the_count_of_consecutive_failures(breaker: CircuitBreaker) -> None:
    for _ in range(5):
        for _ in range(FAILURES - 1):
            breaker.record_failure()
        breaker.record_success()
    assert breaker.state is State.CLOSED


def test_neutral_outcomes_neither_count_nor_reset(breaker: CircuitBreaker) -> None:
    breaker.record_failure()
    breaker.release()
    breaker.record_failure()
    assert breaker.state is State.CLOSED
    breaker.release()
    breaker.record_failure()
    assert breaker.state is State.OPEN


def test_open_fails_fast_with_the_remaining_cooldown(breaker: CircuitBreaker, clock: FakeClock) -> None:
    trip(breaker)
    assert breaker.allow() == pytest.approx(COOLDOWN_S)
    clock.advance(0.5)
    assert breaker.allow() == pytest.approx(COOLDOWN_S - 0.5)
    clock.advance(COOLDOWN_S - 0.5 - 1e-6)
    assert breaker.allow() == pytest.approx(1e-6)
    assert breaker.state is State.OPEN


def test_results_of_calls_started_before_opening_are_ignored(breaker: CircuitBreaker) -> None:
    trip(breaker)
    breaker.record_success()
    breaker.record_failure()
    breaker.release()
    assert breaker.state is State.OPEN and breaker.cooldown_s == COOLDOWN_S


def test_after_the_cooldown_exactly_one_probe_goes_through(
        breaker: CircuitBreaker, clock: FakeClock, transitions: list[tuple[str, State, State]]) -> None:
    trip(breaker)
    clock.advance(COOLDOWN_S)
    assert breaker.allow() is None
    assert breaker.state is State.HALF_OPEN
    for _ in range(10):
        assert breaker.allow() == COOLDOWN_S, "everyone else waits for the probe's verdict"
    assert transitions[-1] == ("timescale", State.OPEN, State.HALF_OPEN)


def test_expire_turns_open_half_open_once_the_cooldown_has_passed_without_taking_the_probe(
        breaker: CircuitBreaker, clock: FakeClock, transitions: list[tuple[str, State, State]]) -> None:
    trip(breaker)
    clock.advance(COOLDOWN_S - 0.5)
    assert breaker.expire() == 0.5, "still open: the cool-down left"
    assert breaker.state is State.OPEN
    clock.advance(0.5)
    assert breaker.expire() is None
    assert breaker.state is State.HALF_OPEN
    assert transitions[-1] == ("timescale", State.OPEN, State.HALF_OPEN)
    assert breaker.expire() is None and len(transitions) == 2, "once"
    assert breaker.allow() is None, "the probe slot is still free: the next caller probes"
    assert breaker.allow() == COOLDOWN_S


def test_expire_leaves_closed_and_half_open_alone(breaker: CircuitBreaker, clock: FakeClock,
                                                  transitions: list[tuple[str, State, State]]) -> None:
    clock.advance(COOLDOWN_S * 10)
    assert breaker.expire() is None and breaker.state is State.CLOSED
    trip(breaker)
    clock.advance(COOLDOWN_S)
    assert breaker.allow() is None, "the probe is out"
    assert breaker.expire() is None
    assert breaker.state is State.HALF_OPEN and breaker.allow() == COOLDOWN_S, "still the one probe"
    assert [new for _, _, new in transitions] == [State.OPEN, State.HALF_OPEN]


def test_expire_waits_for_the_grown_cooldown_after_a_failed_probe(breaker: CircuitBreaker, clock: FakeClock,
                                                                  ) -> None:
    trip(breaker)
    clock.advance(COOLDOWN_S)
    assert breaker.expire() is None
    assert breaker.allow() is None
    breaker.record_failure()
    assert breaker.expire() == 2 * COOLDOWN_S
    clock.advance(2 * COOLDOWN_S)
    assert breaker.expire() is None and breaker.state is State.HALF_OPEN


def test_a_successful_probe_closes_the_breaker(
        breaker: CircuitBreaker, clock: FakeClock, transitions: list[tuple[str, State, State]]) -> None:
    trip(breaker)
    clock.advance(COOLDOWN_S)
    assert breaker.allow() is None
    breaker.record_success()
    assert breaker.state is State.CLOSED
    assert [new for _, _, new in transitions] == [State.OPEN, State.HALF_OPEN, State.CLOSED]
    assert all(breaker.allow() is None for _ in range(10))
    for _ in range(FAILURES - 1):
        breaker.record_failure()
    assert breaker.state is State.CLOSED, "the failure count starts again from zero"


def test_a_failed_probe_reopens_with_a_doubled_cooldown_up_to_a_cap(breaker: CircuitBreaker, clock: FakeClock,
                                                                     ) -> None:
    trip(breaker)
    cooldowns = []
    for _ in range(6):
        probe_fails(breaker, clock)
        assert breaker.state is State.OPEN
        cooldowns.append(breaker.allow())
    cap = COOLDOWN_S * DEFAULT_MAX_COOLDOWN_GROWTH
    assert cooldowns == [4.0, 8.0, cap, cap, cap, cap]


def test_closing_resets_the_cooldown(breaker: CircuitBreaker, clock: FakeClock) -> None:
    trip(breaker)
    probe_fails(breaker, clock)
    probe_fails(breaker, clock)
    clock.advance(breaker.cooldown_s)
    assert breaker.allow() is None
    breaker.record_success()
    trip(breaker)
    assert breaker.allow() == COOLDOWN_S


def test_a_released_probe_lets_the_next_caller_probe(breaker: CircuitBreaker, clock: FakeClock) -> None:
    trip(breaker)
    clock.advance(COOLDOWN_S)
    assert breaker.allow() is None
    breaker.release()
    assert breaker.state is State.HALF_OPEN
    assert breaker.allow() is None, "the next caller is the probe"
    assert breaker.allow() == COOLDOWN_S


def test_a_probe_that_never_reports_frees_its_slot_after_the_probe_timeout(clock: FakeClock) -> None:
    breaker = CircuitBreaker("graph", failures=1, cooldown_s=1.0, probe_timeout_s=30.0, clock=clock)
    breaker.record_failure()
    clock.advance(1.0)
    assert breaker.allow() is None
    clock.advance(29.9)
    assert breaker.allow() == 1.0
    clock.advance(0.1)
    assert breaker.allow() is None


def test_an_explicit_cap_below_the_cooldown_is_raised_to_it(clock: FakeClock) -> None:
    breaker = CircuitBreaker("publish", failures=1, cooldown_s=5.0, max_cooldown_s=1.0, clock=clock)
    breaker.record_failure()
    probe_fails(breaker, clock)
    assert breaker.allow() == 5.0


def test_on_change_may_read_the_breaker(clock: FakeClock) -> None:
    seen: list[tuple[State, float]] = []
    breaker = CircuitBreaker("graph", failures=1, cooldown_s=1.0, clock=clock,
                             on_change=lambda _name, _old, _new: seen.append((breaker.state, breaker.cooldown_s)))
    breaker.record_failure()
    probe_fails(breaker, clock)
    assert seen == [(State.OPEN, 1.0), (State.HALF_OPEN, 1.0), (State.OPEN, 2.0)]


@pytest.mark.parametrize(("failures", "cooldown_s"), [(0, 1.0), (1, 0.0), (1, -1.0)])
def test_bad_arguments_are_refused(failures: int, cooldown_s: float) -> None:
    with pytest.raises(ValueError):
        CircuitBreaker("x", failures=failures, cooldown_s=cooldown_s)


def test_concurrent_callers_get_one_probe_and_one_transition_each(clock: FakeClock) -> None:
    threads_n = 16
    transitions: list[State] = []
    breaker = CircuitBreaker("timescale", failures=threads_n * 10, cooldown_s=COOLDOWN_S, clock=clock,
                             on_change=lambda _name, _old, new: transitions.append(new))
    barrier = threading.Barrier(threads_n)
    granted: list[int] = []

    def fail_many() -> None:
        barrier.wait()
        for _ in range(10):
            breaker.record_failure()

    def ask() -> None:
        barrier.wait()
        for _ in range(100):
            if breaker.allow() is None:
                granted.append(1)

    run_all([fail_many] * threads_n)
    assert breaker.state is State.OPEN and transitions == [State.OPEN], "exactly N failures open it, once"
    clock.advance(COOLDOWN_S)
    run_all([ask] * threads_n)
    assert len(granted) == 1, "one probe among all the threads"
    assert transitions == [State.OPEN, State.HALF_OPEN]


def run_all(targets: list[Callable[[], None]]) -> None:
    threads = [threading.Thread(target=t) for t in targets]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
