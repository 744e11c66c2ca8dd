"""``etl migrate``: apply every sink's schema before the workers start (each sink also applies it when it opens)."""

from __future__ import annotations

from etl.config import Settings
from etl.stages import SINK_STAGES


def migrate(settings: Settings) -> list[str]:
    """Open and close the sink of each stage that ``migrates``, which applies its schema idempotently. Returns the
    stages migrated. Raises what the sink's ``open`` raises (``SinkUnavailable``, ``SinkDataError``)."""
    done = []
    for stage in SINK_STAGES:
        if stage.migrates:
            sink = stage.sink(settings)
            sink.open()
            sink.close()
            done.append(stage.name)
    return done
