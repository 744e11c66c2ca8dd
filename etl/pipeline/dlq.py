"""The dead-letter queue: one place, in Redis, for every event the pipeline could not deliver.

Entries come from enrichment (events that break the contract) and from any pool whose batch failed
permanently or ran out of retries. Each entry records the stage, the reason (exception type and message),
the original event, the number of attempts and the first and last failure times.

Layout in Redis (it survives restarts when Redis persists, see the README):
- ``{prefix}:entries``: hash, entry id -> entry JSON;
- ``{prefix}:by_time``: sorted set, entry id scored by last failure time (Unix seconds), for listing and expiry;
- ``{prefix}:stage:{stage}``: the same, for one stage, so counting and listing a stage reads no entry; the set
  ``{prefix}:stages`` names the stages that have one.

Entry ids are derived from the stage and the event, so the same failure delivered twice (at-least-once) is one
entry whose ``occurrences`` grows, never two.
"""

from __future__ import annotations

import base64
import builtins
import hashlib
import logging
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, cast

import orjson
import redis

from etl.config import Settings
from etl.runtime.metrics import DEAD_LETTERS

log = logging.getLogger(__name__)

DEFAULT_PREFIX = "etl:dlq"
PURGE_INTERVAL_S = 3600.0


@dataclass
class DeadLetter:
    """One dead-lettered event (or, when it could not be split, a whole batch)."""

    stage: str
    reason: str
    event: Any
    attempts: int = 1
    first_failure: float = field(default_factory=time.time)
    last_failure: float = 0.0
    event_encoding: str = "json"
    occurrences: int = 1
    id: str = ""

    def __post_init__(self) -> None:
        if not self.last_failure:
            self.last_failure = self.first_failure
        if not self.id:
            self.id = entry_id(self.stage, self.event)

    @classmethod
    def for_raw(cls, stage: str, reason: str, raw: bytes, **kw: Any) -> DeadLetter:
        """An entry for raw input bytes: kept as text when UTF-8, as base64 otherwise."""
        try:
            return cls(stage, reason, raw.decode("utf-8"), event_encoding="text", **kw)
        except UnicodeDecodeError:
            return cls(stage, reason, base64.b64encode(raw).decode(), event_encoding="base64", **kw)

    def raw_bytes(self) -> bytes:
        """The event as bytes, as it would be published to ``events.raw`` again."""
        if self.event_encoding == "base64":
            return base64.b64decode(self.event)
        if self.event_encoding == "text":
            return str(self.event).encode("utf-8")
        return orjson.dumps(self.event)


def entry_id(stage: str, event: Any) -> str:
    body = event.encode("utf-8", "surrogatepass") if isinstance(event, str) else orjson.dumps(
        event, option=orjson.OPT_SORT_KEYS
    )
    return hashlib.sha256(stage.encode() + b"\0" + body).hexdigest()[:24]


SECONDS_PER_DAY = 86_400


