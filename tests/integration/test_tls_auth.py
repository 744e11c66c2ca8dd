"""Authentication and TLS to NATS and PostgreSQL, against real servers with a CA the test makes: a token, a
credentials file (operator mode), server-verified and mutual TLS for NATS; libpq's TLS options for PostgreSQL."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import psycopg2
import pytest

from etl.config import Settings
from etl.dev import servers as devservers
from etl.errors import SinkUnavailable
from etl.natsio.conn import NatsUnavailable, connect
from etl.sinks.postgres import connection_params
from etl.sinks.timescale import TimescaleSink
from tests.support.natsjwt import make_trust
from tests.support.pki import make_pki


def connect_error(settings: Settings) -> str | None:
    """Why the pipeline's ``connect`` fails with ``settings``; None when it connects and JetStream answers (a
    stream is created and takes a message, so the account's JetStream is usable, not only the socket)."""
    async def attempt() -> str | None:
        try:
            nc = await connect(settings, name="tls-test")
        except NatsUnavailable as e:
            return str(e)
        try:
            js = nc.jetstream()
            await js.add_stream(name="AUTH_PROBE", subjects=["auth.probe"])
            await js.publish("auth.probe", b"x")
        finally:
            await nc.close()
        return None

    return asyncio.run(attempt())


def can_connect(settings: Settings) -> bool:
    return connect_error(settings) is None


# How a refused TLS 1.3 client may learn it, when the server's alert has not reached it first.
CLOSED_BY_SERVER = ("Broken pipe", "Connection reset by peer")


def assert_refused(settings: Settings, *reasons: str) -> None:
    """The connect fails with one line giving the server's reason (one of ``reasons``)."""
    error = connect_error(settings)
    assert error is not None, "connected without the credential"
    assert "\n" not in error and any(reason in error for reason in reasons), error


def test_nats_over_tls_verifies_the_server(tmp_path: Path) -> None:
    pki = make_pki(tmp_path / "pki")
    server = devservers.nats_server(tmp_path / "nats", extra_args=[
        "--tls", "--tlscert", str(pki["cert"]), "--tlskey", str(pki["key"])]).start()
    try:
        url = f"tls://127.0.0.1:{server.port}"
        assert can_connect(Settings.from_env({"NATS_URL": url, "NATS_TLS_CA": str(pki["ca"])}))
        assert not can_connect(Settings.from_env({"NATS_URL": url})), "an unknown CA is refused"
    finally:
        server.stop()


def test_nats_token_in_the_url_authenticates_and_is_redacted(tmp_path: Path) -> None:
    server = devservers.nats_server(tmp_path / "nats", extra_args=["--auth", "s3cret-token"]).start()
    try:
        good = Settings.from_env({"NATS_URL": f"nats://s3cret-token@127.0.0.1:{server.port}"})
        assert can_connect(good)
        assert "s3cret-token" not in repr(good)
        assert not can_connect(Settings.from_env({"NATS_URL": f"nats://wrong@127.0.0.1:{server.port}"}))
    finally:
        server.stop()


def test_nats_creds_file_authenticates_in_operator_mode(tmp_path: Path) -> None:
    """The server trusts one operator and preloads its account; the user's JWT and seed come from NATS_CREDS."""
    trust = make_trust(tmp_path / "trust")
    stranger = make_trust(tmp_path / "stranger")  # the same kind of user, signed by another operator's account
    server = devservers.nats_server(tmp_path / "nats", extra_args=["-c", str(trust.server_config)]).start()
    try:
        url = f"nats://127.0.0.1:{server.port}"
        assert connect_error(Settings.from_env({"NATS_URL": url, "NATS_CREDS": str(trust.creds)})) is None
        assert_refused(Settings.from_env({"NATS_URL": url}), "Authorization Violation")
        assert_refused(Settings.from_env({"NATS_URL": url, "NATS_CREDS": str(stranger.creds)}),
                       "Authorization Violation")
    finally:
        server.stop()


def mutual_tls_args(pki: dict[str, Path]) -> list[str]:
    """nats-server's flags for TLS that requires a client certificate signed by the test CA."""
    return ["--tlsverify", "--tlscert", str(pki["cert"]), "--tlskey", str(pki["key"]), "--tlscacert", str(pki["ca"])]


def test_nats_mutual_tls_needs_the_client_certificate(tmp_path: Path) -> None:
    pki = make_pki(tmp_path / "pki")
    server = devservers.nats_server(tmp_path / "nats", extra_args=mutual_tls_args(pki)).start()
    try:
        env = {"NATS_URL": f"tls://127.0.0.1:{server.port}", "NATS_TLS_CA": str(pki["ca"])}
        client = {"NATS_TLS_CERT": str(pki["client_cert"]), "NATS_TLS_KEY": str(pki["client_key"])}
        assert connect_error(Settings.from_env({**env, **client})) is None
        # In TLS 1.3 the client's side of the handshake ends before the server checks its certificate: the
        # server's alert may come first, or the client's next write may find the connection closed.
        assert_refused(Settings.from_env(env), "certificate required", *CLOSED_BY_SERVER)
        # The server's own certificate is not one for a client (its extended key usage is server auth only).
        assert_refused(Settings.from_env({**env, "NATS_TLS_CERT": str(pki["cert"]), "NATS_TLS_KEY": str(pki["key"])}),
                       "bad certificate", "unsupported certificate", *CLOSED_BY_SERVER)
    finally:
        server.stop()


def test_postgres_tls_options_reach_libpq(make_settings: Callable[..., Settings], tmp_path: Path) -> None:
    """The embedded test server is built without SSL, so this shows the options are applied, not a TLS session:
    ``require`` is refused by a server without SSL, ``verify-full`` looks for its root certificate, and
    ``disable`` connects."""
    required = make_settings(PG_SSLMODE="require")
    with pytest.raises(psycopg2.OperationalError, match="SSL"):
        psycopg2.connect(**connection_params(required), connect_timeout=5)
    sink = TimescaleSink(required)
    with pytest.raises(SinkUnavailable):
        sink.check()
    sink.close()
    pki = make_pki(tmp_path / "pki")
    verify = make_settings(PG_SSLMODE="verify-full", PG_SSLROOTCERT=str(pki["ca"]))
    assert connection_params(verify)["sslrootcert"] == str(pki["ca"])
    with pytest.raises(psycopg2.OperationalError, match="SSL"):
        psycopg2.connect(**connection_params(verify), connect_timeout=5)
    psycopg2.connect(**connection_params(make_settings(PG_SSLMODE="disable")), connect_timeout=5).close()
