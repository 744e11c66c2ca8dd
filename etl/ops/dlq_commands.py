"""``etl dlq``: list, show, replay and purge the dead-letter queue (``etl.pipeline.dlq``). Part of ``etl``
(``etl.cli``), whose command group turns an unreachable Redis into one line."""

from __future__ import annotations

import json
import os
from typing import TYPE_CHECKING

import click

from etl import stages
from etl.config import load_settings

if TYPE_CHECKING:  # for annotations only: like the other commands, dlq loads its modules (and redis) when run
    from etl.pipeline.dlq import DeadLetterStore


@click.group()
def dlq() -> None:
    """Inspect the dead-letter queue."""


def _store() -> DeadLetterStore:
    from etl.broker import redis_client
    from etl.pipeline.dlq import DeadLetterStore

    settings = load_settings(os.environ)
    return DeadLetterStore.from_settings(redis_client(settings), settings)


@dlq.command(name="list")
@click.option("--stage", type=click.Choice(stages.NAMES), help="Only this stage.")
@click.option("--limit", type=click.IntRange(min=1), default=50, show_default=True)
def dlq_list(stage: str | None, limit: int) -> None:
    """A summary (every dead letter counted, by stage and reason, kept or not), then the newest entries first:
    id, stage, attempts, reason."""
    store = _store()
    for line in _summary_lines(store):
        click.echo(line)
    for letter in store.list(stage=stage, limit=limit):
        cut = f"  truncated ({letter.size} bytes)" if letter.truncated else ""
        click.echo(f"{letter.id}  {letter.stage:<9}  attempts={letter.attempts}  {letter.reason}{cut}")


def _summary_lines(store: DeadLetterStore) -> list[str]:
    counts = store.summary()
    limits = store.limits
    lines = [f"entries kept: {store.count()} of DLQ_MAX_ENTRIES={limits.max_entries}, {store.used_bytes()} bytes "
             f"of DLQ_MAX_BYTES={limits.max_bytes}"]
    if counts:
        lines.append("dead letters counted, by stage and reason (not kept: the DLQ was full):")
        lines += [f"  {c.stage:<9}  {c.reason:<24}  counted={c.counted}  not kept={c.dropped}" for c in counts]
        lines.append(f"  {'all':<9}  {'':<24}  counted={sum(c.counted for c in counts)}  "
                     f"not kept={sum(c.dropped for c in counts)}")
    lines.append("")
    return lines


@dlq.command(name="show")
@click.argument("entry_id")
def dlq_show(entry_id: str) -> None:
    """One dead letter in full, as JSON (the event as JSON, as text when it is UTF-8, else as base64)."""
    letter = _store().get(entry_id)
    if letter is None:
        raise click.ClickException(f"no dead letter {entry_id}")
    click.echo(json.dumps(letter.describe(), indent=2, default=str))


@dlq.command(name="replay")
@click.option("--stage", type=click.Choice(stages.NAMES),
              help="Replay every entry of this stage.")
@click.option("--all", "replay_all", is_flag=True, help="Replay every entry.")
@click.argument("entry_ids", nargs=-1)
def dlq_replay(stage: str | None, replay_all: bool, entry_ids: tuple[str, ...]) -> None:
    """Re-enqueue dead letters (by ID, by --stage, or --all) to the stage they failed in. Truncated entries
    (events over DLQ_ENTRY_MAX_BYTES) cannot be replayed: named by ID, nothing is replayed; with --stage or
    --all, they stay in the queue."""
    from etl.ops.replay import replay, replayable

    if not (stage or replay_all or entry_ids):
        raise click.UsageError("name entries by ID, or use --stage S or --all")
    store = _store()
    letters = [e for e in (store.get(i) for i in entry_ids) if e is not None] if entry_ids else list(store.iter_all())
    if entry_ids and len(letters) != len(entry_ids):
        raise click.ClickException("some IDs are not in the dead-letter queue; nothing replayed")
    letters, truncated = replayable(e for e in letters if stage is None or e.stage == stage)
    if entry_ids and truncated:
        raise click.ClickException(f"{truncated[0].id} kept only the head of its event ({truncated[0].size} bytes, "
                                   "over DLQ_ENTRY_MAX_BYTES) and cannot be replayed; nothing replayed")
    from etl.broker import build_broker
    from etl.pipeline.handoff import Handoff

    settings = load_settings(os.environ)
    broker = build_broker(settings)
    try:
        count = replay(store, letters, settings.max_batch_size, Handoff.from_settings(broker, settings).to_stage)
    finally:
        broker.close()
    left = f"; {len(truncated)} truncated entries cannot be replayed and were left" if truncated else ""
    click.echo(f"replayed {count} dead letter(s){left}")


@dlq.command(name="purge")
@click.option("--older-than", "older_than", metavar="AGE",
              help="Only entries whose last failure is older than AGE (e.g. 30m, 12h, 7d). Default: the retention.")
@click.option("--counters", is_flag=True, help="Also reset the counts of `etl dlq list`'s summary.")
def dlq_purge(older_than: str | None, counters: bool) -> None:
    """Delete dead letters older than AGE (default DLQ_RETENTION_DAYS)."""
    age_s = None if older_than is None else _parse_age(older_than)
    store = _store()
    click.echo(f"purged {store.purge(older_than_s=age_s)} dead letter(s)")
    if counters:
        store.reset_counters()
        click.echo("counters reset")


_AGE_UNITS_S = {"s": 1, "m": 60, "h": 3600, "d": 86_400}


def _parse_age(text: str) -> float:
    unit = _AGE_UNITS_S.get(text[-1:].lower())
    if unit is None or not text[:-1].isdigit():
        raise click.BadParameter(f"AGE must be a number with s, m, h or d, got {text!r}", param_hint="--older-than")
    return int(text[:-1]) * unit
