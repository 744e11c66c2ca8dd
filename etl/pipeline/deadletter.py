"""One dead letter, and how it is encoded in a Redis value. Pure: no I/O.

An entry keeps its event as bytes: raw input as it came in (enrich), an enriched event as its JSON (a sink stage).
An event larger than the store's per-entry limit keeps only its first ``TRUNCATED_HEAD_BYTES`` (or fewer, the
limit, when it is smaller), with its full length and SHA-256: enough to recognise it, not to replay it
(``raw_bytes`` refuses).

A value is ``\\x00``, the JSON header (every field but the event), a newline, then the event's bytes, so binary
input costs its own size and no escaping. Values written before this format are one JSON object (``{...}``, the
event as text, base64 or JSON inside it) and still read.
"""

from __future__ import annotations

import base64
import hashlib
import time
from dataclasses import dataclass, field, replace
from typing import Any

import orjson

from etl.errors import PermanentError

# What a truncated entry keeps of its event: enough to see what it was.
TRUNCATED_HEAD_BYTES = 1024
# Sink exception messages can quote data: the stored reason is cut here.
MAX_REASON_CHARS = 1024
FORMAT_MARK = b"\x00"
RAW = "raw"
JSON = "json"
LEGACY_ENCODINGS = ("text", "base64")


class DeadLetterTruncated(PermanentError):
    """The entry kept only the head of its event, which therefore cannot be replayed."""


@dataclass
class DeadLetter:
    """One dead-lettered event (or, when it could not be split, a whole batch).

    ``event`` is the decoded JSON for ``event_encoding="json"`` and the raw bytes for ``"raw"``; when
    ``truncated``, it is the first ``TRUNCATED_HEAD_BYTES`` of the event's bytes either way. ``size`` is the
    event's full length in bytes and ``sha256`` the hex digest of those bytes. ``"text"`` and ``"base64"`` (the
    encodings of older entries) are accepted and turned into ``"raw"``.
    """

    stage: str
    reason: str
    event: Any
    attempts: int = 1
    first_failure: float = field(default_factory=time.time)
    last_failure: float = 0.0
    event_encoding: str = JSON
    occurrences: int = 1
    id: str = ""
    size: int = -1
    sha256: str = ""
    truncated: bool = False

    def __post_init__(self) -> None:
        if self.event_encoding in LEGACY_ENCODINGS:
            text = str(self.event)
            self.event = base64.b64decode(text) if self.event_encoding == "base64" else text.encode(
                "utf-8", "surrogatepass")
            self.event_encoding = RAW
        self.reason = self.reason[:MAX_REASON_CHARS]
        if not self.last_failure:
            self.last_failure = self.first_failure
        if self.size < 0 or not self.sha256:
            body = self.body()
            self.size, self.sha256 = len(body), hashlib.sha256(body).hexdigest()
        if not self.id:
            self.id = entry_id(self.stage, self.sha256)

    @classmethod
    def for_raw(cls, stage: str, reason: str, raw: bytes, **kw: Any) -> DeadLetter:
        """An entry for raw input bytes, kept as they are."""
        return cls(stage, reason, bytes(raw), event_encoding=RAW, **kw)

    def body(self) -> bytes:
        """The event's bytes as stored: raw input as is, a JSON event as JSON (or their head when truncated)."""
        if self.truncated or self.event_encoding == RAW:
            return bytes(self.event)
        return orjson.dumps(self.event, option=orjson.OPT_SORT_KEYS)

    def check_replayable(self) -> None:
        """Raises ``DeadLetterTruncated`` when the entry kept only the head of its event."""
        if self.truncated:
            raise DeadLetterTruncated(
                f"dead letter {self.id} kept only the first {len(self.event)} of its {self.size} bytes "
                f"(sha256 {self.sha256}): it cannot be replayed")

    def raw_bytes(self) -> bytes:
        """The event as bytes, as it would be published to ``events.raw`` again. Raises ``DeadLetterTruncated``
        when the entry kept only the event's head."""
        self.check_replayable()
        return self.body()

    def replay_payload(self) -> Any:
        """What goes back to the stage: raw bytes for a raw entry, the event for a JSON one. Raises
        ``DeadLetterTruncated`` for a truncated entry."""
        data = self.raw_bytes()
        return data if self.event_encoding == RAW else self.event

    def bounded(self, max_bytes: int) -> DeadLetter:
        """This entry, or, when its event is over ``max_bytes``, a copy keeping only its head: its first
        ``TRUNCATED_HEAD_BYTES``, or ``max_bytes`` when that is smaller, so no entry keeps more than the limit."""
        if self.truncated or self.size <= max_bytes:
            return self
        return replace(self, event=self.body()[:min(TRUNCATED_HEAD_BYTES, max_bytes)], truncated=True)

    def header(self) -> dict[str, Any]:
        """Every field but the event."""
        return {"stage": self.stage, "reason": self.reason, "attempts": self.attempts,
                "first_failure": self.first_failure, "last_failure": self.last_failure,
                "event_encoding": self.event_encoding, "occurrences": self.occurrences, "id": self.id,
                "size": self.size, "sha256": self.sha256, "truncated": self.truncated}

    def encode(self) -> bytes:
        """The Redis value: ``FORMAT_MARK``, the header's JSON, a newline, the event's bytes."""
        return FORMAT_MARK + orjson.dumps(self.header()) + b"\n" + self.body()

    def describe(self) -> dict[str, Any]:
        """The entry for people (``etl dlq show``): the event as JSON, as text when it is UTF-8, else base64."""
        out: dict[str, Any] = self.header()
        if self.event_encoding == JSON and not self.truncated:
            out["event"] = self.event
            return out
        data = self.body()
        try:
            out["event"], out["shown_as"] = data.decode("utf-8"), "text"
        except UnicodeDecodeError:
            out["event"], out["shown_as"] = base64.b64encode(data).decode("ascii"), "base64"
        return out


def decode(value: bytes) -> DeadLetter:
    """A Redis value back into its entry, in the current format or the older JSON one."""
    if not value.startswith(FORMAT_MARK):
        return DeadLetter(**orjson.loads(value))
    newline = value.index(b"\n")
    header = orjson.loads(value[1:newline])
    body = value[newline + 1:]
    raw = header["truncated"] or header["event_encoding"] == RAW
    return DeadLetter(event=body if raw else orjson.loads(body), **header)


def entry_id(stage: str, sha256_hex: str) -> str:
    """The same event failing at the same stage twice (at-least-once) is one entry."""
    return hashlib.sha256(f"{stage}\0{sha256_hex}".encode()).hexdigest()[:24]


def reason_type(reason: str) -> str:
    """The bounded part of a reason, for counters, samples and labels: the text before the colon, an exception's
    type name, or ``BadEvent/<violation>`` for the event contract's (``etl.errors.Violation``)."""
    return reason.split(":", 1)[0][:64]
