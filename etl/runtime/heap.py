"""Handing memory the process freed back to the operating system, where the C library allows it.

Building a large table (a million indicators, ``etl.lookups.live``) allocates and frees much of the C heap as its
dicts grow: each resize frees the old table. glibc keeps such freed memory in its heap for reuse rather than
unmapping it, so the process's resident size stays above what it holds until something else reuses it.
``malloc_trim`` returns the free pages to the system. Other C libraries (musl) have no such call and do not need
one in the same way: there this does nothing.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable

# ``malloc_trim(pad)``: the bytes to leave free at the heap's top; 0 hands back all it can.
_TRIM_PAD_BYTES = 0


def _find_trim() -> Callable[[int], int] | None:
    """glibc's ``malloc_trim``, or ``None`` where the C library has none."""
    try:
        # The symbols the interpreter is linked with, its C library's among them: no search for a file by name.
        trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    found: Callable[[int], int] = trim
    return found


_TRIM = _find_trim()


def release_free_memory() -> bool:
    """Hand the C heap's free pages back to the system; whether the C library could (glibc's ``malloc_trim``
    says 1 when it released any). Cheap next to the load it follows; call it after freeing much, not per batch."""
    return _TRIM is not None and _TRIM(_TRIM_PAD_BYTES) == 1
