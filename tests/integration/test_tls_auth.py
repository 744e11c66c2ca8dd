"""Authentication and TLS to NATS and PostgreSQL, against real servers with a CA the test makes."""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
from collections.abc import Callable
from pathlib import Path

import psycopg2
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from etl.config import Settings
from etl.dev import servers as devservers
from etl.errors import SinkUnavailable
from etl.natsio.conn import NatsUnavailable, connect
from etl.sinks.postgres import connection_params
from etl.sinks.timescale import TimescaleSink


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _write_key(key: ec.EllipticCurvePrivateKey, path: Path) -> None:
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    path.chmod(0o600)


def make_pki(root: Path) -> dict[str, Path]:
    """A CA and a server certificate for 127.0.0.1 and localhost, as PEM files."""
    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (x509.CertificateBuilder().subject_name(_name("etl test CA")).issuer_name(_name("etl test CA"))
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True).sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder().subject_name(_name("localhost")).issuer_name(ca.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                        x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False).sign(ca_key, hashes.SHA256()))
    root.mkdir(parents=True, exist_ok=True)
    files = {"ca": root / "ca.pem", "cert": root / "server.pem", "key": root / "server.key"}
    files["ca"].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    files["cert"].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    _write_key(key, files["key"])
    return files


def can_connect(settings: Settings) -> bool:
    async def attempt() -> bool:
        try:
            nc = await connect(settings, name="tls-test")
        except NatsUnavailable:
            return False
        await nc.close()
        return True

    return asyncio.run(attempt())


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
