"""The dead-letter queue: one place, in Redis, for every event the pipeline could not deliver, bounded.

Entries come from enrichment (events that break the contract) and from any pool whose batch failed
permanently or ran out of retries. Each entry records the stage, the reason (exception type and message),
the event's bytes (or their head, see ``etl.pipeline.deadletter``), the number of attempts and the first and last
failure times.

The queue is bounded in bytes and in entries. When full, a dead letter is still counted, by stage and reason type,
in Redis and in ``etl_dead_letters_dropped_total``, but its entry is not kept, unless its (stage, reason type) has
no sample left in the queue. Bounds are checked and the byte total kept in Lua scripts, so every writer (any
process, any thread) sees one consistent total.

Layout in Redis (it survives restarts when Redis persists, see the README):
- ``{prefix}:entries``: hash, entry id -> encoded entry;
- ``{prefix}:by_time``: sorted set, entry id scored by last failure time (Unix seconds), for listing and expiry;
- ``{prefix}:stage:{stage}``: the same, for one stage; the set ``{prefix}:stages`` names the stages that have one;
- ``{prefix}:bytes``: the bytes the entries take (their values plus ``ENTRY_OVERHEAD_BYTES`` each), summed again
  from the entries by every purge;
- ``{prefix}:counted`` and ``{prefix}:dropped``: hashes ``stage|reason type`` -> every dead letter, and those not
  kept; ``{prefix}:samples``: ``stage|reason type`` -> the id of an entry kept as its sample.

Entry ids are derived from the stage and the event, so the same failure delivered twice (at-least-once) is one
entry whose ``occurrences`` grows, never two, and it is counted once: with what the sinks hold, the counters
account for every event received. (One not kept cannot be recognised, so it is counted again if it comes back.)
"""

from __future__ import annotations

import builtins
import logging
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import cast

import redis

from etl.config import Settings
from etl.defaults import DEFAULT_DLQ_ENTRY_MAX_BYTES, DEFAULT_DLQ_MAX_BYTES, DEFAULT_DLQ_MAX_ENTRIES
from etl.pipeline import dlqscripts
from etl.pipeline.deadletter import DeadLetter, decode, reason_type
from etl.pipeline.dlqlog import DeadLetterLog

__all__ = ["DeadLetter", "DeadLetterStore", "Limits", "ReasonCount", "by_stage"]

log = logging.getLogger(__name__)

DEFAULT_PREFIX = "etl:dlq"
PURGE_INTERVAL_S = 3600.0
SECONDS_PER_DAY = 86_400
REMOVE_CHUNK = 500
COUNTER_SEPARATOR = "|"


@dataclass(frozen=True)
class Limits:
    """The queue's bounds: its bytes and entries in all, and the largest event an entry keeps whole."""

    max_bytes: int = DEFAULT_DLQ_MAX_BYTES
    max_entries: int = DEFAULT_DLQ_MAX_ENTRIES
    entry_max_bytes: int = DEFAULT_DLQ_ENTRY_MAX_BYTES

    @classmethod
    def from_settings(cls, settings: Settings) -> Limits:
        return cls(settings.dlq_max_bytes, settings.dlq_max_entries, settings.dlq_entry_max_bytes)


@dataclass(frozen=True)
class ReasonCount:
    """Dead letters of one stage and reason type: all counted, and those not kept because the queue was full."""

    stage: str
    reason: str
    counted: int
    dropped: int


