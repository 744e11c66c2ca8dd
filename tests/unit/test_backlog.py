"""Backpressure: the hysteresis between high and low water, and the gate the bridge waits on."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest
from prometheus_client import REGISTRY

from etl.config import Settings
from etl.pipeline.backlog import BacklogGate, Backpressure, deepest

STOP_BOUND_S = 1.0
POLL_S = 0.01


def paused_gauge() -> float | None:
    return REGISTRY.get_sample_value("etl_bridge_paused")


def test_pauses_at_high_water_and_resumes_only_at_low_water() -> None:
    pressure = Backpressure(high_water=20, low_water=10)
    depths = [0, 5, 19, 20, 25, 19, 11, 10, 11, 19, 20, 9, 0]
    expected = [False, False, False, True, True, True, True, False, False, False, True, False, False]
    assert [pressure.update(d) for d in depths] == expected
    assert pressure.paused is False


def test_an_unknown_depth_pauses_until_the_backlog_is_down_to_low_water() -> None:
    pressure = Backpressure(high_water=20, low_water=10)
    assert pressure.unknown() is True
    assert pressure.update(15) is True  # between the marks: a paused bridge stays paused
    assert pressure.update(10) is False


@pytest.mark.parametrize(("env", "marks"), [
    ({}, (40, 20)),
    ({"MAX_QUEUE_DEPTH": "20", "QUEUE_LOW_WATER_PERCENT": "50"}, (20, 10)),
    ({"MAX_QUEUE_DEPTH": "7", "QUEUE_LOW_WATER_PERCENT": "50"}, (7, 3)),
    ({"MAX_QUEUE_DEPTH": "20", "QUEUE_LOW_WATER_PERCENT": "0"}, (20, 0)),  # resume only when empty
    ({"MAX_QUEUE_DEPTH": "20", "QUEUE_LOW_WATER_PERCENT": "100"}, (20, 19)),  # low water stays below high
    ({"MAX_QUEUE_DEPTH": "1", "QUEUE_LOW_WATER_PERCENT": "100"}, (1, 0)),
])
def test_marks_come_from_the_settings(env: dict[str, str], marks: tuple[int, int]) -> None:
    pressure = Backpressure.from_settings(Settings.from_env(env))
    assert (pressure.high_water, pressure.low_water) == marks


@pytest.mark.parametrize(("high", "low"), [(0, 0), (10, 10), (10, 11), (10, -1)])
def test_marks_that_cannot_work_are_refused(high: int, low: int) -> None:
    with pytest.raises(ValueError, match="low_water < high_water"):
        Backpressure(high_water=high, low_water=low)


def test_the_deepest_queue_decides() -> None:
    # A slow sink fills its own queue while enrich stays empty: that queue is the one that matters.
    assert deepest({"enrich": 0, "publish": 3, "timescale": 2, "graph": 250}) == 250
    assert deepest({}) == 0


class Probe:
    """A scripted backlog probe: returns the next depth, or raises when the next item is an exception."""

    def __init__(self, *script: int | Exception) -> None:
        self.script = list(script)
        self.calls = 0

    def __call__(self) -> int:
        self.calls += 1
        item = self.script.pop(0) if len(self.script) > 1 else self.script[0]
        if isinstance(item, Exception):
            raise item
        return item


def test_gate_holds_while_paused_polls_and_releases_at_low_water() -> None:
    probe = Probe(20, 15, 11, 10)
    gate = BacklogGate(probe, Backpressure(high_water=20, low_water=10), poll_s=POLL_S)

    async def main() -> None:
        await gate.wait_for_room(asyncio.Event())

    asyncio.run(main())
    assert probe.calls == 4 and not gate.paused
    assert paused_gauge() == 0


def test_gate_reads_the_backlog_and_what_is_on_its_way_under_the_producers_lock() -> None:
    lock = threading.Lock()
    reads: list[tuple[str, bool]] = []

    def probe() -> int:
        reads.append(("probe", lock.locked()))
        return 19

    def in_flight() -> int:
        reads.append(("in flight", lock.locked()))
        return 1

    gate = BacklogGate(probe, Backpressure(high_water=20, low_water=10), poll_s=POLL_S, lock=lock)
    stopping = asyncio.Event()

    async def main() -> None:
        waiter = asyncio.create_task(gate.wait_for_room(stopping, in_flight=in_flight))
        while not reads:
            await asyncio.sleep(POLL_S)
        stopping.set()
        await waiter

    asyncio.run(main())
    assert reads[:2] == [("probe", True), ("in flight", True)]
    assert gate.paused  # 19 queued and 1 on its way is high water


def test_gate_treats_a_failing_probe_as_paused_and_retries() -> None:
    script = Probe(ConnectionError("redis down"), ConnectionError("redis down"), 3)
    seen: list[tuple[bool, float | None]] = []

    def probe() -> int:  # records the state each read starts from
        seen.append((gate.paused, paused_gauge()))
        return script()

    gate = BacklogGate(probe, Backpressure(high_water=20, low_water=10), poll_s=POLL_S)

    async def main() -> None:
        await gate.wait_for_room(asyncio.Event())

    asyncio.run(main())
    assert seen == [(False, 0), (True, 1), (True, 1)]
    assert not gate.paused and paused_gauge() == 0


def test_gate_returns_promptly_on_stop_while_paused() -> None:
    gate = BacklogGate(Probe(100), Backpressure(high_water=20, low_water=10), poll_s=60.0)

    async def main() -> float:
        stopping = asyncio.Event()
        waiter = asyncio.create_task(gate.wait_for_room(stopping))
        deadline = time.monotonic() + STOP_BOUND_S
        while not gate.paused:
            assert time.monotonic() < deadline, "the gate never read the probe"
            await asyncio.sleep(POLL_S)
        started = time.monotonic()
        stopping.set()
        await asyncio.wait_for(waiter, STOP_BOUND_S)
        return time.monotonic() - started

    assert asyncio.run(main()) < STOP_BOUND_S
    assert gate.paused and paused_gauge() == 1
