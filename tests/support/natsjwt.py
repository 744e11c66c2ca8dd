"""Decentralised NATS authentication for tests: an operator, an account and a user, their nkeys and JWTs, a
credentials file, and the server configuration that trusts them (operator mode, with the account preloaded into a
memory resolver).

A NATS JWT is ``base64url(header).base64url(claims).base64url(signature)``, the signature an ed25519 one by the
issuer's nkey over the first two parts; its ``jti`` is the SHA-512/256 of the claims without it, in base32.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nkeys

JWT_HEADER = {"typ": "JWT", "alg": "ed25519-nkey"}
UNLIMITED = -1
ACCOUNT_LIMITS = {"subs": UNLIMITED, "data": UNLIMITED, "payload": UNLIMITED, "imports": UNLIMITED,
                  "exports": UNLIMITED, "wildcards": True, "conn": UNLIMITED, "leaf": UNLIMITED,
                  # JetStream is enabled for an account by giving it storage.
                  "mem_storage": UNLIMITED, "disk_storage": UNLIMITED, "streams": UNLIMITED,
                  "consumer": UNLIMITED}


def new_keypair(prefix: int) -> nkeys.KeyPair:
    """A fresh nkey of the kind ``prefix`` names (``nkeys.PREFIX_BYTE_OPERATOR``, ...)."""
    return nkeys.from_seed(bytearray(nkeys.encode_seed(os.urandom(32), prefix)))


def public(kp: nkeys.KeyPair) -> str:
    return str(kp.public_key.decode())


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def encode_jwt(issuer: nkeys.KeyPair, subject: str, name: str, nats: dict[str, Any]) -> str:
    """A JWT about ``subject``, signed by ``issuer``."""
    claims: dict[str, Any] = {"iat": int(time.time()), "iss": public(issuer), "name": name, "sub": subject,
                              "nats": {**nats, "version": 2}}
    digest = hashlib.new("sha512_256", json.dumps(claims).encode()).digest()
    claims["jti"] = base64.b32encode(digest).rstrip(b"=").decode()
    signed = f"{_b64(json.dumps(JWT_HEADER).encode())}.{_b64(json.dumps(claims).encode())}"
    return f"{signed}.{_b64(issuer.sign(signed.encode()))}"


@dataclass
class Trust:
    """An operator trusting one account with one user, and where its files are."""

    account: str
    server_config: Path
    creds: Path
    user_seed: bytes

    def creds_for(self, path: Path, user_jwt: str, seed: bytes) -> Path:
        path.write_text(creds_text(user_jwt, seed))
        path.chmod(0o600)
        return path


def creds_text(user_jwt: str, seed: bytes) -> str:
    """A credentials file as ``nsc`` writes it."""
    return (f"-----BEGIN NATS USER JWT-----\n{user_jwt}\n------END NATS USER JWT------\n\n"
            f"-----BEGIN USER NKEY SEED-----\n{seed.decode()}\n------END USER NKEY SEED------\n")


def make_trust(root: Path) -> Trust:
    """Under ``root``: ``server.conf`` for nats-server (operator mode, the account preloaded) and ``user.creds``."""
    root.mkdir(parents=True, exist_ok=True)
    operator = new_keypair(nkeys.PREFIX_BYTE_OPERATOR)
    system = new_keypair(nkeys.PREFIX_BYTE_ACCOUNT)
    account = new_keypair(nkeys.PREFIX_BYTE_ACCOUNT)
    user = new_keypair(nkeys.PREFIX_BYTE_USER)
    operator_jwt = encode_jwt(operator, public(operator), "etl-test-operator",
                              {"type": "operator", "system_account": public(system)})
    # JetStream needs the server's system account.
    system_jwt = encode_jwt(operator, public(system), "SYS", {"type": "account"})
    account_jwt = encode_jwt(operator, public(account), "etl", {"type": "account", "limits": ACCOUNT_LIMITS})
    user_jwt = encode_jwt(account, public(user), "etl-pipeline",
                          {"type": "user", "pub": {}, "sub": {}, "subs": UNLIMITED, "data": UNLIMITED,
                           "payload": UNLIMITED})
    (root / "operator.jwt").write_text(operator_jwt)
    config = root / "server.conf"
    config.write_text(f'operator: "{root / "operator.jwt"}"\nsystem_account: {public(system)}\n'
                      f'resolver: MEMORY\nresolver_preload: {{\n  {public(system)}: "{system_jwt}"\n'
                      f'  {public(account)}: "{account_jwt}"\n}}\n')
    creds = root / "user.creds"
    creds.write_text(creds_text(user_jwt, bytes(user.seed)))
    creds.chmod(0o600)
    return Trust(public(account), config, creds, bytes(user.seed))
