"""Every place that names stages derives from ``etl.stages``."""

from __future__ import annotations

import click
import pytest

from etl import cli
from etl.config import Settings
from etl.middleware.circuit_breaker import SINK_QUEUES
from etl.ops import dlq_commands, status
from etl.ops.replay import plan
from etl.pipeline.dlq import DeadLetter
from etl.pools import dramatiq_command
from etl.sinks.registry import sink_factories
from etl.stages import ENRICH, NAMES, SINK_NAMES, SINK_STAGES, STAGES, SinkStage, stage


def test_names_queues_and_actors_are_unique_and_each_queue_is_named_after_its_stage() -> None:
    assert len(set(NAMES)) == len(STAGES) and len({s.actor for s in STAGES}) == len(STAGES)
    assert all(s.queue == s.name for s in STAGES)
    assert STAGES[0] is ENRICH and not isinstance(ENRICH, SinkStage), "enrich comes first, fans out to the sinks"
    assert all(isinstance(s, SinkStage) for s in STAGES[1:])
    assert SINK_NAMES == tuple(s.name for s in STAGES[1:])


def test_unknown_stage_names_are_refused_with_the_known_ones() -> None:
    assert stage("graph").actor == "merge_batch"
    with pytest.raises(ValueError, match="enrich, publish, timescale, graph"):
        stage("nope")


def test_sinks_breakers_and_status_derive_from_the_declaration() -> None:
    assert tuple(sink_factories(Settings.from_env({}))) == SINK_NAMES
    assert SINK_QUEUES == tuple(s.queue for s in SINK_STAGES)
    assert status.STAGES == ("received", "published", "stored", "merged", "dead_lettered")
    assert {s.server for s in SINK_STAGES} == {"nats", "postgresql", "graph"}, "status names failures by server"


def test_replay_accepts_every_stage() -> None:
    letters = [DeadLetter.for_raw("enrich", "r", b"1"), *(DeadLetter(name, "r", {"id": name}) for name in SINK_NAMES)]
    assert sorted(b.stage for b in plan(letters, batch_size=10)) == sorted(NAMES)


def test_the_cli_offers_every_stage() -> None:
    def choices(command: click.Command, option: str) -> list[str]:
        [param] = [p for p in command.params if p.name == option]
        assert isinstance(param.type, click.Choice)
        return list(param.type.choices)

    assert choices(cli.health, "pool") == ["bridge", *NAMES]
    assert choices(dlq_commands.dlq_replay, "stage") == list(NAMES) == choices(dlq_commands.dlq_list, "stage")


@pytest.mark.parametrize("name", NAMES)
def test_each_stage_has_a_pool_on_its_own_queue(name: str) -> None:
    argv, _ = dramatiq_command(name, {})
    assert argv[argv.index("--queues") + 1] == stage(name).queue
