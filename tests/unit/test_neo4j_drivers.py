"""ThreadDrivers: one driver per thread, all closed together (pure logic, with stand-in drivers)."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any, cast

import pytest

from etl.errors import SinkUnavailable
from etl.sinks.graph.neo4j_drivers import ThreadDrivers


class StandIn:
    def __init__(self) -> None:
        self.closed = 0

    def close(self) -> None:
        self.closed += 1


def drivers_of(made: list[StandIn], make_hook: Any = None) -> ThreadDrivers:
    def make() -> Any:
        if make_hook:
            make_hook()
        made.append(StandIn())
        return made[-1]
    return ThreadDrivers(cast(Any, make))


def test_each_thread_gets_its_own_driver_and_keeps_it() -> None:
    made: list[StandIn] = []
    drivers = drivers_of(made)
    barrier = threading.Barrier(4)

    def twice(_: int) -> tuple[int, int]:
        barrier.wait()  # all four threads alive at once: none can reuse another's thread-local
        return id(drivers.current()), id(drivers.current())

    with ThreadPoolExecutor(4) as pool:
        pairs = list(pool.map(twice, range(4)))

    assert all(first == second for first, second in pairs)
    assert len({first for first, _ in pairs}) == 4 == len(made)


def test_close_closes_every_driver_once_and_refuses_after() -> None:
    made: list[StandIn] = []
    drivers = drivers_of(made)
    drivers.current()
    with ThreadPoolExecutor(1) as pool:
        pool.submit(drivers.current).result()

    drivers.close()
    drivers.close()

    assert [d.closed for d in made] == [1, 1]
    with pytest.raises(SinkUnavailable, match="closed"):
        drivers.current()


def test_a_driver_made_while_closing_is_closed_too() -> None:
    made: list[StandIn] = []
    holder: list[ThreadDrivers] = []
    drivers = drivers_of(made, make_hook=lambda: holder[0].close())
    holder.append(drivers)

    with pytest.raises(SinkUnavailable):
        drivers.current()
    assert [d.closed for d in made] == [1]
