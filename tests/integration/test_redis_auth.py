"""Redis with an ACL user and FalkorDB with a password: the pipeline's own connection code (``redis_client``, the
broker, the hand-off's ``WAITAOF``, the dead-letter store, the graph sink) logs in with the credentials of
``REDIS_URL`` and ``NEO4J_URI``, and a wrong password is one line that does not repeat it.

Each server refuses anyone else (Redis's ``default`` user is off; FalkorDB has ``requirepass``), so a connection
that ignored the credentials would fail here."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis

from etl.broker import build_broker, redis_client
from etl.config import Settings
from etl.dev import servers as devservers
from etl.errors import EXIT_FAILURE, ConfigError, SinkUnavailable
from etl.pipeline import rawbatch
from etl.pipeline.dlq import DeadLetter, DeadLetterStore
from etl.pipeline.handoff import Handoff
from etl.sinks.graph.sink import GraphSink
from etl.stages import ENRICH
from tests.graphs import open_probe
from tests.support.pki import make_pki
from tests.support.tlsproxy import TlsProxy

REDIS_USER = "etl-pipeline"
# Spaces, '@', ':' and '%' must survive the URL's percent-encoding.
REDIS_PASSWORD = "s3cret pass@:%"
REDIS_PASSWORD_IN_URL = "s3cret%20pass%40%3A%25"
FALKOR_PASSWORD = "falkor-s3cret"
WRONG_PASSWORD = "wrong-s3cret"
CONSUME_TIMEOUT_MS = 5_000


def acl_args(user: str, password: str) -> list[str]:
    """Redis's command line for one ACL user with every right, and the ``default`` user off."""
    return ["--user", "default", "off", "--user", user, "on", f">{password}", "~*", "&*", "+@all"]


@pytest.fixture(scope="module")
def acl_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[devservers.Server]:
    server = devservers.redis_server(tmp_path_factory.mktemp("acl-redis"),
                                     extra_args=acl_args(REDIS_USER, REDIS_PASSWORD),
                                     auth=[REDIS_USER, REDIS_PASSWORD]).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def falkordb_with_password(tmp_path_factory: pytest.TempPathFactory) -> Iterator[devservers.Server]:
    server = devservers.redis_server(tmp_path_factory.mktemp("falkordb-pw"), falkordb=True,
                                     extra_args=["--requirepass", FALKOR_PASSWORD], auth=[FALKOR_PASSWORD]).start()
    yield server
    server.stop()


def redis_url(server: devservers.Server, userinfo: str) -> str:
    return f"redis://{userinfo}@127.0.0.1:{server.port}/0"


def test_broker_handoff_worker_and_dead_letters_log_in_as_the_acl_user(
        acl_redis: devservers.Server, make_settings: Callable[..., Settings]) -> None:
    settings = make_settings(REDIS_URL=redis_url(acl_redis, f"{REDIS_USER}:{REDIS_PASSWORD_IN_URL}"))
    broker = build_broker(settings)
    try:
        broker.flush_all()
        # The bridge's hand-off: enqueue, then WAITAOF (the server runs appendonly with fsync always).
        Handoff.from_settings(broker, settings).raw([b'{"id": "acl-1"}'])
        consumer = broker.consume(ENRICH.queue, timeout=CONSUME_TIMEOUT_MS)
        try:
            message = next(consumer)
            assert message is not None, "the worker's consumer got nothing"
            assert rawbatch.unpack(*message.args[:2]) == ['{"id": "acl-1"}']
            consumer.ack(message)
        finally:
            consumer.close()
    finally:
        broker.close()
    with redis_client(settings) as client:
        store = DeadLetterStore.from_settings(client, settings)
        store.add([DeadLetter.for_raw("enrich", "BadEvent: not valid JSON", b"\xff")])
        assert [letter.reason for letter in store.list()] == ["BadEvent: not valid JSON"]
        assert client.acl_whoami() == REDIS_USER


def test_redis_refuses_a_client_without_the_acl_user(acl_redis: devservers.Server) -> None:
    """The server side of the test above: what logs in without the URL's credentials is refused."""
    with pytest.raises(redis.AuthenticationError), redis.Redis(port=acl_redis.port) as client:
        client.execute_command("AUTH", REDIS_PASSWORD)
    with pytest.raises(redis.AuthenticationError):
        Handoff.from_settings(build_broker(bad := Settings.from_env(
            {"REDIS_URL": redis_url(acl_redis, f"{REDIS_USER}:{WRONG_PASSWORD}")})), bad).raw([b"{}"])


def run_etl(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "etl.cli", *args], capture_output=True, text=True, timeout=60,
                          env={**os.environ, **env, "PYTHONPATH": os.getcwd()})


def assert_refused_in_one_line(done: subprocess.CompletedProcess[str], *named: str) -> None:
    assert done.returncode == EXIT_FAILURE and "Traceback" not in done.stderr, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert all(text in lines[0] for text in named), lines[0]
    assert WRONG_PASSWORD not in done.stderr + done.stdout


@pytest.mark.parametrize("args", [["dlq", "list"], ["dlq", "replay", "--all"], ["report"]])
def test_a_wrong_redis_password_is_one_line_without_the_password(args: list[str],
                                                                 acl_redis: devservers.Server) -> None:
    url = redis_url(acl_redis, f"{REDIS_USER}:{WRONG_PASSWORD}")
    assert_refused_in_one_line(run_etl(args, {"REDIS_URL": url}), "invalid username-password pair",
                               f"{REDIS_USER}:***@")


