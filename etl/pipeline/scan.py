"""Limits of a JSON document checked on its raw bytes, before parsing, with C-speed primitives only. Pure.

Parsing builds one Python object per value, and walking them to measure depth is a Python loop: a 1 MiB
document of empty objects would cost both at full size. Here every step is a ``bytes`` method (``count``,
``replace``, ``split``, ``translate``), each a pass in C over at most the document; no Python code runs per byte
or per value of the document.

The counts are exact for valid JSON. For bytes that are not valid JSON they may be wrong, and a refusal then
only means "not a JSON document within the limits". For an event that is the same outcome as the parser's (it is
refused either way, only the reason may differ); a payload's bytes need not be JSON at all, and ones refused
here are kept as opaque bytes (``etl.pipeline.events``).
"""

from __future__ import annotations

from etl.errors import BadEvent, Violation
from etl.pipeline.limits import MAX_JSON_VALUES

# Every byte but those that open a container, separate values or start an escape, for bytes.translate to
# delete: one pass that tells whether an event could break a limit at all.
_NOT_SIGNIFICANT = bytes(b for b in range(256) if b not in b"{[,\\")
_NOT_VALUES = bytes(b for b in range(256) if b not in b"{[,")
# Every byte but brackets, for bytes.translate to delete; the brackets become one kind, "(" and ")".
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"{}[]")
_ONE_KIND = bytes.maketrans(b"{}[]", b"()()")
_NUL_ESCAPE = b"\\u0000"


def check_document(raw: bytes, *, max_depth: int, max_values: int = MAX_JSON_VALUES) -> None:
    """Raise ``BadEvent`` when the JSON in ``raw`` nests deeper than ``max_depth``, has more than ``max_values``
    values in its objects and arrays, or holds a NUL character (``\\u0000``) in any string or key."""
    significant = raw.translate(None, _NOT_SIGNIFICANT)
    if b"\\" in significant and _NUL_ESCAPE in raw and _NUL_ESCAPE in raw.replace(b"\\\\", b""):
        raise BadEvent(Violation.NUL, "a string holds a NUL character (\\u0000), which PostgreSQL cannot store")
    if len(significant) <= max_depth:
        return  # the usual event: too few brackets and commas to break a limit, even counting those in strings
    escapes = significant.count(b"\\")
    if len(significant) - escapes <= max_values and significant.count(b"{") + significant.count(b"[") <= max_depth:
        return  # counting those in strings too, still within both limits
    outside = _outside_strings(raw, max_values, escapes=escapes > 0)
    values = len(outside.translate(None, _NOT_VALUES))
    if values > max_values:
        raise BadEvent(Violation.VALUES, f"event has {values} values in its objects and arrays, over the limit of "
                                         f"{max_values}")
    containers = outside.count(b"{") + outside.count(b"[")
    if containers > max_depth and _deeper_than(outside, max_depth):
        raise BadEvent(Violation.DEPTH, f"event is nested deeper than {max_depth} levels")


def _outside_strings(raw: bytes, max_values: int, *, escapes: bool) -> bytes:
    """``raw`` without its strings. Raises ``BadEvent`` when it has more strings than ``max_values`` allows
    (a key and a value per member), before splitting it into that many pieces. ``escapes``: whether ``raw``
    holds a backslash at all."""
    # A backslash in valid JSON starts an escape of the next byte: drop escaped backslashes first, left to
    # right, and then every quote left after a backslash is escaped too.
    plain = raw.replace(b"\\\\", b"").replace(b'\\"', b"") if escapes else raw
    quotes = plain.count(b'"')
    if quotes > 4 * max_values:
        raise BadEvent(Violation.VALUES, f"event has {quotes // 2} strings, over the limit of {2 * max_values}")
    return b"".join(plain.split(b'"')[::2])


def _deeper_than(outside: bytes, limit: int) -> bool:
    """Whether the brackets of ``outside`` (a document without strings) nest deeper than ``limit``. Each round
    removes every innermost pair, exactly one level, so the brackets are gone after ``limit`` rounds unless they
    nest deeper."""
    brackets = outside.translate(_ONE_KIND, _NOT_BRACKETS)
    for _ in range(limit):
        if not brackets:
            return False
        brackets = brackets.replace(b"()", b"")
    return bool(brackets)
