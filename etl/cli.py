"""``etl``: the operator's way in. Settings come from the environment, parsed once here."""

from __future__ import annotations

import json
import os
from pathlib import Path

import click

from etl.config import Settings
from etl.errors import ConfigError


def load_settings() -> Settings:
    try:
        return Settings.from_env(os.environ)
    except ConfigError as e:
        raise click.exceptions.Exit(_fail(str(e))) from None


def _fail(message: str) -> int:
    click.echo(f"configuration error: {message}", err=True)
    return 2


@click.group()
def main() -> None:
    """Security event enrichment pipeline."""


@main.command()
def config() -> None:
    """Print the effective configuration, secrets redacted."""
    click.echo(json.dumps(load_settings().redacted(), indent=2))


@main.command()
def migrate() -> None:
    """Apply the TimescaleDB schema and the graph constraints (idempotent)."""
    from etl.devstack import migrate as apply

    apply(load_settings())
    click.echo("schema applied")


@main.command(name="report")
def report_cmd() -> None:
    """Print what reached each sink, as JSON."""
    from etl import report

    click.echo(json.dumps(report.collect(load_settings()).as_dict(), indent=2))


@main.command()
@click.option("--data-dir", type=click.Path(path_type=Path), default=Path(".etl-dev"), show_default=True,
              help="Where the local servers keep their data.")
@click.option("--clean", is_flag=True, help="Start over: delete the data directory first.")
@click.option("--count", type=click.IntRange(min=0), default=2000, show_default=True,
              help="Sample events to generate.")
@click.option("--rate", type=click.FloatRange(min=0), default=0.0, show_default=True,
              help="Events per second (0: as fast as possible).")
@click.option("--hosts", type=click.IntRange(min=1), default=10, show_default=True, help="Distinct sample hosts.")
@click.option("--no-generate", is_flag=True, help="Generate nothing; wait for events from outside.")
@click.option("--once", is_flag=True, help="Exit when the generated events are all accounted for.")
def dev(data_dir: Path, clean: bool, count: int, rate: float, hosts: int, no_generate: bool, once: bool) -> None:
    """Run the whole pipeline locally, with its own NATS, Redis, PostgreSQL and FalkorDB."""
    from etl.devstack import DevOptions, run_dev

    options = DevOptions(data_dir=data_dir.resolve(), clean=clean, count=count, rate=rate, hosts=hosts,
                         generate=not no_generate, once=once)
    raise SystemExit(run_dev(options, lambda line: click.echo(line)))


@main.group()
def dlq() -> None:
    """Inspect the dead-letter queue."""


def _store():  # type: ignore[no-untyped-def]
    from etl.broker import redis_client
    from etl.dlq import DeadLetterStore

    settings = load_settings()
    return DeadLetterStore(redis_client(settings), retention_s=settings.dlq_retention_days * 86_400)


@dlq.command(name="list")
@click.option("--stage", help="Only this stage (enrich, publish, timescale, graph).")
@click.option("--limit", type=click.IntRange(min=1), default=50, show_default=True)
def dlq_list(stage: str | None, limit: int) -> None:
    """The newest dead letters first: id, stage, attempts, reason."""
    for letter in _store().list(stage=stage, limit=limit):
        click.echo(f"{letter.id}  {letter.stage:<9}  attempts={letter.attempts}  {letter.reason}")


@dlq.command(name="show")
@click.argument("entry_id")
def dlq_show(entry_id: str) -> None:
    """One dead letter in full, as JSON."""
    from dataclasses import asdict

    letter = _store().get(entry_id)
    if letter is None:
        raise click.ClickException(f"no dead letter {entry_id}")
    click.echo(json.dumps(asdict(letter), indent=2, default=str))


if __name__ == "__main__":
    main()
