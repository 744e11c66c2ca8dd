"""Handing freed C-heap memory back to the system: the resident size falls once ``release_free_memory`` runs."""

from __future__ import annotations

import psutil
import pytest

from etl.runtime import heap

MIB = 1024 * 1024


def rss() -> int:
    return int(psutil.Process().memory_info().rss)


def test_freed_heap_memory_leaves_the_process_once_released() -> None:
    # Objects over pymalloc's 512 bytes come from the C heap; the last one, kept, pins the heap's top, so that
    # glibc cannot give the freed pages back by itself as free() does at the top.
    chunks = [bytes(4096) for _ in range(20_000)]  # about 80 MiB
    pin = bytes(4096)
    del chunks
    freed = rss()
    assert heap.release_free_memory()
    assert freed - rss() > 40 * MIB, "most of what was freed left the process"
    assert pin


def test_without_malloc_trim_it_does_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(heap, "_TRIM", None)
    assert not heap.release_free_memory()
