"""Events shaped as AegisFlux's producers put them on ``events.raw`` (docs/pipeline.md, The event contract), for
the local default and the benchmarks: deterministic for a seed.

- The ingest's gRPC sender (``GRPC_SHARE`` of the events): metadata values all strings (``host_id``, ``pid``,
  ``uid``, ``container_id`` when the process runs in one, ``binary_sha256``, and the agent's context flattened as
  ``context_<key>``, a list as Go prints it), the payload bytes being the base64 text of the JSON args (so base64
  twice on the wire), a Unix-millisecond timestamp, a UUID id.
- The agents' HTTP path (visibility.v1): its own metadata (``schema_version``, ``tenant_id``, ``device_id``,
  ``agent_id``, ``sensor_version``, ``sequence`` as a string) with ``host_ip``, ``user`` and a numeric ``pid``,
  a single-base64 JSON payload, an ISO-8601 timestamp.

Each host has a bounded set of processes, users and containers, so the graph's context nodes repeat as they do in
production; about a third of the events are network connections (``dst_ip``, ``dst_port``, ``protocol``) to a
bounded set of endpoints, and a quarter of the process starts fetch a URL from a bounded set of names. One host in
``COMPROMISED_EVERY`` runs ``DROPPER`` among its processes, always the same file, so its hash is one a feed can
name: the local default's sample feeds (``etl.dev.samples``) list it, a few endpoints and a few of the names, so a
run shows matches while most events match nothing. Every event's instant is ``base_ms`` plus its sequence number,
in either format.
"""

from __future__ import annotations

import base64
import dataclasses
import random
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson

from etl.dev.generator import BINARIES, FILES, USERS, Host

GRPC_SHARE = 0.7
PROCESSES_PER_HOST = 40
PAYLOADS_PER_KIND = 256  # args encoded once per generator, then picked: encoding per event would bound the rate
ENDPOINTS = tuple(f"{net}.{last}" for net in ("203.0.113", "198.51.100") for last in range(1, 41))
# Names a process start fetches from (reserved for examples, RFC 2606 and RFC 6761), with the share that does.
FETCHED_DOMAINS = ("deb.example.org", "pypi.example.org", "registry.example.com", "api.example.net",
                   "cdn.example.com", "updates.example.net", "dl.badcdn.example", "c2.tunnel.example")
FETCH_SHARE = 0.25
COMPROMISED_EVERY = 4  # hosts 1, 5, 9... run the dropper
DROPPER = "/tmp/.cache/kworkerd"
DROPPER_SHA256 = "5f1c2ab4e0d87d55a1d86c2b93f4e7a1c0b9d2e3f4a5b6c7d8e9f00112233445"
PORTS = (22, 53, 80, 443, 5432, 6379, 8080)
GRPC_KINDS = ("process_exec", "file_open", "net_connect")
VISIBILITY_KINDS = ("process", "file", "connect")
NETWORK_KINDS = frozenset({"net_connect", "connect"})
CONTEXT_TAGS = ("[dev web]", "[prod db]", "[prod web edge]", "[ci]")
KERNELS = ("6.1.0-18-amd64", "6.6.8", "5.15.0-91-generic")
SENSOR_VERSIONS = ("1.4.2", "1.5.0")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

Event = dict[str, Any]


@dataclass(frozen=True)
class Process:
    pid: int
    binary: str
    sha256: str
    user: str
    uid: str
    container_id: str | None


@dataclass(frozen=True)
class Agent:
    """One host's agent: what every event it sends carries."""

    host: Host
    tenant_id: str
    device_id: str
    agent_id: str
    sensor_version: str
    tags: str
    kernel: str
    processes: tuple[Process, ...]


def make_agents(hosts: list[Host], rng: random.Random) -> list[Agent]:
    agents = []
    for i, host in enumerate(hosts):
        processes = tuple(
            Process(rng.randint(100, 65000), binary, f"{rng.getrandbits(256):064x}", *rng.choice(USERS),
                    rng.choice(host.containers) if host.containers and rng.random() < 0.6 else None)
            for binary in rng.choices(BINARIES, k=PROCESSES_PER_HOST))
        if i % COMPROMISED_EVERY == 0:  # the last process becomes the dropper: no more random draws
            processes = (*processes[:-1], dataclasses.replace(processes[-1], binary=DROPPER, sha256=DROPPER_SHA256))
        agents.append(Agent(host, f"tenant-{i % 3}", f"device-{rng.getrandbits(32):08x}", f"agent-{i:03d}",
                            rng.choice(SENSOR_VERSIONS), rng.choice(CONTEXT_TAGS), rng.choice(KERNELS), processes))
    return agents