class DeadLetterStore:
    """Reads and writes dead letters. Thread-safe (it only uses a redis client)."""

    def __init__(self, client: redis.Redis, *, retention_s: float, prefix: str = DEFAULT_PREFIX) -> None:
        self.client = client
        self.retention_s = retention_s
        self.entries_key = f"{prefix}:entries"
        self.index_key = f"{prefix}:by_time"
        self.stages_key = f"{prefix}:stages"
        self._prefix = prefix
        self._last_purge = float("-inf")

    @classmethod
    def from_settings(cls, client: redis.Redis, settings: Settings) -> DeadLetterStore:
        """The store on ``client``, keeping entries ``DLQ_RETENTION_DAYS``."""
        return cls(client, retention_s=settings.dlq_retention_days * SECONDS_PER_DAY)

    def add(self, letters: Sequence[DeadLetter]) -> None:
        """Store ``letters``; an entry that exists already gets its count, attempts and last failure updated.

        Every dead letter is also logged and counted (``etl_dead_letters_total``): none is silent.
        """
        if not letters:
            return
        self._store(letters)
        self._purge_now_and_then()
        for letter in letters:
            reason_type = letter.reason.split(":", 1)[0]
            DEAD_LETTERS.labels(stage=letter.stage, reason=reason_type).inc()
            log.warning("dead-lettered %s at %s after %d attempt(s): %s", letter.id, letter.stage, letter.attempts,
                        letter.reason, extra={"stage": letter.stage, "dead_letter_id": letter.id,
                                              "error": letter.reason, "attempts": letter.attempts})

    def _purge_now_and_then(self) -> None:
        # Retention is enforced by whoever writes dead letters, at most once per PURGE_INTERVAL_S per process.
        now = time.monotonic()
        if now - self._last_purge >= PURGE_INTERVAL_S:
            self._last_purge = now
            self.purge()

    def stage_key(self, stage: str) -> str:
        return f"{self._prefix}:stage:{stage}"

    def _store(self, letters: Sequence[DeadLetter]) -> None:
        # An entry and its index entries are written in one transaction, so the counts never disagree.
        pipe = self.client.pipeline(transaction=True)
        for letter in letters:
            pipe.hsetnx(self.entries_key, letter.id, orjson.dumps(asdict(letter)))
            # gt: an entry's score only moves forward, also when failures are reported out of order.
            pipe.zadd(self.index_key, {letter.id: letter.last_failure}, gt=True)
            pipe.zadd(self.stage_key(letter.stage), {letter.id: letter.last_failure}, gt=True)
            pipe.sadd(self.stages_key, letter.stage)
        created = pipe.execute()[::4]
        merged = [self._merged(letter) for letter, new in zip(letters, created, strict=True) if not new]
        if not merged:
            return
        pipe = self.client.pipeline(transaction=True)
        for letter in merged:
            pipe.hset(self.entries_key, letter.id, orjson.dumps(asdict(letter)))
        pipe.execute()

    def _merged(self, letter: DeadLetter) -> DeadLetter:
        old = self.get(letter.id)
        if old is None:
            return letter
        old.occurrences += 1
        old.attempts = max(old.attempts, letter.attempts)
        old.last_failure = max(old.last_failure, letter.last_failure)
        old.reason = letter.reason
        return old

    def get(self, entry_id: str) -> DeadLetter | None:
        raw = self.client.hget(self.entries_key, entry_id)
        return None if raw is None else DeadLetter(**orjson.loads(raw))

    def list(self, *, stage: str | None = None, limit: int = 100) -> list[DeadLetter]:
        """The newest entries first, at most ``limit``, optionally of one stage."""
        out: list[DeadLetter] = []
        for letter in self.iter_all(index_key=self.index_key if stage is None else self.stage_key(stage)):
            out.append(letter)
            if len(out) >= limit:
                break
        return out

    def iter_all(self, batch: int = 500, *, index_key: str | None = None) -> Iterable[DeadLetter]:
        """Every entry (of the index ``index_key``, by default all), newest first."""
        start = 0
        while True:
            ids = _members(self.client.zrevrange(index_key or self.index_key, start, start + batch - 1))
            if not ids:
                return
            for raw in self.client.hmget(self.entries_key, ids):
                if raw is not None:
                    yield DeadLetter(**orjson.loads(raw))
            start += batch

    def count(self) -> int:
        return int(self.client.hlen(self.entries_key))

    # builtins.list: in the class body, after ``def list``, a bare ``list`` names that method for mypy.
    def stages(self) -> builtins.list[str]:
        members = cast("set[bytes]", self.client.smembers(self.stages_key))  # bytes: see _members
        return sorted(s.decode() for s in members)

    def counts_by_stage(self) -> dict[str, int]:
        """Entries per stage, from the stage indexes: a few commands, whatever the number of entries."""
        counts, total = self._stage_counts()
        if sum(counts.values()) != total:  # entries written before the stage indexes existed: index them once
            self._index_stages()
            counts, _ = self._stage_counts()
        return {stage: n for stage, n in counts.items() if n}

    def _stage_counts(self) -> tuple[dict[str, int], int]:
        stages = self.stages()
        pipe = self.client.pipeline(transaction=True)
        for stage in stages:
            pipe.zcard(self.stage_key(stage))
        pipe.hlen(self.entries_key)
        *counts, total = pipe.execute()
        return dict(zip(stages, counts, strict=True)), int(total)

    def _index_stages(self) -> None:
        pipe = self.client.pipeline(transaction=False)
        for letter in self.iter_all():
            pipe.zadd(self.stage_key(letter.stage), {letter.id: letter.last_failure})
            pipe.sadd(self.stages_key, letter.stage)
        pipe.execute()

    def remove(self, ids: Sequence[str]) -> int:
        if not ids:
            return 0
        stages = self.stages()
        pipe = self.client.pipeline(transaction=True)
        pipe.hdel(self.entries_key, *ids)
        pipe.zrem(self.index_key, *ids)
        for stage in stages:
            pipe.zrem(self.stage_key(stage), *ids)
        return int(pipe.execute()[0])

    def purge(self, *, older_than_s: float | None = None) -> int:
        """Delete entries whose last failure is older than ``older_than_s`` (default: the retention)."""
        age = self.retention_s if older_than_s is None else older_than_s
        cutoff = time.time() - age
        ids = [i.decode() for i in _members(self.client.zrangebyscore(self.index_key, "-inf", cutoff))]
        return self.remove(ids)


def _members(reply: object) -> list[bytes]:
    # redis-py types a sorted-set range for every form (with scores or not, decoded or not). Ours ask without
    # scores on clients without decode_responses, so the reply is a list of bytes members.
    return cast("list[bytes]", reply)
