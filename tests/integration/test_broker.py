"""Redis durability before the bridge acks NATS: WAITAOF against real Redis servers."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import redis

from etl.broker import AofSync
from etl.dev import servers as devservers


def test_waits_for_the_aof_fsync(redis_server: devservers.Server) -> None:
    with redis.Redis(port=redis_server.port) as client:
        client.rpush("aof-probe", b"x")
        sync = AofSync(client)
        sync.wait()
        sync.wait()
        assert sync._enabled


def test_without_aof_it_warns_once_and_goes_on(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    server = devservers.redis_server(tmp_path / "redis", aof=False).start()
    try:
        with redis.Redis(port=server.port) as client, caplog.at_level(logging.WARNING):
            sync = AofSync(client)
            sync.wait()
            sync.wait()
        assert [r.message for r in caplog.records if "appendonly off" in r.message] != []
        assert len([r for r in caplog.records if "appendonly off" in r.message]) == 1
    finally:
        server.stop()
