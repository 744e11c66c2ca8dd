"""The simple shape of sample events, plus a few malformed ones; the hosts and values the producers' shape
(``etl.dev.producers``) shares. ``etl.dev.corpus`` chooses between the two.

Deterministic for a given seed: typed ``process``, ``connect`` and ``file`` events from a set of hosts, each
with its users, processes and containers, and base64 JSON payloads, all in one flat shape.
"""

from __future__ import annotations

import base64
import random
from collections.abc import Iterator
from dataclasses import dataclass

import orjson

BINARIES = ("/usr/bin/bash", "/usr/bin/curl", "/usr/bin/psql", "/usr/sbin/sshd", "/usr/bin/python3",
            "/usr/local/bin/node", "/usr/bin/nginx")
USERS = (("root", "0"), ("alice", "1001"), ("bob", "1002"), ("deploy", "1500"), ("www-data", "33"))
FILES = ("/etc/passwd", "/etc/shadow", "/var/log/auth.log", "/home/alice/.ssh/id_rsa", "/tmp/x.sh")
# Each carries base_ms + its sequence number, so every malformed event is distinct (and so is its dead letter).
MALFORMED = (
    "this is not json #{seq}",
    '{{"id": "truncated-{seq}", "type": "conn',
    '["an", "array", {seq}]',
    '{{"id": "", "type": "process", "source": "/bin/sh", "timestamp": {seq}}}',
    '{{"id": "bad-ts-{seq}", "type": "process", "source": "/bin/sh", "timestamp": "yesterday"}}',
    '{{"id": "null-source-{seq}", "type": "file", "source": null, "timestamp": 1704110400000}}',
    "\udcff\udcfe invalid utf-8 #{seq}",
)


@dataclass(frozen=True)
class Host:
    host_id: str
    ip: str
    hostname: str
    containers: tuple[str, ...]


def make_hosts(count: int, rng: random.Random) -> list[Host]:
    return [
        Host(f"host-{i:03d}", f"10.{i // 250}.{i % 250}.{rng.randint(2, 254)}", f"node{i:03d}.prod.example.com",
             tuple(f"{rng.getrandbits(48):012x}" for _ in range(rng.randint(0, 3))))
        for i in range(1, count + 1)
    ]


def _b64(obj: object) -> str:
    return base64.b64encode(orjson.dumps(obj)).decode()


def _payload(kind: str, rng: random.Random) -> dict[str, object]:
    if kind == "connect":
        return {"dst_ip": f"203.0.113.{rng.randint(1, 254)}", "dst_port": rng.choice((22, 80, 443, 5432)),
                "protocol": "tcp"}
    if kind == "file":
        return {"path": rng.choice(FILES), "op": rng.choice(("open", "write", "unlink"))}
    return {"argv": [rng.choice(BINARIES), "-c", "true"], "ppid": rng.randint(1, 5000)}


def sample_event(seq: int, host: Host, rng: random.Random, base_ms: int) -> dict[str, object]:
    kind = rng.choice(("process", "connect", "file"))
    user, uid = rng.choice(USERS)
    metadata = {"host_id": host.host_id, "host_ip": host.ip, "hostname": host.hostname,
                "pid": str(rng.randint(100, 65000)), "uid": uid, "user": user,
                "binary_sha256": f"{rng.getrandbits(256):064x}"}
    if host.containers:
        metadata["container_id"] = rng.choice(host.containers)
    return {"id": f"event-{base_ms // 1000}-{seq}", "type": kind, "source": rng.choice(BINARIES),
            "timestamp": base_ms + seq, "metadata": metadata, "payload": _b64(_payload(kind, rng))}


def malformed_event(seq: int, malformed_every: int, base_ms: int) -> bytes:
    """The malformed event at position ``seq``: each of ``MALFORMED`` in turn, distinct by ``base_ms + seq``."""
    template = MALFORMED[(seq // malformed_every) % len(MALFORMED)]
    return template.format(seq=base_ms + seq).encode("utf-8", "surrogateescape")


def generate(count: int, *, hosts: int = 10, seed: int = 1, base_ms: int = 1_704_110_400_000,
             malformed_every: int = 0) -> Iterator[bytes]:
    """``count`` raw events; when ``malformed_every`` > 0, every n-th is malformed instead."""
    rng = random.Random(seed)
    host_list = make_hosts(hosts, rng)
    for seq in range(count):
        if malformed_every and seq % malformed_every == malformed_every - 1:
            yield malformed_event(seq, malformed_every, base_ms)
        else:
            yield orjson.dumps(sample_event(seq, rng.choice(host_list), rng, base_ms))


def generate_hot(count: int, *, seed: int = 1, base_ms: int = 1_704_110_400_000, hosts: int = 3, users: int = 2,
                 containers: int = 5) -> Iterator[bytes]:
    """``count`` valid raw events that all come from ``hosts`` hosts, ``users`` users and ``containers``
    containers: every batch touches the same few hub nodes, the worst case for concurrent graph writers."""
    rng = random.Random(seed)
    host_list = make_hosts(hosts, rng)
    container_ids = [f"{rng.getrandbits(48):012x}" for _ in range(containers)]
    for seq in range(count):
        event = sample_event(seq, rng.choice(host_list), rng, base_ms)
        user, uid = rng.choice(USERS[:users])
        event["metadata"].update(user=user, uid=uid, container_id=rng.choice(container_ids))  # type: ignore[attr-defined]
        yield orjson.dumps(event)
