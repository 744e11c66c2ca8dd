"""A full Redis, as compose runs it (``maxmemory`` with ``noeviction``): it refuses every write, with
``OOM command not allowed``. The real bridge and pools run against a Redis of their own, which the test fills
past its ``maxmemory`` with a ballast key. The bridge must pause (``etl_bridge_paused`` 1, one log line), stay
up, ack nothing and dead-letter nothing; once the ballast is deleted it must resume by itself, and every event
be stored, merged and published exactly once."""

from __future__ import annotations

import asyncio
import re
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis
from click.testing import CliRunner
from nats.aio.msg import Msg

from etl.broker import build_broker, redis_client
from etl.cli import main
from etl.config import Settings
from etl.dev import servers as devservers
from etl.dev.generator import generate
from etl.dev.supervisor import Pipeline
from etl.errors import RedisFull, TransientError
from etl.natsio.conn import connect
from etl.ops import report
from etl.pipeline import rawstream
from etl.pipeline.ackwindow import AckWindow
from etl.pipeline.backlog import queue_depths
from etl.pipeline.commit import GroupCommit
from etl.pipeline.dlq import SECONDS_PER_DAY, DeadLetter, DeadLetterStore
from etl.pipeline.handoff import Handoff
from etl.stages import ENRICH
from tests.integration.accounting import by_id, check_enriched_stream, check_graph, check_postgres, publish_all
from tests.integration.faults_support import raw_consumer, wait_settled, wait_stored
from tests.waiting import wait_for

WARM_UP = 100
HELD = 1000
BALLAST_BYTES = 16 * 1024 * 1024
# Room left once the ballast is deleted: far more than the held events take in the queues.
ROOM_BYTES = BALLAST_BYTES // 2
# Short, so that the pause outlasts it: the held messages must be kept alive, not redelivered.
ACK_WAIT_S = 1
# The bridge's attempts Redis refused before the pause is judged: with backoffs of 0.1, 0.2, 0.4 s and then
# half ACK_WAIT_S, longer than ACK_WAIT_S.
REFUSALS = 6
PAUSED_LINE = "bridge paused: Redis refuses writes"
RESUMED_LINE = "bridge resumed"
FAILED_LINE = "nak'ed for redelivery"
WAIT_S = 60.0
LETTER_BYTES = 8 * 1024
BATCH = 20
FETCH_TIMEOUT_S = 5.0


@pytest.fixture(scope="module")
def small_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[devservers.Server]:
    server = devservers.redis_server(tmp_path_factory.mktemp("full-redis"),
                                     extra_args=["--maxmemory-policy", "noeviction"]).start()
    yield server
    server.stop()


@pytest.fixture
def settings(make_settings: Callable[..., Settings], small_redis: devservers.Server) -> Settings:
    return make_settings(REDIS_URL=f"redis://127.0.0.1:{small_redis.port}/0", MAX_BATCH_SIZE=50,
                         BATCH_LINGER_MS=20, RETRY_MIN_BACKOFF_MS=100, RETRY_MAX_BACKOFF_MS=2000,
                         NATS_ACK_WAIT=ACK_WAIT_S)


def bridge_metric(pipeline: Pipeline, series: str) -> float:
    """One series as the bridge's ``/metrics`` serves it (0 when absent)."""
    url = f"http://127.0.0.1:{pipeline.ports['bridge-0']}/metrics"
    with urllib.request.urlopen(url, timeout=5) as response:
        text = response.read().decode()
    found = re.search(rf"^{re.escape(series)} (\S+)$", text, flags=re.M)
    return float(found[1]) if found else 0.0


def bridge_paused(pipeline: Pipeline) -> float:
    return bridge_metric(pipeline, "etl_bridge_paused")


def bridge_retries(pipeline: Pipeline) -> float:
    return bridge_metric(pipeline, 'etl_retries_total{stage="bridge"}')


def bridge_log(pipeline: Pipeline) -> str:
    return Path(pipeline.log_dir / "bridge-0.log").read_text(errors="replace")


async def another_replica_fetches(settings: Settings) -> int:
    """What a second bridge replica would be given now: one message, nak'ed at once. Returns its delivery count,
    more than 1 when it is a held message redelivered (JetStream redelivers expired messages first)."""
    nc = await connect(settings, name="test-replica")
    try:
        sub = await nc.jetstream().pull_subscribe_bind(consumer=settings.nats_consumer, stream=settings.nats_stream)
        (msg,) = await sub.fetch(1, timeout=FETCH_TIMEOUT_S)
        await msg.nak()
        return int(msg.metadata.num_delivered)
    finally:
        await nc.close()


def fill(client: redis.Redis) -> None:
    """Add a ballast, then set ``maxmemory`` below what Redis holds, by less than the ballast."""
    # Padded by Redis from a one-byte write: a SET of the whole value would leave a client query buffer of its
    # size, which Redis frees a moment later, counted in used_memory meanwhile.
    client.setrange("ballast", BALLAST_BYTES - 1, b"\0")
    cap_below_use(client, freeable_bytes=BALLAST_BYTES)


