"""``etl``: the operator's way in. Settings come from the environment, parsed once here."""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path

import click

from etl import config as settings_module
from etl import stages
from etl.config import Settings
from etl.dev import neo4jserver
from etl.dev.corpus import SHAPES
from etl.dev.services import GRAPH_BACKENDS, NEO4J
from etl.envvalues import redact_url
from etl.errors import EXIT_CONFIG, EXIT_FAILURE, EXIT_OK
from etl.ops.dlq_commands import dlq
from etl.ops.failures import EXIT_CODES_HELP, failure_of
from etl.version import installed_version


def load_settings() -> Settings:
    return settings_module.load_settings(os.environ)


class Commands(click.Group):
    """The command group: any command that a server fails (unreachable, a password refused, a table missing) or a
    setting fails ends with one line on stderr and its exit code (``etl.ops.failures``), not a traceback."""

    def invoke(self, ctx: click.Context) -> object:
        try:
            return super().invoke(ctx)
        except Exception as e:
            failure = failure_of(e, lambda: redact_url(load_settings().redis_url))
            if failure is None:
                raise
            click.echo(failure.message, err=True)
            ctx.exit(failure.exit_code)


@click.group(cls=Commands, epilog=EXIT_CODES_HELP)
@click.version_option(installed_version(), prog_name="etl")
def main() -> None:
    """Security event enrichment pipeline."""
    # What a command logs on its way (a sink's fallback) shows before its output or its failure line, marked so.
    logging.basicConfig(format="%(levelname)s: %(message)s")


@main.command()
def config() -> None:
    """Print the effective configuration, secrets redacted."""
    click.echo(json.dumps(load_settings().redacted(), indent=2))


@main.command()
def migrate() -> None:
    """Apply the TimescaleDB schema and the graph constraints (idempotent)."""
    from etl.sinks.migrate import migrate as apply

    apply(load_settings())
    click.echo("schema applied")


@main.command()
@click.option("--pool", required=True, type=click.Choice(["bridge", *stages.NAMES]),
              help="Which local process to check.")
def health(pool: str) -> None:
    """Exit 0 when the local bridge or worker pool is healthy, 1 with the reason when not (for healthchecks)."""
    from etl.broker import redis_client
    from etl.ops.health import probe_process

    settings = load_settings()
    client = redis_client(settings)
    try:
        reason = probe_process(pool, health_port=settings.health_port, metrics_port=settings.metrics_port,
                               redis_ping=client.ping)
    finally:
        client.close()
    if reason is not None:
        click.echo(f"{pool}: unhealthy: {reason}", err=True)
        raise SystemExit(EXIT_FAILURE)
    click.echo(f"{pool}: healthy")


@main.command(name="report")
def report_cmd() -> None:
    """Print what reached each sink, as JSON."""
    from etl.ops import report

    click.echo(json.dumps(report.collect(load_settings()).as_dict(), indent=2))


@main.command()
@click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path), default=Path(".etl-dev"),
              show_default=True, help="Where the local servers keep their data; a restart resumes from it.")
@click.option("--clean", is_flag=True, help="Start over: empty the data directory first.")
@click.option("--count", type=click.IntRange(min=0), default=2000, show_default=True,
              help="Sample events to generate (one in 200 malformed, at least one).")
@click.option("--rate", type=click.FloatRange(min=0), default=0.0, show_default=True,
              help="Events per second (0: as fast as JetStream takes them).")
@click.option("--hosts", type=click.IntRange(min=1), default=10, show_default=True, help="Distinct sample hosts.")
@click.option("--shape", type=click.Choice(SHAPES), default=SHAPES[0], show_default=True,
              help="The sample events' shape: as the producers send them (one in 100 sent twice), or one simple shape.")
@click.option("--no-generate", is_flag=True, help="Generate nothing; wait for events from outside.")
@click.option("--once", is_flag=True, help="Stop when the generated events are all accounted for.")
@click.option("--nats-port", type=click.IntRange(0, 65535), default=0, help="NATS client port (0: a free one).")
@click.option("--redis-port", type=click.IntRange(0, 65535), default=0,
              help="Redis port, for the queues and dead letters (0: a free one).")
@click.option("--graph", type=click.Choice(GRAPH_BACKENDS), default=GRAPH_BACKENDS[0], show_default=True,
              help="The graph server. Neo4j needs Java 17 or 21 and Maven; its first start has Maven download it.")
@click.option("--falkordb-port", type=click.IntRange(0, 65535), default=0,
              help="FalkorDB port, with --graph falkordb (0: a free one).")
@click.option("--neo4j-port", type=click.IntRange(0, 65535), default=0,
              help="Neo4j's Bolt port, with --graph neo4j (0: a free one).")
