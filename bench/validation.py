"""Validation cost by shape: milliseconds to accept or reject a 1 MiB event, against a normal event's microseconds.

    .venv/bin/python -m bench.validation          # a few seconds

Each shape is one event of about 1 MiB built to be expensive to parse or to walk: many small containers, many
keys, deep nesting, long strings full of brackets, commas, quotes or escapes, and a payload (base64 of JSON)
with the same. ``parse_event`` runs on it as the enrich stage does (``MAX_EVENT_BYTES`` of 1 MiB); the best of
several runs counts, and a normal generated event is measured in the same run as the baseline.
"""

from __future__ import annotations

import base64
import time
from collections.abc import Callable

import orjson

from etl.dev.generator import generate
from etl.errors import BadEvent
from etl.pipeline.events import parse_event

MIB = 1024 * 1024
HEAD = b'{"id":"bench-1","type":"t","source":"s","timestamp":1704110400000,'
ROUNDS = 7


def _fill(prefix: bytes, unit: bytes, suffix: bytes, size: int = MIB - 64) -> bytes:
    count = (size - len(HEAD) - len(prefix) - len(suffix)) // len(unit)
    return HEAD + prefix + (unit * count).rstrip(b",") + suffix


def _payload(document: bytes) -> bytes:
    encoded = base64.b64encode(document)
    return HEAD + b'"payload":"' + encoded + b'"}'


def shapes() -> dict[str, bytes]:
    """Name -> a raw event of at most 1 MiB."""
    nested = _fill(b'"x":', b"[", b"", 300_000)
    return {
        "empty objects {},{},...": _fill(b'"x":[', b"{},", b"]}"),
        "empty arrays [],[],...": _fill(b'"x":[', b"[],", b"]}"),
        "small integers": _fill(b'"x":[', b"0,", b"]}"),
        "short strings": _fill(b'"x":[', b'"a",', b"]}"),
        "many keys": _fill(b'"x":{', b'"k":1,', b"}}"),
        "deep, then many arrays": nested + b"]" * (len(nested) - len(HEAD) - 4) + b"}",
        "127 levels then wide": _fill(b'"x":' + b"[" * 126, b"0,", b"]" * 126 + b"}"),
        "string of brackets": _fill(b'"x":"', b"[{", b'"}'),
        "string of commas": _fill(b'"x":"', b",a", b'"}'),
        "a \\u0000 at the end": _fill(b'"x":"', b"[,", b'\\u0000"}'),
        "string of escaped quotes": _fill(b'"x":"', b'\\"', b'"}'),
        "string of escapes \\\\": _fill(b'"x":"', b"\\\\", b'"}'),
        "string of \\u0000 as text": _fill(b'"x":"', b"\\\\u0000", b'"}'),
        "payload of {},{},...": _payload(b'{"x":[' + b"{}," * 260_000 + b"{}]}"),
        "payload of brackets in a string": _payload(b'{"x":"' + b"[{" * 380_000 + b'"}'),
    }


def best_s(run: Callable[[], object], rounds: int = ROUNDS) -> float:
    best = float("inf")
    for _ in range(rounds):
        started = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - started)
    return best


def outcome(raw: bytes) -> str:
    try:
        parse_event(raw, max_bytes=MIB)
    except BadEvent as e:
        return f"rejected: {e.reason[:60]}"
    return "accepted"


def main() -> None:
    normal = next(iter(generate(1, hosts=5, seed=1)))
    normal_s = best_s(lambda: [parse_event(normal, max_bytes=MIB) for _ in range(1000)]) / 1000
    print(f"normal event ({len(normal)} bytes): {normal_s * 1e6:.1f} us")
    print(f"{'shape':34} {'bytes':>9} {'ms':>7} {'x normal':>9}  outcome")
    for name, raw in shapes().items():
        took = best_s(lambda raw=raw: outcome(raw))  # type: ignore[misc]
        print(f"{name:34} {len(raw):9d} {took * 1e3:7.2f} {took / normal_s:9.0f}  {outcome(raw)}")
    print(f"orjson.loads of a normal event, for scale: "
          f"{best_s(lambda: [orjson.loads(normal) for _ in range(1000)]) * 1e3:.1f} us")


if __name__ == "__main__":
    main()