def cap_below_use(client: redis.Redis, *, freeable_bytes: int) -> None:
    """Set ``maxmemory`` below what Redis holds, so that freeing ``freeable_bytes`` leaves ``ROOM_BYTES``."""
    used = int(client.info("memory")["used_memory"])
    client.config_set("maxmemory", used - freeable_bytes + ROOM_BYTES)
    with pytest.raises(redis.exceptions.OutOfMemoryError):
        client.set("probe", b"x")


def test_a_full_redis_pauses_the_bridge_until_memory_is_freed(settings: Settings, small_redis: devservers.Server,
                                                              start_pipeline: Callable[..., Pipeline]) -> None:
    client = redis.Redis(port=small_redis.port)
    client.config_set("maxmemory", 0)
    events = list(generate(WARM_UP + HELD, hosts=10, seed=18))
    pipeline = start_pipeline(settings)
    try:
        asyncio.run(publish_all(settings, events[:WARM_UP]))
        wait_stored(settings, pipeline, at_least=WARM_UP)
        wait_settled(settings, pipeline, timeout_s=WAIT_S)

        redelivered = raw_consumer(settings).num_redelivered
        fill(client)
        asyncio.run(publish_all(settings, events[WARM_UP:]))
        wait_for(lambda: bridge_retries(pipeline) >= REFUSALS, timeout_s=WAIT_S,
                 describe=lambda: f"retries={bridge_retries(pipeline)} log={bridge_log(pipeline)[-2000:]}")
        # Paused, once, and nothing given up on: all held events still in JetStream, none acked or dead-lettered.
        assert all(pipeline.alive().values()), {name: pipeline.log_tail(name) for name in pipeline.procs}
        assert bridge_paused(pipeline) == 1
        log = bridge_log(pipeline)
        assert log.count(PAUSED_LINE) == 1 and FAILED_LINE not in log, log[-3000:]
        consumer = raw_consumer(settings)
        assert consumer.ack_floor is not None and consumer.ack_floor.stream_seq == WARM_UP
        assert int(consumer.num_pending or 0) + int(consumer.num_ack_pending or 0) == HELD
        assert consumer.num_redelivered == redelivered, "held events were redelivered: not kept alive"
        assert asyncio.run(another_replica_fetches(settings)) == 1, "a held message expired: not kept alive"
        assert not any(report.dead_letter_counts(settings).values()), report.dead_letter_counts(settings)
        assert report.sink_totals(settings)["stored"] == WARM_UP

        client.delete("ballast")
        counts = wait_settled(settings, pipeline, timeout_s=WAIT_S)
        assert (counts.totals["stored"], counts.totals["merged"], counts.totals["published"]) == (
            WARM_UP + HELD,) * 3, counts
        assert not any(counts.dead_lettered.values()), counts
        expected = by_id(events)
        check_postgres(settings, expected)
        check_graph(settings, expected)
        check_enriched_stream(settings, expected)
        assert bridge_paused(pipeline) == 0
        assert bridge_log(pipeline).count(RESUMED_LINE) == 1
    finally:
        client.config_set("maxmemory", 0)
        client.delete("ballast")
        client.close()


def test_a_full_redis_is_a_typed_transient_error_at_enqueue_and_at_the_durability_check(
        settings: Settings, small_redis: devservers.Server) -> None:
    client = redis.Redis(port=small_redis.port)
    broker = build_broker(settings)
    handoff = Handoff.from_settings(broker, settings)
    try:
        client.flushdb()
        fill(client)
        with pytest.raises(RedisFull, match="maxmemory"):
            handoff.enqueue_raw([b'{"id": "refused"}'])
        with pytest.raises(RedisFull, match="maxmemory"):
            handoff.sync()
        assert issubclass(RedisFull, TransientError)
        client.delete("ballast")
        handoff.raw([b'{"id": "taken"}'])
        assert queue_depths(client)[ENRICH.queue] == 1
    finally:
        client.config_set("maxmemory", 0)
        client.delete("ballast")
        client.close()
        broker.close()


