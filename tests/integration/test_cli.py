"""The ``etl`` command against real servers, and its one-line configuration errors."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable

from click.testing import CliRunner

from etl.broker import redis_client
from etl.cli import main
from etl.config import Settings
from etl.pipeline.dlq import DeadLetter, DeadLetterStore


def test_bad_setting_exits_2_with_one_line() -> None:
    done = subprocess.run([sys.executable, "-m", "etl.cli", "config"], capture_output=True, text=True,
                          env={"MAX_BATCH_SIZE": "abc", "PATH": "/usr/bin"})
    assert done.returncode == 2
    assert done.stderr == "configuration error: MAX_BATCH_SIZE must be a positive integer, got 'abc'\n"


def test_config_redacts_secrets() -> None:
    result = CliRunner().invoke(main, ["config"], env={"PG_PASSWORD": "hunter2"})
    assert result.exit_code == 0
    assert json.loads(result.output)["PG_PASSWORD"] == "***" and "hunter2" not in result.output


def test_migrate_then_report(make_settings: Callable[..., Settings]) -> None:
    env = make_settings().to_env()
    runner = CliRunner()
    assert runner.invoke(main, ["migrate"], env=env).exit_code == 0
    assert runner.invoke(main, ["migrate"], env=env).exit_code == 0, "migrate is idempotent"
    result = runner.invoke(main, ["report"], env=env)
    assert result.exit_code == 0, result.output
    counts = json.loads(result.output)
    assert (counts["stored"], counts["merged"]) == (0, 0)


def test_report_counts_every_dead_letter_kept_or_not(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings(DLQ_MAX_ENTRIES=3)
    store = DeadLetterStore.from_settings(redis_client(settings), settings)
    store.add([DeadLetter.for_raw("enrich", f"BadEvent: {i}", b"%d" % i) for i in range(10)])
    result = CliRunner().invoke(main, ["report"], env=settings.to_env())
    assert result.exit_code == 0, result.output
    counts = json.loads(result.output)
    assert (counts["dead_lettered"], counts["dead_letters_not_kept"]) == ({"enrich": 10}, {"enrich": 7})


def test_dlq_list_and_show(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings()
    letter = DeadLetter.for_raw("enrich", "BadEvent: not valid JSON", b"oops")
    store = DeadLetterStore(redis_client(settings), retention_s=60)
    store.add([letter])
    runner = CliRunner()
    listed = runner.invoke(main, ["dlq", "list"], env=settings.to_env())
    assert listed.exit_code == 0 and letter.id in listed.output and "not valid JSON" in listed.output
    shown = runner.invoke(main, ["dlq", "show", letter.id], env=settings.to_env())
    assert json.loads(shown.output)["event"] == "oops"
    assert runner.invoke(main, ["dlq", "show", "nope"], env=settings.to_env()).exit_code == 1


def test_dlq_list_sums_up_what_was_counted_and_what_was_not_kept(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings(DLQ_MAX_ENTRIES=3)
    store = DeadLetterStore.from_settings(redis_client(settings), settings)
    store.add([DeadLetter.for_raw("enrich", f"BadEvent: {i}", b"%d" % i) for i in range(10)])
    store.add([DeadLetter("graph", "SinkDataError: x", {"id": "g"})])
    listed = CliRunner().invoke(main, ["dlq", "list"], env=settings.to_env())
    assert listed.exit_code == 0, listed.output
    assert "entries kept: 4 of DLQ_MAX_ENTRIES=3" in listed.output
    lines = [" ".join(line.split()) for line in listed.output.splitlines()]
    assert "enrich BadEvent counted=10 not kept=7" in lines
    assert "graph SinkDataError counted=1 not kept=0" in lines
    assert "all counted=11 not kept=7" in lines
    purged = CliRunner().invoke(main, ["dlq", "purge", "--older-than", "0s", "--counters"], env=settings.to_env())
    assert purged.exit_code == 0 and "purged 4" in purged.output and store.summary() == []


def test_dlq_purge_leaves_the_byte_total_exact(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings()
    store = DeadLetterStore.from_settings(redis_client(settings), settings)
    store.add([DeadLetter.for_raw("enrich", "BadEvent: x", b"%d" % i) for i in range(5)])
    exact = store.used_bytes()
    for args in (["dlq", "purge"], ["dlq", "purge", "--older-than", "1d"], ["dlq", "purge", "--counters"]):
        store.client.incrby(store.bytes_key, 12345)  # drift left by a writer that bypassed the total
        purged = CliRunner().invoke(main, args, env=settings.to_env())
        assert purged.exit_code == 0 and "purged 0" in purged.output, purged.output
        assert store.used_bytes() == exact, args


def test_dlq_replay_refuses_a_truncated_entry(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings(DLQ_ENTRY_MAX_BYTES=100)
    store = DeadLetterStore.from_settings(redis_client(settings), settings)
    cut = DeadLetter.for_raw("enrich", "BadEvent: not valid JSON", b"\x01" * 5000)
    store.add([cut])
    runner = CliRunner()
    refused = runner.invoke(main, ["dlq", "replay", cut.id], env=settings.to_env())
    assert refused.exit_code == 1 and "cannot be replayed; nothing replayed" in refused.output
    left = runner.invoke(main, ["dlq", "replay", "--all"], env=settings.to_env())
    assert left.exit_code == 0 and "replayed 0 dead letter(s); 1 truncated entries cannot be replayed" in left.output
    assert store.count() == 1
    shown = json.loads(runner.invoke(main, ["dlq", "show", cut.id], env=settings.to_env()).output)
    assert (shown["truncated"], shown["size"], len(shown["event"])) == (True, 5000, 100), "the head within the limit"