class DeadLetterStore:
    """Reads and writes dead letters. Thread-safe (it only uses a redis client)."""

    def __init__(self, client: redis.Redis, *, retention_s: float, limits: Limits | None = None,
                 prefix: str = DEFAULT_PREFIX) -> None:
        self.client = client
        self.retention_s = retention_s
        self.limits = limits or Limits()
        self.entries_key = f"{prefix}:entries"
        self.index_key = f"{prefix}:by_time"
        self.stages_key = f"{prefix}:stages"
        self.bytes_key = f"{prefix}:bytes"
        self.counted_key = f"{prefix}:counted"
        self.dropped_key = f"{prefix}:dropped"
        self.samples_key = f"{prefix}:samples"
        self._prefix = prefix
        self._last_purge = float("-inf")
        self._scripts = dlqscripts.Scripts(client)
        self._log = DeadLetterLog(max_bytes=self.limits.max_bytes, max_entries=self.limits.max_entries)

    @classmethod
    def from_settings(cls, client: redis.Redis, settings: Settings) -> DeadLetterStore:
        """The store on ``client``, keeping entries ``DLQ_RETENTION_DAYS`` within the ``DLQ_*`` bounds."""
        return cls(client, retention_s=settings.dlq_retention_days * SECONDS_PER_DAY,
                   limits=Limits.from_settings(settings))

    def add(self, letters: Sequence[DeadLetter]) -> None:
        """Store ``letters`` within the bounds; an entry that exists already gets its count, attempts and last
        failure updated. Every dead letter is counted, kept or not (``etl_dead_letters_total`` every time, the
        Redis counters once per entry, see ``summary``) and logged: a summary line per stage and reason type per
        window of ``dlqlog.SUMMARY_INTERVAL_S``, and a line at most once a minute while the queue is full.
        Raises ``redis.RedisError`` when the letters could not be stored (nothing is counted then)."""
        if not letters:
            return
        bounded = [letter.bounded(self.limits.entry_max_bytes) for letter in letters]
        outcomes = self._store(bounded)
        self._log.record(bounded, outcomes)
        self._purge_now_and_then()

    def flush_log(self) -> None:
        """Log the dead letters counted and not yet in a line: call it when the process shuts down."""
        self._log.flush()

    def _purge_now_and_then(self) -> None:
        # Retention is enforced by whoever writes dead letters, at most once per PURGE_INTERVAL_S per process. It
        # is housekeeping: the letters are stored and counted already, so a failure here must not fail the caller
        # (its batch would be retried and its letters counted again); the next interval tries again.
        now = time.monotonic()
        if now - self._last_purge < PURGE_INTERVAL_S:
            return
        self._last_purge = now
        try:
            self.purge()
        except redis.RedisError as e:
            log.warning("the periodic purge of the DLQ failed, retried in %.0f s: %s", PURGE_INTERVAL_S, e,
                        extra={"error": f"{type(e).__name__}: {e}"})

    def stage_key(self, stage: str) -> str:
        return f"{self._prefix}:stage:{stage}"

    def _store(self, letters: Sequence[DeadLetter]) -> list[int]:
        # One script call per entry, all in one round trip: each checks the bounds and writes the entry, its
        # indexes, its counters and the byte total at once.
        pipe = self.client.pipeline(transaction=False)
        for letter in letters:
            keys = [self.entries_key, self.index_key, self.stage_key(letter.stage), self.stages_key,
                    self.bytes_key, self.counted_key, self.dropped_key, self.samples_key]
            args: list[str | bytes | float | int] = [
                letter.id, letter.encode(), letter.last_failure, letter.stage, counter_field(letter),
                self.limits.max_bytes, self.limits.max_entries, dlqscripts.ENTRY_OVERHEAD_BYTES]
            self._scripts.add(keys=keys, args=args, client=pipe)
        outcomes = [int(o) for o in pipe.execute()]
        for letter, outcome in zip(letters, outcomes, strict=True):
            if outcome == dlqscripts.EXISTED:
                self._merge(letter)
        return outcomes

    def _merge(self, letter: DeadLetter) -> None:
        old = self.get(letter.id)
        if old is None:
            return
        old.occurrences += 1
        old.attempts = max(old.attempts, letter.attempts)
        old.last_failure = max(old.last_failure, letter.last_failure)
        old.reason = letter.reason
        self._scripts.replace(keys=[self.entries_key, self.bytes_key],
                              args=[old.id, old.encode(), dlqscripts.ENTRY_OVERHEAD_BYTES])

    def get(self, entry_id: str) -> DeadLetter | None:
        raw = cast("bytes | None", self.client.hget(self.entries_key, entry_id))
        return None if raw is None else decode(raw)

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
            for raw in cast("list[bytes | None]", self.client.hmget(self.entries_key, ids)):
                if raw is not None:
                    yield decode(raw)
            start += batch

    def count(self) -> int:
        return int(self.client.hlen(self.entries_key))

    def used_bytes(self) -> int:
        """The bytes the entries take, as counted against ``DLQ_MAX_BYTES``."""
        return int(self._scripts.used(keys=[self.entries_key, self.bytes_key],
                                      args=[dlqscripts.ENTRY_OVERHEAD_BYTES]))

    def summary(self) -> builtins.list[ReasonCount]:
        """Every dead letter counted since the counters began (or were reset), kept or not, by stage and reason
        type. The same event again at the same stage while its entry is kept is not counted again."""
        pipe = self.client.pipeline(transaction=True)
        pipe.hgetall(self.counted_key)
        pipe.hgetall(self.dropped_key)
        counted, dropped = cast("tuple[dict[bytes, bytes], dict[bytes, bytes]]", tuple(pipe.execute()))
        out = []
        for key in sorted(counted):
            stage, _, reason = key.decode().partition(COUNTER_SEPARATOR)
            out.append(ReasonCount(stage, reason, int(counted[key]), int(dropped.get(key, 0))))
        return out

    def reset_counters(self) -> None:
        """Forget the counts of ``summary`` (the entries stay)."""
        self.client.delete(self.counted_key, self.dropped_key)

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
        """Delete the entries ``ids`` (those that exist), and their bytes from the total. Returns how many."""
        keys = [self.entries_key, self.index_key, self.bytes_key, *map(self.stage_key, self.stages())]
        removed = 0
        for start in range(0, len(ids), REMOVE_CHUNK):
            chunk = ids[start:start + REMOVE_CHUNK]
            removed += int(self._scripts.remove(keys=keys, args=[dlqscripts.ENTRY_OVERHEAD_BYTES, *chunk]))
        return removed

    def purge(self, *, older_than_s: float | None = None) -> int:
        """Delete entries whose last failure is older than ``older_than_s`` (default: the retention), then sum
        the byte total again from the entries left (``recount``). Returns how many were deleted."""
        age = self.retention_s if older_than_s is None else older_than_s
        cutoff = time.time() - age
        ids = [i.decode() for i in _members(self.client.zrangebyscore(self.index_key, "-inf", cutoff))]
        removed = self.remove(ids)
        self.recount()
        return removed

    def recount(self) -> int:
        """Set the byte total to what the entries take, summed in one script (one command per entry, so its cost
        is bounded by ``DLQ_MAX_ENTRIES``), and return it. This heals a total that writers bypassing it left
        wrong (an older version's, a manual ``DEL``): too high, it would keep the queue "full" for good."""
        return int(self._scripts.recount(keys=[self.entries_key, self.bytes_key],
                                         args=[dlqscripts.ENTRY_OVERHEAD_BYTES]))


def by_stage(counts: Iterable[ReasonCount]) -> tuple[dict[str, int], dict[str, int]]:
    """The counts of ``summary`` summed over reasons: dead letters counted by stage, and of those, how many were
    not kept (each stage counted is a key of both)."""
    counted: dict[str, int] = {}
    dropped: dict[str, int] = {}
    for c in counts:
        counted[c.stage] = counted.get(c.stage, 0) + c.counted
        dropped[c.stage] = dropped.get(c.stage, 0) + c.dropped
    return counted, dropped


def counter_field(letter: DeadLetter) -> str:
    """The key of a letter's counters: its stage and reason type, both from bounded sets."""
    return f"{letter.stage}{COUNTER_SEPARATOR}{reason_type(letter.reason)}"


def _members(reply: object) -> list[bytes]:
    # redis-py types a sorted-set range for every form (with scores or not, decoded or not). Ours ask without
    # scores on clients without decode_responses, so the reply is a list of bytes members.
    return cast("list[bytes]", reply)