def test_dead_letters_that_filled_redis_can_be_listed_shown_and_purged(settings: Settings,
                                                                     small_redis: devservers.Server) -> None:
    client = redis.Redis(port=small_redis.port)
    store = DeadLetterStore.from_settings(redis_client(settings), settings)
    count = BALLAST_BYTES // LETTER_BYTES
    # A third failed two days ago: purging them alone leaves Redis full.
    old = time.time() - 2 * SECONDS_PER_DAY
    letters = [DeadLetter.for_raw("enrich", "BadEvent: not valid JSON", b"%06d" % i + b"x" * LETTER_BYTES,
                                  **({"first_failure": old, "last_failure": old} if i < count // 3 else {}))
               for i in range(count)]
    runner = CliRunner()
    try:
        client.flushdb()
        for start in range(0, count, 500):
            store.add(letters[start:start + 500])
        cap_below_use(client, freeable_bytes=BALLAST_BYTES)
        # The byte total gone (a manual DEL): listing must sum it again, a write, on the full Redis.
        client.delete(store.bytes_key)
        listed = runner.invoke(main, ["dlq", "list", "--limit", "1"], env=settings.to_env())
        assert listed.exit_code == 0 and f"entries kept: {count} " in listed.output, listed.output
        shown = runner.invoke(main, ["dlq", "show", letters[0].id], env=settings.to_env())
        assert shown.exit_code == 0 and letters[0].id in shown.output, shown.output
        with pytest.raises(redis.exceptions.OutOfMemoryError):  # only what reads or removes may pass
            store.add([DeadLetter.for_raw("enrich", "BadEvent: not valid JSON", b"new")])

        purged = runner.invoke(main, ["dlq", "purge", "--older-than", "1d"], env=settings.to_env())
        assert purged.exit_code == 0 and f"purged {count // 3} " in purged.output, purged.output
        with pytest.raises(redis.exceptions.OutOfMemoryError):
            client.set("probe", b"x")
        purged = runner.invoke(main, ["dlq", "purge", "--older-than", "0s"], env=settings.to_env())
        assert purged.exit_code == 0 and f"purged {count - count // 3} " in purged.output, purged.output
        assert store.count() == 0 and store.used_bytes() == 0
        client.set("probe", b"x")  # memory freed: Redis takes writes again
    finally:
        client.config_set("maxmemory", 0)
        client.flushdb()
        client.close()


async def _poll(probe: Callable[[], bool], *, timeout_s: float, describe: Callable[[], str]) -> None:
    """``wait_for`` without blocking the event loop the code under test runs on."""
    deadline = time.monotonic() + timeout_s
    while not probe():
        assert time.monotonic() < deadline, f"condition not met within {timeout_s}s. {describe()}"
        await asyncio.sleep(0.05)


async def _pause_with_batches_in_the_window(settings: Settings, client: redis.Redis) -> int:
    """Batch 0 enqueued and its durability check started; batches 1 and 2 enqueued meanwhile, waiting in the
    window for the next check; then Redis fills, and the check is refused for longer than ``ACK_WAIT_S``. Returns
    the delivery count of what another replica is given then (one message is left in the stream for it)."""
    batches = [[*generate(BATCH, hosts=3, seed=seed)] for seed in range(3)]
    await publish_all(settings, [e for batch in batches for e in batch] + [b'{"id": "left for another replica"}'])
    nc = await connect(settings, name="test-bridge")
    broker = build_broker(settings)
    handoff = Handoff.from_settings(broker, settings)
    checks: list[float] = []
    first_check = threading.Event()

    def sync() -> None:  # the real check, the first one held back until the later batches are in the window
        checks.append(time.monotonic())
        first_check.wait(timeout=WAIT_S)
        handoff.sync()

    window: AckWindow[Msg] = AckWindow(max_events=10_000, max_bytes=1 << 30)
    commit = GroupCommit(window, handoff.enqueue_raw, sync, asyncio.sleep, ack_wait_s=ACK_WAIT_S)
    commit.nc = nc
    committing = asyncio.create_task(commit.run())
    try:
        fetcher = await rawstream.bind(nc, nc.jetstream(), settings, ACK_WAIT_S)
        for i in range(3):
            batch = await fetcher.fetch(BATCH, timeout_s=FETCH_TIMEOUT_S)
            assert len(batch) == BATCH
            commit.hold(batch)
            await commit.hand_over(batch)
            if i == 0:
                await _poll(lambda: bool(checks), timeout_s=WAIT_S, describe=lambda: "no durability check")
        fill(client)
        first_check.set()
        # Refused for longer than the ack wait: the held messages must have been kept alive meanwhile.
        await _poll(lambda: len(checks) >= REFUSALS, timeout_s=WAIT_S, describe=lambda: f"{len(checks)} checks")
        assert commit.redis_full and window.events == 3 * BATCH
        delivered = await another_replica_fetches(settings)
        client.delete("ballast")
        await _poll(lambda: window.events == 0, timeout_s=WAIT_S, describe=lambda: f"{window.events} held")
        return delivered
    finally:
        committing.cancel()
        await nc.close()
        broker.close()


def test_a_pause_keeps_alive_the_batches_waiting_for_the_next_durability_check(
        settings: Settings, small_redis: devservers.Server) -> None:
    client = redis.Redis(port=small_redis.port)
    try:
        client.flushdb()
        assert asyncio.run(_pause_with_batches_in_the_window(settings, client)) == 1, "a held message expired"
        consumer = raw_consumer(settings)
        assert consumer.ack_floor is not None and consumer.ack_floor.stream_seq == 3 * BATCH
        assert consumer.num_redelivered == 0
    finally:
        client.config_set("maxmemory", 0)
        client.delete("ballast")
        client.close()
