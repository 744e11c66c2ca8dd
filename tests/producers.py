"""Raw events shaped as each AegisFlux producer puts them on ``events.raw`` (see docs/pipeline.md, The event
contract): the ingest's JSON of the protobuf ``Event`` (Go's ``encoding/json``, every field ``omitempty``, metadata
values all strings, the payload bytes as base64), filled by the gRPC sender or by the agents' HTTP path."""

from __future__ import annotations

import base64
from typing import Any

import orjson

Event = dict[str, Any]

# The fields the ingest leaves out when they are empty, and what their absence means.
OMISSIBLE = {"type": "", "source": "", "metadata": {}, "payload": None}

GRPC_ARGS = {"argv": ["/usr/bin/curl", "-s", "https://example.com"], "dst_ip": "203.0.113.10", "ppid": 1}
VISIBILITY_ARGS = {"dst_ip": "198.51.100.4", "dst_port": 22, "protocol": "tcp"}


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def grpc_event(event_id: str = "grpc-1", *, timestamp_ms: int = 1704110400123) -> Event:
    """The gRPC sender's event: host_id, pid, uid, container_id, binary_sha256 and the agent's context flattened
    as ``context_<key>`` (a list as Go prints it), the payload bytes being the base64 text of the JSON args (so
    base64 twice on the wire), Unix milliseconds."""
    return {
        "id": event_id, "type": "process_exec", "source": "/usr/bin/curl", "timestamp": timestamp_ms,
        "metadata": {"host_id": "host-001", "pid": "4242", "uid": "1000", "container_id": "c0ffee",
                     "binary_sha256": "ab" * 32, "context_tags": "[dev web]", "context_kernel": "6.6"},
        "payload": b64(b64(orjson.dumps(GRPC_ARGS)).encode()),
    }


def visibility_event(event_id: str = "vis-1", *, timestamp_ms: int = 1704110400456) -> Event:
    """The agents' HTTP path (visibility.v1): its own metadata, sequence as a string, a single-base64 JSON
    payload."""
    return {
        "id": event_id, "type": "connect", "source": "/usr/sbin/sshd", "timestamp": timestamp_ms,
        "metadata": {"schema_version": "visibility.v1", "tenant_id": "tenant-7", "device_id": "device-9",
                     "agent_id": "agent-3", "sensor_version": "1.4.2", "sequence": "42", "host_id": "host-002",
                     "host_ip": "10.0.0.7"},
        "payload": b64(orjson.dumps(VISIBILITY_ARGS)),
    }


def without(event: Event, *fields: str, event_id: str | None = None) -> Event:
    """``event`` as the ingest sends it when ``fields`` are empty: left out."""
    out = {k: v for k, v in event.items() if k not in fields}
    if event_id is not None:
        out["id"] = event_id
    return out
