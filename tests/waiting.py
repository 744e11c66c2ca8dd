"""Waiting on a condition with a deadline, instead of sleeping."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def wait_for(probe: Callable[[], T], *, timeout_s: float, interval_s: float = 0.2,
             describe: Callable[[], str] = lambda: "") -> T:
    """Call ``probe`` until it returns something truthy; fail with ``describe()`` after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout_s}s. {describe()}")
        time.sleep(interval_s)
