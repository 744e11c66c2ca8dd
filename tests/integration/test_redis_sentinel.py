"""Redis with a replica and a Sentinel, for availability: the pipeline finds the master through the Sentinel,
follows a failover, and loses nothing, because the bridge acks NATS only once a replica has the batch on disk too
(``REDIS_WAIT_REPLICAS``). Real servers: a master, a replica and a Sentinel from the same redis-server binary."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis

from etl.broker import AofSync, redis_client
from etl.config import Settings
from etl.dev import servers as devservers
from etl.errors import TransientError
from etl.stages import TIMESCALE
from tests.integration.accounting import check_accounting, sample_events
from tests.integration.faults_support import SteadyPublisher, create_raw_consumer, wait_settled, wait_stored
from tests.waiting import wait_for

MASTER_NAME = "etl"
EVENTS = 2000
RATE_PER_S = 200.0
FAILOVER_TIMEOUT_S = 30.0


@dataclass
class Replicated:
    master: devservers.Server
    replica: devservers.Server
    sentinel: devservers.Server

    def master_port(self) -> int:
        """The master's port, as the Sentinel reports it."""
        with redis.Redis(port=self.sentinel.port) as client:
            _, port = client.execute_command("SENTINEL", "get-master-addr-by-name", MASTER_NAME)
        return int(port)

    def failover_finished(self) -> bool:
        """Whether the Sentinel has finished failing over to the replica, not only started advertising it.

        Sentinel advertises the promoted replica while it still reconfigures the other replicas. An old master
        that comes back inside that window is still the master in the Sentinel's table, and the Sentinel can turn
        the promoted replica back into its replica: the failover reverses."""
        with redis.Redis(port=self.sentinel.port, decode_responses=True) as client:
            raw = client.execute_command("SENTINEL", "master", MASTER_NAME)
        state = dict(zip(raw[::2], raw[1::2], strict=True)) if isinstance(raw, list) else raw
        if int(state["port"]) != self.replica.port or state["flags"] != "master":
            return False
        with redis.Redis(port=self.replica.port) as client:
            return client.info("replication").get("role") == "master"

    def stop(self) -> None:
        for server in (self.sentinel, self.replica, self.master):
            server.stop()


def _link_up(port: int) -> bool:
    with redis.Redis(port=port) as client:
        return client.info("replication").get("master_link_status") == "up"


def _sentinel_sees_replica(sentinel_port: int) -> bool:
    with redis.Redis(port=sentinel_port) as client:
        replicas = client.execute_command("SENTINEL", "replicas", MASTER_NAME)
    return any("s_down" not in str(r) for r in replicas)


@pytest.fixture
def replicated(tmp_path: Path) -> Iterator[Replicated]:
    master = devservers.redis_server(tmp_path / "master").start()
    servers = Replicated(master, devservers.redis_server(tmp_path / "replica", replica_of=master.port),
                         devservers.redis_sentinel(tmp_path / "sentinel", master.port, MASTER_NAME))
    try:
        servers.replica.start()
        wait_for(lambda: _link_up(servers.replica.port), timeout_s=30, describe=servers.replica.log_tail)
        servers.sentinel.start()
        wait_for(lambda: _sentinel_sees_replica(servers.sentinel.port), timeout_s=30,
                 describe=servers.sentinel.log_tail)
        yield servers
    finally:
        servers.stop()


def test_the_bridge_hand_off_waits_for_the_replica_disk(replicated: Replicated) -> None:
    with redis.Redis(port=replicated.master.port) as client:
        client.rpush("hand-off-probe", b"x")
        AofSync(client, replicas=1).wait()
        with pytest.raises(TransientError, match="REDIS_WAIT_REPLICAS"):
            AofSync(client, replicas=2, timeout_ms=200).wait()


def test_the_pipeline_follows_a_failover_and_loses_nothing(replicated: Replicated,
                                                           make_settings: Callable[..., Settings],
                                                           start_pipeline: Callable[..., Any]) -> None:
    # REDIS_URL's host is not used with Sentinels: port 1 would refuse every connection.
    settings = make_settings(REDIS_URL="redis://127.0.0.1:1/0", REDIS_SENTINELS=f"127.0.0.1:{replicated.sentinel.port}",
                             REDIS_SENTINEL_MASTER=MASTER_NAME, REDIS_WAIT_REPLICAS="1", MAX_BATCH_SIZE="50",
                             BATCH_LINGER_MS="20")
    with redis_client(settings) as client:
        assert client.connection_pool.get_master_address()[1] == replicated.master.port
    create_raw_consumer(settings)
    pipeline = start_pipeline(settings)
    events = sample_events(EVENTS, seed=7)
    load = SteadyPublisher(settings, events.all, RATE_PER_S).start()

    wait_stored(settings, pipeline, at_least=EVENTS // 4)
    old_master = replicated.master.port
    replicated.master.kill()  # no shutdown: whatever it had not replicated is gone with it
    wait_for(lambda: replicated.master_port() == replicated.replica.port, timeout_s=FAILOVER_TIMEOUT_S,
             describe=replicated.sentinel.log_tail)
    wait_for(replicated.failover_finished, timeout_s=FAILOVER_TIMEOUT_S, describe=replicated.sentinel.log_tail)
    # The old master comes back and the Sentinel makes it a replica of the new one, so batches can again be
    # acked with a replica's copy on disk.
    replicated.master.start()
    wait_for(lambda: _link_up(old_master), timeout_s=FAILOVER_TIMEOUT_S, describe=replicated.master.log_tail)

    load.join(EVENTS / RATE_PER_S + 60)
    wait_settled(settings, pipeline, timeout_s=120)
    check_accounting(settings, events)
    assert TIMESCALE.count(settings) == len(events.valid)
