"""STIX 2.1 bundles: the ``indicator`` objects whose pattern this pipeline can match against an event.

A pattern is matched when it is one observation, or several joined by ``OR``, of comparisons joined by ``OR``,
each ``=`` (or, for an address, ``ISSUBSET`` a CIDR) on one of ``SUPPORTED_PATHS``, without qualifiers. Each
comparison is then one indicator: any of them seen in an event is a hit, which is what ``OR`` means. Anything
else (``AND``, ``FOLLOWEDBY``, ``WITHIN``, ``LIKE``, another object type or property) needs the matching of
several observations together, which a per-event lookup cannot do, so the whole indicator is counted as
unsupported rather than matched on a part of its meaning. Patterns are parsed by ``stix2patterns``.

An indicator is matched only inside its validity window as of the load: one whose ``valid_until`` is at or before
the load's time, or whose ``valid_from`` is after it, is counted as ``outside_validity`` and not matched (a feed
keeps expired indicators for history, and publishes some before they take effect). The window is judged when the
bundle is loaded, so an indicator that expires later matches until the next load.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

from stix2patterns.exceptions import ParseException
from stix2patterns.v21.inspector import InspectionListener
from stix2patterns.v21.pattern import Pattern

from etl.lookups.feeds.report import FeedReport
from etl.lookups.feeds.values import DEFAULT_SEVERITY, BadValue, Indicator, IndicatorType, indicator

# (object type, property path) -> the indicator types its values may be.
SUPPORTED_PATHS: dict[tuple[str, tuple[str, ...]], frozenset[IndicatorType]] = {
    ("ipv4-addr", ("value",)): frozenset({IndicatorType.IP, IndicatorType.CIDR}),
    ("ipv6-addr", ("value",)): frozenset({IndicatorType.IP, IndicatorType.CIDR}),
    ("domain-name", ("value",)): frozenset({IndicatorType.DOMAIN}),
    ("file", ("hashes", "SHA-256")): frozenset({IndicatorType.SHA256}),
}


class Unsupported(Exception):
    """A valid pattern this pipeline does not match on."""


class OutsideValidity(Exception):
    """An indicator that, at the load's time, has expired or is not yet valid."""


class _Listener(InspectionListener):
    """The library's inspector, which does not record an ``AND`` between comparisons, and this one that does."""

    def __init__(self) -> None:
        super().__init__()
        self.comparison_and = False

    def exitComparisonExpressionAnd(self, ctx: Any) -> None:  # the name the library calls
        self.comparison_and = self.comparison_and or bool(ctx.AND())


def _literal(text: str) -> str:
    """A STIX string literal's content; ``Unsupported`` for another literal (a number, a set, binary)."""
    if len(text) < 2 or text[0] != "'" or text[-1] != "'":
        raise Unsupported(f"not a string literal: {text[:64]}")
    return text[1:-1].replace("\\'", "'").replace("\\\\", "\\")


def _comparison(obj_type: str, path: list[object], op: str, literal: str, source: str) -> Indicator:
    kinds = SUPPORTED_PATHS.get((obj_type, tuple(str(step) for step in path)))
    if kinds is None or op not in ("=", "ISSUBSET"):
        raise Unsupported(f"{obj_type}:{path} {op}")
    value = _literal(literal)
    found = indicator(value, source, DEFAULT_SEVERITY)
    # Canonical IPv6 text always has a colon, IPv4 never.
    wrong_family = obj_type.endswith("-addr") and (":" in found.value) != (obj_type == "ipv6-addr")
    if found.type not in kinds or wrong_family or (op == "ISSUBSET" and found.type is not IndicatorType.CIDR):
        raise BadValue(f"{value[:64]!r} is not a value of {obj_type}")
    return found


def pattern_indicators(pattern: str, source: str) -> list[Indicator]:
    """The indicators a STIX 2.1 pattern names. Raises ``Unsupported`` for a valid pattern outside what this module
    matches, ``BadValue`` for one that does not parse or names a bad value."""
    try:
        parsed = Pattern(pattern)
    except ParseException as e:
        raise BadValue(f"pattern does not parse: {e}") from None
    listener = _Listener()
    parsed.walk(listener)
    data = listener.pattern_data()
    if listener.comparison_and or data.qualifiers or data.observation_ops - {"OR"}:
        raise Unsupported("AND, FOLLOWEDBY or a qualifier")
    return [_comparison(obj_type, path, op, literal, source)
            for obj_type, comparisons in data.comparisons.items() for path, op, literal in comparisons]


def _timestamp(obj: dict[str, Any], key: str) -> datetime | None:
    """The STIX timestamp ``obj[key]`` (UTC, as STIX writes them; one without a zone is read as UTC), or ``None``
    when absent. Raises ``BadValue`` for one that is not a timestamp."""
    text = obj.get(key)
    if text is None:
        return None
    try:
        parsed = datetime.fromisoformat(text) if isinstance(text, str) else None
    except ValueError:
        parsed = None
    if parsed is None:
        raise BadValue(f"{key} is not a timestamp")
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)


def object_indicators(obj: dict[str, Any], source: str, now: datetime) -> list[Indicator]:
    """The indicators of one STIX ``indicator`` object as of ``now`` (aware). Raises ``OutsideValidity`` when
    ``now`` is outside its ``valid_from``/``valid_until`` window, ``Unsupported`` and ``BadValue`` as
    ``pattern_indicators`` does, and ``BadValue`` for a missing pattern or a window that is not timestamps."""
    valid_from, valid_until = _timestamp(obj, "valid_from"), _timestamp(obj, "valid_until")
    if (valid_until is not None and valid_until <= now) or (valid_from is not None and valid_from > now):
        raise OutsideValidity(f"valid from {valid_from} until {valid_until}")
    if obj.get("pattern_type", "stix") != "stix":
        raise Unsupported(f"pattern_type {obj.get('pattern_type')!r}")
    pattern = obj.get("pattern")
    if not isinstance(pattern, str):
        raise BadValue("an indicator without a pattern")
    return pattern_indicators(pattern, source)


def read_bundle(report: FeedReport, bundle: object, source: str, now: datetime) -> Iterator[Indicator]:
    """A bundle's indicators valid at ``now`` (the load's time, aware), one object's at a time, numbering its
    objects from 1 for ``report``'s counts. Raises ``ValueError`` (when iterated) if ``bundle`` is not a STIX
    bundle at all."""
    if not isinstance(bundle, dict) or bundle.get("type") != "bundle" or not isinstance(bundle.get("objects"), list):
        raise ValueError("not a STIX bundle (an object of type 'bundle' with a list of 'objects')")
    for number, obj in enumerate(bundle["objects"], start=1):
        if not isinstance(obj, dict) or obj.get("type") != "indicator" or obj.get("revoked") is True:
            continue  # other objects (relationships, identities...) and revoked indicators are not indicators
        try:
            found = object_indicators(obj, source, now)
        except OutsideValidity:
            report.outside_validity += 1
            continue
        except Unsupported:
            report.unsupported += 1
            continue
        except BadValue:
            report.skip(number)
            continue
        yield from found
