"""The size and age limits of a stream the pipeline creates, applied to an existing stream as well.

A stream set up by an earlier version, or by hand, would otherwise keep growing until the server's disk is full.
``StreamLimits`` is what the settings ask for; ``limit_changes`` (pure) says which fields of an existing stream's
config differ from it and ``apply_limits`` updates the stream to match, with one warning naming each change. One
change is held back: lowering ``max_bytes`` below what a stream holds now under the ``old`` discard policy, since
the server would then delete its oldest messages at once. Under ``new`` the server only refuses new messages until
the stream is below the limit again. Units are bytes and seconds; 0 means no limit.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from nats.js import JetStreamContext
from nats.js.api import DiscardPolicy, StreamConfig, StreamInfo

log = logging.getLogger(__name__)

NO_LIMIT_BYTES = -1  # JetStream's value for "no max_bytes"
AGE_TOLERANCE_S = 0.001  # max_age goes through nanoseconds on the wire
# JetStream's duplicate window when a stream sets none. The server refuses a window longer than max_age, so a
# shorter max_age brings the window down with it (ids are then deduplicated for max_age only).
DEFAULT_DUPLICATE_WINDOW_S = 120.0


@dataclass(frozen=True)
class StreamLimits:
    max_bytes: int  # 0: no limit
    max_age_s: float  # 0: no limit
    discard: DiscardPolicy

    def config_fields(self) -> dict[str, Any]:
        """The ``StreamConfig`` fields for these limits."""
        fields: dict[str, Any] = {"max_bytes": self.max_bytes or NO_LIMIT_BYTES, "max_age": float(self.max_age_s),
                                  "discard": self.discard}
        if 0 < self.max_age_s < DEFAULT_DUPLICATE_WINDOW_S:
            fields["duplicate_window"] = float(self.max_age_s)
        return fields


def limit_changes(have: StreamConfig, held_bytes: int, want: StreamLimits) -> tuple[dict[str, Any], str | None]:
    """The ``StreamConfig`` fields to change so that a stream configured as ``have`` and holding ``held_bytes``
    has the limits ``want``, and why a change was held back (or ``None``)."""
    wanted = want.config_fields()
    changes: dict[str, Any] = {}
    held_back = None
    have_bytes = have.max_bytes if have.max_bytes and have.max_bytes > 0 else NO_LIMIT_BYTES
    if have_bytes != wanted["max_bytes"]:
        shrinks_below_content = wanted["max_bytes"] != NO_LIMIT_BYTES and held_bytes > wanted["max_bytes"]
        if shrinks_below_content and want.discard == DiscardPolicy.OLD:
            held_back = (f"max_bytes stays {have_bytes}: the stream holds {held_bytes} bytes, and "
                         f"{wanted['max_bytes']} would delete its oldest messages")
        else:
            changes["max_bytes"] = wanted["max_bytes"]
    if abs((have.max_age or 0.0) - wanted["max_age"]) > AGE_TOLERANCE_S:
        changes["max_age"] = wanted["max_age"]
    window = wanted.get("duplicate_window")
    if window is not None and (have.duplicate_window or DEFAULT_DUPLICATE_WINDOW_S) > window + AGE_TOLERANCE_S:
        changes["duplicate_window"] = window
    if (have.discard or DiscardPolicy.OLD) != want.discard:
        changes["discard"] = want.discard
    return changes, held_back


async def apply_limits(js: JetStreamContext, info: StreamInfo, want: StreamLimits) -> StreamInfo:
    """Update the stream of ``info`` to the limits ``want`` where it differs. Raises like ``js.update_stream``."""
    changes, held_back = limit_changes(info.config, info.state.bytes or 0, want)
    if held_back:
        log.warning("NATS stream %s: %s", info.config.name, held_back)
    if not changes:
        return info
    log.warning("NATS stream %s had %s; updating it to %s, as the settings ask", info.config.name,
                _text({name: getattr(info.config, name) for name in changes}), _text(changes))
    return await js.update_stream(info.config.evolve(**changes))


def _text(fields: dict[str, Any]) -> str:
    return ", ".join(f"{name}={getattr(value, 'value', value)}" for name, value in fields.items())
