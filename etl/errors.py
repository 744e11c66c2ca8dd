"""One error hierarchy for the pipeline.

Every failure that crosses a module boundary is one of these. Drivers' exceptions are translated where they
enter our code, so the rest of the pipeline decides on the *kind* of failure, never on a driver's class:

- ``TransientError``: worth retrying with backoff (a dropped connection, a server down, a timeout, a deadlock).
- ``PermanentError``: retrying cannot help; the event or batch goes to the dead-letter queue with a reason.
"""

from __future__ import annotations

from enum import StrEnum

# How a process or an ``etl`` command ends; ``etl --help`` lists them.
EXIT_OK = 0
EXIT_FAILURE = 1  # it could not do its work: a server unreachable, a password refused, a table missing...
EXIT_CONFIG = 2  # a bad setting or command line, or a tool missing: nothing was started


class EtlError(Exception):
    """Base of every error the pipeline raises on purpose."""


class ConfigError(EtlError):
    """A setting is missing or malformed. The message is one line meant for the operator."""


class TransientError(EtlError):
    """A failure that may succeed on retry."""


class PermanentError(EtlError):
    """A failure that will not succeed on retry."""


class RedisFull(TransientError):
    """Redis refuses writes: its memory is at ``maxmemory``, and ``noeviction`` keeps it from making room. A write
    succeeds again once memory is freed (dead letters purged, ``maxmemory`` raised); the bridge waits for that."""


class SinkUnavailable(TransientError):
    """A sink's server cannot be reached or timed out."""


class SinkDataError(PermanentError):
    """A sink rejected the data itself (a constraint, a type, a value out of range)."""


class SinkMisconfigured(PermanentError):
    """A sink's server refuses what the sink needs of it, whatever the data: a privilege, a writable database, a
    table of the sink's shape. Retrying cannot help until an operator fixes the server or the settings, so the
    batch is dead-lettered at once, with the server's reason, to be replayed after the fix."""


class PeerDataError(SinkDataError):
    """The graph cannot key the peer an event's decoded payload (``args``) names: a port that is not one, a
    protocol that is not text, an address or protocol too long for a graph key or property. The event contract
    does not read ``args``, the agent's own payload: only the graph does (``etl.sinks.graph.endpoints``), so only
    the graph refuses such an event, and the other sinks store it."""


class Violation(StrEnum):
    """Which rule of the event contract (``etl.pipeline.events``) an event breaks: a small fixed set, so that dead
    letters are counted and sampled by it with a bounded number of labels."""

    SIZE = "size"  # the raw event is over MAX_EVENT_BYTES
    JSON = "json"  # not JSON, or not a JSON object
    DEPTH = "depth"  # nested deeper than MAX_NESTING_DEPTH
    VALUES = "values"  # more values or strings than MAX_JSON_VALUES allows
    NUL = "nul"  # a NUL character in a string or key
    ID = "id"  # no id, or not a non-empty printable string within its length, without spaces at its ends
    TIMESTAMP = "timestamp"  # none, or not Unix ms or ISO-8601 with a zone within the years sinks store
    FIELD = "field"  # a field or a metadata value of the wrong type, or a payload that is not base64
    LENGTH = "length"  # type, source, or a metadata key or value, longer than its bound in characters
    INTEGER = "integer"  # a metadata integer outside 64 bits
    KEY = "key"  # an identifier, or the graph key they make, over its bound in bytes
    MAX_PAYLOAD = "max_payload"  # enriched, over the NATS server's max_payload


class BadEvent(PermanentError):
    """An incoming event breaks the event contract. ``reason`` says precisely how, ``violation`` which rule."""

    def __init__(self, violation: Violation, reason: str) -> None:
        super().__init__(reason)
        self.violation = violation
        self.reason = reason

    @property
    def reason_type(self) -> str:
        """``BadEvent/<violation>``: what dead letters are counted and sampled by (``deadletter.reason_type``)."""
        return f"{type(self).__name__}/{self.violation.value}"


class LookupReadError(TransientError):
    """A lookup table in use failed while enriching a batch: a GeoIP database's data read as corrupt. That is what a
    database rewritten in place under its reader looks like (it maps the file), so the batch is retried: the
    reload thread (``etl.lookups.live``) sees the changed file and loads it, and a retry takes the new table. A
    database that stays corrupt fails every retry, and the batch is dead-lettered after the last with this error's
    name, to be replayed once the file is fixed."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason


class LookupFileError(EtlError):
    """A lookup file (an indicator feed, an asset inventory, a GeoIP database) cannot be read or parsed at all.
    A malformed line inside a readable file is skipped and counted instead; this error is for the whole file, so
    that whoever loads it keeps the table it already has."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason
