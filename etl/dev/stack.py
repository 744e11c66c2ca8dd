"""The local default: the whole pipeline on one machine, from pip packages, with a sample-event generator.

Servers (NATS with JetStream, Redis with AOF, PostgreSQL, and a graph server: FalkorDB with AOF, or on request
Neo4j, which Maven fetches) keep their data under one directory, so a restart resumes where it left off, and so do
the sample lookup files the enrich pool reads (``etl.dev.samples``). The bridge and one worker per pool run as
child processes, exactly as in production. Stopping (Ctrl-C, SIGTERM,
SIGHUP, or ``once`` when the generated events are all accounted for) goes in order: generator, bridge, queues
drained (bounded), workers, servers; then the summary. Later signals only hurry the shutdown along. Whatever is
left in Redis or JetStream is not lost: it is processed on the next start.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

from redis.exceptions import RedisError

from etl.config import Settings
from etl.dev import servers as devservers
from etl.dev.corpus import PRODUCERS
from etl.dev.ports import BRIDGE, Endpoints, PortFlags, describe
from etl.dev.progress import Progress, Sent, idle, summary, unaccounted
from etl.dev.publish import Generator
from etl.dev.samples import write_samples
from etl.dev.services import FALKORDB, HURRIED_STOP_TIMEOUT_S, Servers
from etl.dev.session import StopSignals, locked_data_dir, reap_children, surviving_hangup
from etl.dev.supervisor import Pipeline
from etl.errors import EtlError
from etl.ops import report, status
from etl.ops.lookup_status import Lookups
from etl.sinks.migrate import migrate
from etl.stages import NAMES

PROGRESS_INTERVAL_S = 1.0
DEFAULT_DRAIN_TIMEOUT_S = 30.0
DRAIN_REPORT_EVERY_S = 2.0
ONCE_STALL_TIMEOUT_S = 120.0  # --once gives up when nothing moved for this long
PROCESS_START_TIMEOUT_S = 60.0
BRIDGE_STOP_TIMEOUT_S = 15.0
WORKER_STOP_TIMEOUT_S = 30.0
POLL_S = 0.1

Say = Callable[[str], None]


@dataclass(frozen=True)
class DevOptions:
    data_dir: Path
    clean: bool = False
    count: int = 2000
    rate: float = 0.0
    hosts: int = 10
    shape: str = PRODUCERS  # one of etl.dev.corpus.SHAPES
    generate: bool = True
    once: bool = False
    ports: PortFlags = field(default_factory=PortFlags)
    graph_backend: str = FALKORDB  # one of etl.dev.services.GRAPH_BACKENDS
    drain_timeout_s: float = DEFAULT_DRAIN_TIMEOUT_S


class Stack:
    """One running local stack: servers, bridge, worker pools and generator, started and stopped in order."""

    def __init__(self, options: DevOptions, say: Say, progress: Progress) -> None:
        self.options, self.say, self.progress = options, say, progress
        self.servers: Servers | None = None
        self.settings: Settings | None = None
        self.workers: Pipeline | None = None
        self.bridge: Pipeline | None = None
        self.generator: Generator | None = None
        self.baseline: status.Snapshot | None = None
        self.metrics_urls: list[str] = []
        self._said_hurry = False

    def start(self) -> None:
        """Start everything; raises ``devservers.ServerError`` or an ``EtlError`` (``PortError`` among them)."""
        options, pools = self.options, NAMES
        options.ports.check(pools)
        env = {**self._start_servers(), **self._sample_lookups()}
        self.settings = settings = Settings.from_env({**os.environ, **env})
        ports = options.ports.process_ports(pools)
        self.say(describe(self._endpoints(env, ports)))
        migrate(settings)
        self.baseline = status.collect(settings)  # before any process runs: this run's events count from here
        self._start_pipeline({**env, "HEALTH_HOST": "127.0.0.1"}, ports)
        if options.generate and options.count:
            self.generator = Generator(settings, count=options.count, hosts=options.hosts, rate=options.rate,
                                       shape=options.shape)
            self.generator.start()
        else:
            self.say(f"not generating: waiting for events published to {settings.nats_subject_raw} on "
                     f"{env['NATS_URL']}")

    def _start_servers(self) -> dict[str, str]:
        """Start the four servers; returns the environment that points the pipeline at them. Raises
        ``devservers.ServerError`` (``neo4jserver.JavaMissing`` for Neo4j without Java or Maven)."""
        self.servers = Servers.create(self.options.data_dir, self.options.ports, self.options.graph_backend)
        self.servers.start(self.say)
        return self.servers.env()

    def _sample_lookups(self) -> dict[str, str]:
        """Write the sample lookup files that are missing; returns the settings that name them all."""
        files, written = write_samples(self.options.data_dir)
        if written:
            self.say(f"wrote {len(written)} sample lookup files under {files.intel_dir.parent}")
        return files.env()

    def _endpoints(self, env: dict[str, str], ports: dict[str, int]) -> Endpoints:
        assert self.servers is not None and self.settings is not None
        servers, settings = self.servers, self.settings
        ends = Endpoints(data_dir=self.options.data_dir, env=env, nats_port=servers.nats.port,
                         nats_monitor_port=servers.nats.monitor_port,  # type: ignore[attr-defined]
                         redis_port=servers.redis.port, graph_backend=servers.graph_backend,
                         graph_port=servers.graph.port, postgres_port=servers.postgres.port, process_ports=ports,
                         graph_name=settings.graph_name, raw_subject=settings.nats_subject_raw,
                         pg_table=settings.pg_table)
        self.metrics_urls = ends.metrics_urls
        return ends

    def _start_pipeline(self, env: dict[str, str], ports: dict[str, int]) -> None:
        """Start the worker pools, then the bridge, and wait until each serves its metrics. Raises ``EtlError``
        with the log's tail when a process exits, or does not answer within ``PROCESS_START_TIMEOUT_S``."""
        logs = self.options.data_dir / "logs"
        self.workers = Pipeline(env, logs, pools=NAMES, bridges=0,
                                ports={n: p for n, p in ports.items() if n != BRIDGE})
        self.bridge = Pipeline(env, logs, pools=(), bridges=1, ports={BRIDGE: ports[BRIDGE]})
        self.workers.start()
        self.bridge.start()
        deadline = time.monotonic() + PROCESS_START_TIMEOUT_S
        while True:
            for pipeline in (self.workers, self.bridge):
                for name, alive in pipeline.alive().items():
                    if not alive:
                        raise EtlError(f"{name} exited at start; the end of {logs / name}.log:\n"
                                       f"{pipeline.log_tail(name)}")
            _, silent = status.fetch_metrics(self.metrics_urls)
            if not silent:
                self.say(f"the bridge and {len(NAMES)} worker pools are up")
                return
            if time.monotonic() > deadline:
                raise EtlError(f"not answering after {PROCESS_START_TIMEOUT_S:g}s: {', '.join(silent)}; "
                               f"logs in {logs}")
            time.sleep(POLL_S)

    def sent(self) -> Sent:
        return self.generator.progress() if self.generator else Sent(enabled=False)

    def watch(self, *, once: bool) -> int:
        """Show progress until interrupted; with ``once``, return when the generated events are all accounted for
        and nothing waits (0), or when nothing moved for ``ONCE_STALL_TIMEOUT_S`` (1)."""
        assert self.settings is not None and self.baseline is not None
        previous, start = None, time.monotonic()
        moved_at, last_key = start, None
        logging.disable(logging.CRITICAL)  # unreadable sources show in the progress; log lines would tear it
        while True:
            snap = status.collect(self.settings, self.metrics_urls)
            sent = self.sent()
            missing = unaccounted(self.baseline, snap, sent)
            rates = status.rates(previous, snap) if previous else dict.fromkeys(status.STAGES)
            now = time.monotonic()
            self.progress.show(snap, rates, self.settings, elapsed_s=now - start, interval_s=PROGRESS_INTERVAL_S,
                               sent=sent, missing=missing, matches=status.match_rates(previous, snap))
            if once and (sent.finished or not sent.enabled) and missing == 0 and idle(snap):
                return 1 if sent.error else 0
            key = (tuple(snap.totals.values()), tuple((snap.queues or {}).values()), snap.lag, sent)
            moved_at, last_key = (now, key) if key != last_key else (moved_at, last_key)
            if once and now - moved_at > ONCE_STALL_TIMEOUT_S:
                self.progress.release()
                self.say(f"nothing moved for {ONCE_STALL_TIMEOUT_S:g}s; {missing} generated events unaccounted for")
                return 1
            previous = snap
            time.sleep(PROGRESS_INTERVAL_S)

    def shutdown(self, signals: StopSignals) -> status.Snapshot | None:
        """Stop in order, each step bounded. Returns the last reading of the servers (``None`` when they were not
        all up), taken after the workers stopped."""
        if self.generator is not None:
            self.generator.stop()
            self.say(f"stopped the generator: {self.generator.progress().sent} events published")
        if self.bridge is not None:
            self._stop_processes(self.bridge, "the bridge (it acks what it enqueued)", BRIDGE_STOP_TIMEOUT_S, signals)
        if self.workers is not None and self._servers_up():
            self._drain(signals)
        lookups = self._last_lookups()
        if self.workers is not None:
            self._stop_processes(self.workers, "the workers", WORKER_STOP_TIMEOUT_S, signals)
        final = status.collect(self.settings) if self.settings is not None and self._servers_up() else None
        final = final if final is None else replace(final, lookups=lookups)
        if self.servers is not None:
            self.servers.stop(self.say, hurried=self._hurried(signals))
            self.say("stopped the servers")
        return final

    def _last_lookups(self) -> Lookups | None:
        """The lookup tables and this run's matches, read from the pools before they stop: their counters go with
        them. ``None`` when no page answers."""
        metrics, _ = status.fetch_metrics(self.metrics_urls)
        return None if metrics is None else metrics.lookups or Lookups()

    def _hurried(self, signals: StopSignals) -> bool:
        """Whether a later stop signal asked to hurry; says so the first time."""
        if signals.hurry and not self._said_hurry:
            self.say(f"stopping faster: no more waiting for the queues; processes get {HURRIED_STOP_TIMEOUT_S:g}s, "
                     "then are killed")
            self._said_hurry = True
        return signals.hurry

    def _stop_processes(self, pipeline: Pipeline, what: str, timeout_s: float, signals: StopSignals) -> None:
        self.say(f"stopping {what}")
        codes = pipeline.stop(HURRIED_STOP_TIMEOUT_S if self._hurried(signals) else timeout_s)
        failed = {name: code for name, code in codes.items() if code not in (0, None)}
        if failed:
            self.say("  exit codes: " + ", ".join(f"{n} {c}" for n, c in failed.items()) +
                     f" (logs in {self.options.data_dir / 'logs'})")

    def _drain(self, signals: StopSignals) -> None:
        """Wait until the queues are empty, up to the drain timeout or a second Ctrl-C. Whatever is left stays in
        Redis (AOF on) for the next start."""
        assert self.settings is not None
        deadline, reported = time.monotonic() + self.options.drain_timeout_s, float("-inf")
        while True:
            try:
                queues = report.queued_counts(self.settings)
            except RedisError as e:
                self.say(f"cannot read the queues ({type(e).__name__}: {e}); not waiting for them")
                return
            waiting = ", ".join(f"{queue} {n}" for queue, n in queues.items() if n)
            if not waiting:
                self.say("the queues are drained")
                return
            now = time.monotonic()
            if self._hurried(signals) or now >= deadline:
                self.say(f"not waiting any longer; left in Redis: {waiting} batches. Not lost: Redis keeps them "
                         "(AOF on) and the workers process them on the next start")
                return
            if now - reported >= DRAIN_REPORT_EVERY_S:
                self.say(f"draining the queues: {waiting} batches left ({deadline - now:.0f}s more at most; "
                         "Ctrl-C again to stop now)")
                reported = now
            time.sleep(POLL_S)

    def _servers_up(self) -> bool:
        return self.servers is not None and self.servers.running()


def run_dev(options: DevOptions, say: Say, *, terminal: bool = False, width: int = 120, height: int = 50) -> int:
    """Run the local default until stopped (or, with ``once``, until the generated events are all accounted for).
    ``terminal``: redraw the progress in place on a screen of ``width`` x ``height`` characters.

    Returns the exit code: 0, or 1 when something failed to start or ``once`` could not finish."""
    say = surviving_hangup(say)
    signals = StopSignals()
    signals.install()
    progress = Progress(say, terminal=terminal, width=width, height=height)
    code, final = 0, None
    try:
        with locked_data_dir(options.data_dir, clean=options.clean):
            stack = Stack(options, say, progress)
            try:
                stack.start()
                code = stack.watch(once=options.once)
            except KeyboardInterrupt:
                progress.release()
                say("\nstopping: generator, bridge, queues, workers, then the servers")
            except (devservers.ServerError, EtlError) as e:
                say(f"error: {e}")
                code = 1
            finally:
                signals.stopping()
                logging.disable(logging.NOTSET)
                final = stack.shutdown(signals)
    except EtlError as e:  # the data directory is held by another run
        say(f"error: {e}")
        code = 1
    finally:
        signals.stopping()
        leftover = reap_children()
        if leftover:
            say(f"stopped {leftover} leftover process(es)")
        signals.restore()
    if final is not None:
        say(summary(final))
    return code