def _args(kind: str, rng: random.Random) -> dict[str, Any]:
    if kind in NETWORK_KINDS:
        return {"dst_ip": rng.choice(ENDPOINTS), "dst_port": rng.choice(PORTS), "protocol": rng.choice(("tcp", "udp")),
                "src_port": rng.randint(32768, 60999)}
    if kind in ("file_open", "file"):
        return {"path": rng.choice(FILES), "flags": rng.choice(("O_RDONLY", "O_WRONLY|O_CREAT", "O_RDWR"))}
    if rng.random() < FETCH_SHARE:
        argv = ["/usr/bin/curl", "-fsSL", f"https://{rng.choice(FETCHED_DOMAINS)}/v{rng.randint(1, 9)}/install"]
    else:
        argv = [rng.choice(BINARIES), "-c", f"job-{rng.randint(1, 500)}"]
    return {"argv": argv, "ppid": rng.randint(1, 5000), "cwd": rng.choice(("/", "/srv/app", "/home/alice"))}


class Payloads:
    """Each kind's payloads, encoded once: ``PAYLOADS_PER_KIND`` args per kind, base64 twice for the gRPC sender
    and once for the HTTP path."""

    def __init__(self, rng: random.Random) -> None:
        def encoded(kind: str, times: int) -> tuple[str, ...]:
            out = []
            for _ in range(PAYLOADS_PER_KIND):
                data = orjson.dumps(_args(kind, rng))
                for _ in range(times):
                    data = base64.b64encode(data)
                out.append(data.decode())
            return tuple(out)

        self.by_kind = {**{k: encoded(k, 2) for k in GRPC_KINDS}, **{k: encoded(k, 1) for k in VISIBILITY_KINDS}}


def iso(ms: int) -> str:
    """``ms`` as ISO 8601 in UTC with milliseconds, as an agent's clock writes it: ``2024-01-01T12:00:00.123Z``."""
    when = _EPOCH + timedelta(milliseconds=ms)
    return when.strftime("%Y-%m-%dT%H:%M:%S.") + f"{when.microsecond // 1000:03d}Z"


def grpc_event(agent: Agent, payloads: Payloads, rng: random.Random, timestamp_ms: int) -> Event:
    kind = rng.choice(GRPC_KINDS)
    process = rng.choice(agent.processes)
    metadata = {"host_id": agent.host.host_id, "pid": str(process.pid), "uid": process.uid,
                "binary_sha256": process.sha256, "context_tags": agent.tags, "context_kernel": agent.kernel}
    if process.container_id is not None:
        metadata["container_id"] = process.container_id
    return {"id": str(uuid.UUID(int=rng.getrandbits(128), version=4)), "type": kind, "source": process.binary,
            "timestamp": timestamp_ms, "metadata": metadata, "payload": rng.choice(payloads.by_kind[kind])}


def visibility_event(agent: Agent, payloads: Payloads, rng: random.Random, timestamp_ms: int, seq: int) -> Event:
    kind = rng.choice(VISIBILITY_KINDS)
    process = rng.choice(agent.processes)
    metadata: dict[str, Any] = {
        "schema_version": "visibility.v1", "tenant_id": agent.tenant_id, "device_id": agent.device_id,
        "agent_id": agent.agent_id, "sensor_version": agent.sensor_version, "sequence": str(seq),
        "host_id": agent.host.host_id, "host_ip": agent.host.ip, "pid": process.pid, "user": process.user}
    return {"id": f"{agent.agent_id}-{timestamp_ms}", "type": kind, "source": process.binary,
            "timestamp": iso(timestamp_ms), "metadata": metadata, "payload": rng.choice(payloads.by_kind[kind])}


def producer_event(seq: int, agent: Agent, payloads: Payloads, rng: random.Random, base_ms: int) -> Event:
    """The event numbered ``seq``: the gRPC sender's with probability ``GRPC_SHARE``, else the HTTP path's; its
    instant is ``base_ms + seq`` milliseconds."""
    if rng.random() < GRPC_SHARE:
        return grpc_event(agent, payloads, rng, base_ms + seq)
    return visibility_event(agent, payloads, rng, base_ms + seq, seq)
