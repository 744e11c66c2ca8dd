"""The ONE place that builds the Dramatiq broker: Redis, its middleware and the orjson encoder."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any
from urllib.parse import unquote, urlsplit

import dramatiq
import orjson
import redis
from dramatiq.brokers.redis import RedisBroker
from dramatiq.encoder import Encoder, MessageData
from dramatiq.errors import DecodeError
from dramatiq.middleware import AgeLimit, Callbacks, Middleware, Pipelines, ShutdownNotifications, TimeLimit
from redis.backoff import NoBackoff
from redis.retry import Retry
from redis.sentinel import Sentinel

from etl.config import Settings
from etl.errors import PermanentError, RedisFull, TransientError
from etl.runtime.redis_durability import DurableRedisBroker, PatientRetries

log = logging.getLogger(__name__)

REDIS_SOCKET_TIMEOUT_S = 10.0
REDIS_CONNECT_TIMEOUT_S = 5.0
AOF_SYNC_TIMEOUT_MS = 5_000
# Written before each WAITAOF (see AofSync): a counter of durability checks, nothing reads it.
AOF_BARRIER_KEY = "etl:aof-barrier"
# A worker that has not talked to Redis for this long is dead, and the messages it had fetched go back to their
# queue. Live workers poll (and so heartbeat) about every second; Dramatiq's default is a minute.
HEARTBEAT_TIMEOUT_MS = 15_000
# Per million broker commands, how many also run that clean-up. Dramatiq's default (1,000) can leave a dead
# worker's messages waiting for many minutes on a quiet queue; 5% of polls is still cheap.
MAINTENANCE_CHANCE = 50_000


class OrjsonEncoder(Encoder):
    """Message bodies as JSON through orjson: several times faster than the stdlib on our batches."""

    def encode(self, data: MessageData) -> bytes:
        return orjson.dumps(data)

    def decode(self, data: bytes) -> MessageData:
        try:
            return orjson.loads(data)
        except orjson.JSONDecodeError as e:
            raise DecodeError(f"failed to decode message: {e}", data, e) from None


def redis_client(settings: Settings) -> redis.Redis:
    """The one way to open Redis: with timeouts, so a dead server surfaces as an error, not a hang, and without
    redis-py's silent retries: Dramatiq's fetch script is not safe to run twice (a first run whose reply was lost
    strands its messages), so a failed command must surface and be handled where it is known to be safe.

    With ``REDIS_SENTINELS``, the client asks the Sentinels for the current master of ``REDIS_SENTINEL_MASTER``
    on each new connection, so after a failover the next connection goes to the promoted replica. ``REDIS_URL``
    then gives only the database, the credentials and TLS (``rediss``); its host is not used. ``REDIS_TLS_CA`` verifies
    the server in both cases (the system's CAs without it). ``REDIS_PASSWORD`` is the password where the URL
    carries none."""
    options: dict[str, Any] = {"socket_timeout": REDIS_SOCKET_TIMEOUT_S,
                               "socket_connect_timeout": REDIS_CONNECT_TIMEOUT_S, "health_check_interval": 30,
                               "retry": Retry(NoBackoff(), 0)}
    if settings.redis_tls_ca:  # only with rediss:// (etl.config checks): a plain connection takes no CA
        options["ssl_ca_certs"] = settings.redis_tls_ca
    if settings.redis_password:  # Settings allows it only where REDIS_URL carries none
        options["password"] = settings.redis_password
    if not settings.redis_sentinels:
        return redis.Redis.from_url(settings.redis_url, **options)
    url = urlsplit(settings.redis_url)
    sentinel = Sentinel(settings.redis_sentinels,
                        socket_timeout=REDIS_CONNECT_TIMEOUT_S, socket_connect_timeout=REDIS_CONNECT_TIMEOUT_S)
    if url.password:
        options["password"] = unquote(url.password)
    return sentinel.master_for(settings.redis_sentinel_master, db=int(url.path.strip("/") or 0),
                               username=unquote(url.username) if url.username else None,
                               ssl=url.scheme == "rediss", **options)


class AofSync:
    """Waits until Redis has written its append-only file to disk (``WAITAOF``), and with ``replicas`` until that
    many replicas have too, for every write Redis applied before the wait began, whoever sent it.

    ``WAITAOF`` waits for the writes of its own connection only, and a pooled client may send it on another
    connection than the batch's, or the bridge's check may cover batches other threads enqueued: so each wait
    first writes a counter (``AOF_BARRIER_KEY``) on the same connection. Redis applies writes one at a time, so
    that write is on disk only once every earlier one is, and one wait covers them all (group commit).

    The bridge acks NATS only after this, so a Redis crash right after the ack cannot lose the batch: either
    Redis has it on disk, or NATS still has it; with ``replicas`` (``REDIS_WAIT_REPLICAS``) the same holds when a
    replica is promoted in the master's place. Where AOF is off, a warning is logged once and the local disk is
    not awaited (durability then rests on Redis alone; see the README). With ``appendfsync always`` the wait is
    immediate; with ``everysec`` it takes up to a second, shared by every batch enqueued meanwhile.
    """

    def __init__(self, client: redis.Redis, *, enabled: bool = True, replicas: int = 0,
                 timeout_ms: int = AOF_SYNC_TIMEOUT_MS) -> None:
        self._client = client
        self._timeout_ms = timeout_ms
        self._enabled = enabled
        self._replicas = replicas

    def wait(self) -> None:
        """Raises ``TransientError`` if the write is not on disk (on ``replicas`` replicas' disks too) within the
        timeout: ``RedisFull`` if Redis, at ``maxmemory``, refused it."""
        if not self._enabled and not self._replicas:
            return
        local_wanted = 1 if self._enabled else 0
        try:
            with self._client.pipeline(transaction=False) as pipe:  # one connection for both commands
                pipe.incr(AOF_BARRIER_KEY)
                pipe.execute_command("WAITAOF", local_wanted, self._replicas, self._timeout_ms)
                _, (local, replicas) = pipe.execute()
        except redis.exceptions.OutOfMemoryError as e:
            # The barrier is a write: a full Redis refuses it, and the wait would not cover the batch.
            raise RedisFull(f"Redis WAITAOF failed: {e}") from e
        except redis.ResponseError as e:
            if "appendonly" not in str(e).lower():
                raise TransientError(f"Redis WAITAOF failed: {e}") from e
            self._enabled = False
            log.warning("Redis has appendonly off: queued batches are lost if Redis restarts (%s)", e)
            self.wait()
            return
        if int(local) < local_wanted:
            raise TransientError(f"Redis did not fsync its AOF within {self._timeout_ms} ms")
        if int(replicas) < self._replicas:
            raise TransientError(f"only {int(replicas)} of the {self._replicas} Redis replica(s) asked for "
                                 f"(REDIS_WAIT_REPLICAS) fsynced the write within {self._timeout_ms} ms: are they "
                                 "connected, with appendonly yes?")


def retry_when(max_retries: int) -> Any:
    """Retry anything but a permanent error, up to ``max_retries`` times."""

    def should_retry(retries_so_far: int, exception: BaseException) -> bool:
        return not isinstance(exception, PermanentError) and retries_so_far < max_retries

    return should_retry


def time_limit_ms(settings: Settings) -> int:
    """Dramatiq's time limit on one message, in milliseconds: ``PROCESSING_TIMEOUT``. The sinks give up earlier,
    within ``Settings.sink_budget_s``."""
    return settings.processing_timeout_s * 1000


def build_broker(settings: Settings, *, before_retry_decision: Sequence[Middleware] = (),
                 after_retry_decision: Sequence[Middleware] = (), metrics: Sequence[Middleware] = ()) -> RedisBroker:
    """A Redis broker with our retry policy, time limit and encoder.

    Dramatiq runs ``after_*`` hooks in reverse list order. Middleware in ``after_retry_decision`` therefore sits
    *before* Retries in the list, so its hooks see whether Retries failed the message; middleware in
    ``before_retry_decision`` sits after it, so what its hooks stamp on a message travels with the retry.
    """
    dramatiq.set_encoder(OrjsonEncoder())
    middleware: list[Middleware] = [
        *metrics,
        AgeLimit(),
        TimeLimit(time_limit=time_limit_ms(settings)),
        ShutdownNotifications(),
        Callbacks(),
        Pipelines(),
        *after_retry_decision,
        PatientRetries(max_retries=settings.retry_max, min_backoff=settings.retry_min_backoff_ms,
                       max_backoff=settings.retry_max_backoff_ms, retry_when=retry_when(settings.retry_max)),
        *before_retry_decision,
    ]
    return DurableRedisBroker(client=redis_client(settings), middleware=middleware,
                              heartbeat_timeout=HEARTBEAT_TIMEOUT_MS, maintenance_chance=MAINTENANCE_CHANCE)