@pytest.mark.parametrize("args", [["migrate"], ["report"]])
def test_a_wrong_falkordb_password_is_one_line_without_the_password(
        args: list[str], falkordb_with_password: devservers.Server, make_settings: Callable[..., Settings]) -> None:
    uri = f"falkor://:{WRONG_PASSWORD}@127.0.0.1:{falkordb_with_password.port}"
    done = run_etl(args, make_settings(NEO4J_URI=uri).to_env())
    if args == ["migrate"]:  # the test PostgreSQL has no TimescaleDB: migrate says so before it reaches the graph
        warning, _, rest = done.stderr.partition("\n")
        assert warning.startswith("WARNING: TimescaleDB"), done.stderr
        done = subprocess.CompletedProcess(done.args, done.returncode, done.stdout, rest)
    assert_refused_in_one_line(done, "FalkorDB", "password")


def graph_event(event_id: str) -> dict[str, object]:
    return {"id": event_id, "type": "connect", "source": "/usr/bin/psql", "timestamp": 1704110400000, "env": "test",
            "rdns": None, "metadata": {"host_id": "host-001", "pid": "1234"}, "payload": {"bytes": 12}}


def test_graph_sink_writes_to_falkordb_with_its_password(
        falkordb_with_password: devservers.Server, make_settings: Callable[..., Settings]) -> None:
    settings = make_settings(NEO4J_URI=f"falkor://:{FALKOR_PASSWORD}@127.0.0.1:{falkordb_with_password.port}")
    sink = GraphSink(settings)
    try:
        assert sink.write([graph_event("pw-1"), graph_event("pw-2")]) == 2
        assert sink.count_events() == 2
    finally:
        sink.close()
    probe = open_probe(settings)
    try:
        assert sorted(r[0] for r in probe.rows("MATCH (e:Event) RETURN e.id")) == ["pw-1", "pw-2"]
    finally:
        probe.close()


def test_graph_sink_takes_falkordbs_password_from_neo4j_password_file(
        falkordb_with_password: devservers.Server, make_settings: Callable[..., Settings], tmp_path: Path) -> None:
    """A Docker secret: the URI carries no password, NEO4J_PASSWORD_FILE names the file holding it."""
    secret = tmp_path / "graph_password"
    secret.write_text(f"{FALKOR_PASSWORD}\n")
    settings = make_settings(NEO4J_URI=f"falkor://127.0.0.1:{falkordb_with_password.port}",
                             NEO4J_PASSWORD_FILE=secret)
    sink = GraphSink(settings)
    try:
        assert sink.write([graph_event("file-1")]) == 1
        assert sink.count_events() == 1
    finally:
        sink.close()


@pytest.mark.parametrize("userinfo", [f":{WRONG_PASSWORD}@", ""])
def test_falkordb_with_a_wrong_or_no_password_is_the_sinks_error(
        userinfo: str, falkordb_with_password: devservers.Server, make_settings: Callable[..., Settings]) -> None:
    settings = make_settings(NEO4J_URI=f"falkor://{userinfo}127.0.0.1:{falkordb_with_password.port}")
    sink = GraphSink(settings)
    try:
        with pytest.raises(SinkUnavailable) as raised:
            sink.write([graph_event("refused")])
    finally:
        sink.close()
    message = str(raised.value)
    assert "\n" not in message and WRONG_PASSWORD not in message
    assert "password" in message.lower() or "authentication" in message.lower(), message


@pytest.fixture
def tls_redis(acl_redis: devservers.Server, tmp_path: Path) -> Iterator[tuple[TlsProxy, Path]]:
    """The ACL Redis behind a TLS terminator with a certificate of the test CA; yields it and the CA file."""
    pki = make_pki(tmp_path / "pki")
    proxy = TlsProxy(acl_redis.port, pki["cert"], pki["key"]).start()
    yield proxy, pki["ca"]
    proxy.stop()


def test_rediss_with_redis_tls_ca_verifies_the_server(tls_redis: tuple[TlsProxy, Path],
                                                      make_settings: Callable[..., Settings]) -> None:
    """Over ``rediss://`` the hand-off (enqueue and WAITAOF) and the dead-letter store work when REDIS_TLS_CA names
    the server's CA; without it the system's CAs refuse the certificate, and the client never talks in clear."""
    proxy, ca = tls_redis
    url = f"rediss://{REDIS_USER}:{REDIS_PASSWORD_IN_URL}@127.0.0.1:{proxy.port}/0"
    settings = make_settings(REDIS_URL=url, REDIS_TLS_CA=ca)
    broker = build_broker(settings)
    try:
        Handoff.from_settings(broker, settings).raw([b'{"id": "tls-1"}'])
        assert broker.client.llen(f"{broker.namespace}:{ENRICH.queue}") >= 1
    finally:
        broker.close()
    with redis_client(settings) as client:
        DeadLetterStore.from_settings(client, settings).add([DeadLetter.for_raw("enrich", "BadEvent: x", b"x")])
    with pytest.raises(redis.ConnectionError, match="CERTIFICATE_VERIFY_FAILED"), \
            redis_client(make_settings(REDIS_URL=url)) as unverified:
        unverified.ping()
    via_sentinel = redis_client(make_settings(REDIS_URL=url, REDIS_TLS_CA=ca, REDIS_SENTINELS="127.0.0.1:1"))
    assert via_sentinel.connection_pool.connection_kwargs["ssl_ca_certs"] == str(ca), "Sentinel's master, too"
    via_sentinel.close()
    with pytest.raises(ConfigError, match="REDIS_TLS_CA needs a rediss:// REDIS_URL"):
        make_settings(REDIS_URL=url.replace("rediss://", "redis://"), REDIS_TLS_CA=ca)
