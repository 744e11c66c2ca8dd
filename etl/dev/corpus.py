"""The sample events of the local default (``etl dev``) and of the benchmarks: a shape, a few malformed events and
a few duplicates, deterministic for a seed.

Two shapes: ``producers`` (the default; ``etl.dev.producers``: the gRPC sender's and the agents' HTTP path's
events) and ``simple`` (``etl.dev.generator``: one flat shape, the corpus the benchmarks used before). A duplicate
is the exact bytes of one of the last ``DUPLICATE_WINDOW`` distinct events published again, as a producer's retry
does, so it lands in the same batch as its first or in a later one. Which positions hold a malformed event or a
duplicate depends on the position alone, so a publisher can tell how many it sent of each without reading them.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator

import orjson

from etl.dev.generator import make_hosts, malformed_event, sample_event
from etl.dev.producers import Payloads, make_agents, producer_event

PRODUCERS, SIMPLE = "producers", "simple"
SHAPES = (PRODUCERS, SIMPLE)  # the first is the default
DUPLICATE_EVERY = 100  # in the producers shape, one event in this many is a duplicate
DUPLICATE_WINDOW = 2000
DEFAULT_BASE_MS = 1_704_110_400_000

Make = Callable[[int], dict[str, object]]


def default_duplicate_every(shape: str) -> int:
    """Producers retry, so their shape has duplicates; the simple shape stays the corpus it always was."""
    return DUPLICATE_EVERY if shape == PRODUCERS else 0


def is_malformed(seq: int, malformed_every: int) -> bool:
    return malformed_every > 0 and seq % malformed_every == malformed_every - 1


def is_duplicate(seq: int, duplicate_every: int, malformed_every: int) -> bool:
    """A duplicate sits half-way through each ``duplicate_every`` positions, unless a malformed event is there."""
    return (duplicate_every > 0 and seq % duplicate_every == duplicate_every // 2
            and not is_malformed(seq, malformed_every))


def duplicates_in(count: int, duplicate_every: int, malformed_every: int = 0) -> int:
    """How many of the first ``count`` events are duplicates."""
    if duplicate_every <= 0:
        return 0
    return sum(not is_malformed(k, malformed_every) for k in range(duplicate_every // 2, count, duplicate_every))


def _maker(shape: str, hosts: int, rng: random.Random, base_ms: int) -> Make:
    host_list = make_hosts(hosts, rng)
    if shape == SIMPLE:
        return lambda seq: sample_event(seq, rng.choice(host_list), rng, base_ms)
    if shape != PRODUCERS:
        raise ValueError(f"unknown shape {shape!r}: one of {', '.join(SHAPES)}")
    agents = make_agents(host_list, rng)
    payloads = Payloads(rng)
    return lambda seq: producer_event(seq, rng.choice(agents), payloads, rng, base_ms)


def events(count: int, *, shape: str = PRODUCERS, hosts: int = 10, seed: int = 1) -> Iterator[dict[str, object]]:
    """``count`` distinct valid events of ``shape``, as dicts (for a caller that sets ids or timestamps itself)."""
    rng = random.Random(seed)
    make = _maker(shape, hosts, rng, DEFAULT_BASE_MS)
    return (make(seq) for seq in range(count))


def generate(count: int, *, shape: str = PRODUCERS, hosts: int = 10, seed: int = 1, base_ms: int = DEFAULT_BASE_MS,
             malformed_every: int = 0, duplicate_every: int | None = None) -> Iterator[bytes]:
    """``count`` raw events of ``shape``: every ``malformed_every``-th malformed (0: none), and duplicates at
    ``is_duplicate`` positions (``None``: the shape's own rate, ``default_duplicate_every``). The simple shape
    without duplicates is ``etl.dev.generator.generate``'s corpus exactly. Raises ``ValueError`` for an unknown
    shape, or for duplicates when every event is malformed (there would be nothing to repeat)."""
    duplicate_every = default_duplicate_every(shape) if duplicate_every is None else duplicate_every
    if duplicate_every == 1 or (duplicate_every and malformed_every == 1):
        raise ValueError("duplicates need a valid event before them: duplicate_every and malformed_every >= 2")
    rng = random.Random(seed)
    make = _maker(shape, hosts, rng, base_ms)
    recent: list[bytes] = []
    for seq in range(count):
        if is_malformed(seq, malformed_every):
            yield malformed_event(seq, malformed_every, base_ms)
        elif is_duplicate(seq, duplicate_every, malformed_every):
            yield rng.choice(recent)
        else:
            raw = orjson.dumps(make(seq))
            if len(recent) < DUPLICATE_WINDOW:
                recent.append(raw)
            else:
                recent[seq % DUPLICATE_WINDOW] = raw
            yield raw
