"""The garbage collector's thresholds for the pipeline's long-running processes.

Each batch decodes into thousands of small dicts and lists. Under CPython's default threshold (a young-generation
collection every 700 net allocations), decoding one 500-event batch ran many collections, each also walking
whatever was alive, such as the batches prefetched meanwhile, which made ``orjson.loads`` of a batch much slower
(figures: docs/performance.md). The objects are acyclic and freed by reference counting, so collecting far less often
costs little memory; cycles are still found, a little later.
"""

from __future__ import annotations

import gc

# Net allocations between two young-generation collections (CPython's default is 700).
YOUNG_THRESHOLD = 50_000


def tune() -> None:
    """Freeze what start-up made (modules, settings: never garbage, never to be walked again) and raise the
    young-generation threshold; the older generations keep their defaults. Call once, after start-up."""
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(YOUNG_THRESHOLD, middle, old)