@click.option("--postgres-port", type=click.IntRange(0, 65535), default=0, help="PostgreSQL port (0: a free one).")
@click.option("--bridge-health-port", type=click.IntRange(0, 65535), default=0,
              help="The bridge's /healthz, /readyz and /metrics port (0: a free one).")
@click.option("--metrics-port-base", type=click.IntRange(0, 65536 - len(stages.NAMES)), default=0,
              help=f"The worker pools' /metrics ports: this one and the next ones, one per pool in the order "
                   f"{', '.join(stages.NAMES)} (0: free ones).")
@click.option("--drain-timeout", type=click.FloatRange(min=0), default=30.0, show_default=True,
              help="On stop, seconds to wait for the queues to drain (what is left is processed on the next start).")
def dev(data_dir: Path, clean: bool, count: int, rate: float, hosts: int, shape: str, no_generate: bool, once: bool,
        nats_port: int, redis_port: int, graph: str, falkordb_port: int, neo4j_port: int, postgres_port: int,
        bridge_health_port: int, metrics_port_base: int, drain_timeout: float) -> None:
    """Run the whole pipeline locally: its own NATS, Redis, PostgreSQL and graph server (FalkorDB, or Neo4j with
    --graph neo4j), the bridge, one worker per pool and a sample-event generator, with progress until Ctrl-C and a
    summary on exit. Exit code 2 when Neo4j is asked for and Java or Maven is missing."""
    import shutil

    from etl.dev.ports import PortFlags
    from etl.dev.stack import DevOptions, run_dev

    if graph == NEO4J:
        _require_neo4j_toolchain()
    ports = PortFlags(nats=nats_port, redis=redis_port, falkordb=falkordb_port, neo4j=neo4j_port,
                      postgres=postgres_port, bridge_health=bridge_health_port, metrics_base=metrics_port_base)
    options = DevOptions(data_dir=data_dir.resolve(), clean=clean, count=count, rate=rate, hosts=hosts, shape=shape,
                         generate=not no_generate, once=once, ports=ports, graph_backend=graph,
                         drain_timeout_s=drain_timeout)
    size = shutil.get_terminal_size()
    raise SystemExit(run_dev(options, click.echo, terminal=sys.stdout.isatty(),
                             width=size.columns, height=size.lines))


def _require_neo4j_toolchain() -> None:
    """Before anything starts: where Java or Maven is missing, end with one line on stderr saying what to install,
    and exit code ``EXIT_CONFIG``: like a bad setting, nothing started."""
    try:
        neo4jserver.toolchain()
    except neo4jserver.JavaMissing as e:
        click.echo(f"error: {e}", err=True)
        raise SystemExit(EXIT_CONFIG) from None


@main.command(name="status")
@click.option("--interval", type=click.FloatRange(min=0.1), default=2.0, show_default=True,
              help="Seconds between readings; rates are measured over it.")
@click.option("--once", is_flag=True, help="Print one reading, with rates over --interval, and exit.")
@click.option("--json", "as_json", is_flag=True,
              help="JSON instead of the table (with --once one object, else one line per reading).")
@click.option("--metrics-url", "metrics_urls", multiple=True, metavar="URL",
              help="A process's /metrics page, for breaker states and 'bridge paused' (repeatable). "
                   "Default: STATUS_METRICS_URLS, comma-separated.")
def status_cmd(interval: float, once: bool, as_json: bool, metrics_urls: tuple[str, ...]) -> None:
    """Totals and rates of each stage, JetStream lag, queues, dead letters, breakers; refreshed until Ctrl-C.

    With --once, exit code 1 when a server could not be read (its fields are null). Metrics that do not answer
    only make their fields unknown.
    """
    from etl.ops import status

    settings = load_settings()
    # The view names every source it cannot read; drivers' log lines would only tear the screen.
    logging.disable(logging.CRITICAL)
    try:
        urls = tuple(map(status.check_url, metrics_urls)) or settings.status_metrics_urls
    except ValueError as e:
        raise click.UsageError(str(e)) from None
    if once:
        snapshot, rates, matches = status.measure(settings, urls, interval)
        click.echo(status.to_json(snapshot, rates, indent=2, matches=matches) if as_json
                   else status.render(snapshot, rates, settings, matches=matches))
        raise SystemExit(EXIT_FAILURE if snapshot.errors else EXIT_OK)
    terminal = sys.stdout.isatty()
    try:
        status.watch(settings, urls, interval, click.echo, as_json=as_json, clear=terminal)
    except KeyboardInterrupt:
        click.echo("")  # leave the prompt below the last frame; Ctrl-C is the normal way out: exit 0


main.add_command(dlq)


if __name__ == "__main__":
    main()
