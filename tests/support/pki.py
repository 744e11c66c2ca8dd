"""A throw-away certificate authority for TLS tests: a CA, a server certificate for 127.0.0.1 and localhost, and a
client certificate for mutual TLS, as PEM files."""

from __future__ import annotations

import datetime
import ipaddress
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

VALIDITY = datetime.timedelta(days=1)
CLOCK_SKEW = datetime.timedelta(minutes=5)


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _write_key(key: ec.EllipticCurvePrivateKey, path: Path) -> None:
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    path.chmod(0o600)


def _builder(subject: str, issuer: x509.Name, key: ec.EllipticCurvePrivateKey) -> x509.CertificateBuilder:
    now = datetime.datetime.now(datetime.UTC)
    return (x509.CertificateBuilder().subject_name(_name(subject)).issuer_name(issuer)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - CLOCK_SKEW).not_valid_after(now + VALIDITY))


def _issue(ca: x509.Certificate, ca_key: ec.EllipticCurvePrivateKey, subject: str,
           usage: x509.ObjectIdentifier, root: Path, stem: str) -> tuple[Path, Path]:
    """A certificate for ``subject`` signed by the CA, for ``usage`` (server or client authentication)."""
    key = ec.generate_private_key(ec.SECP256R1())
    builder = _builder(subject, ca.subject, key).add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    if usage == ExtendedKeyUsageOID.SERVER_AUTH:
        builder = builder.add_extension(x509.SubjectAlternativeName([
            x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
    cert_path, key_path = root / f"{stem}.pem", root / f"{stem}.key"
    cert_path.write_bytes(builder.sign(ca_key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM))
    _write_key(key, key_path)
    return cert_path, key_path


def make_pki(root: Path) -> dict[str, Path]:
    """Under ``root``: ``ca``, the server's ``cert`` and ``key`` (for 127.0.0.1 and localhost) and the
    ``client_cert`` and ``client_key`` of a client called ``etl-client``, all signed by the CA."""
    root.mkdir(parents=True, exist_ok=True)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (_builder("etl test CA", _name("etl test CA"), ca_key)
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True).sign(ca_key, hashes.SHA256()))
    files = {"ca": root / "ca.pem"}
    files["ca"].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    files["cert"], files["key"] = _issue(ca, ca_key, "localhost", ExtendedKeyUsageOID.SERVER_AUTH, root, "server")
    files["client_cert"], files["client_key"] = _issue(ca, ca_key, "etl-client", ExtendedKeyUsageOID.CLIENT_AUTH,
                                                       root, "client")
    return files
