"""What the soak reads at each tick, from the servers and the pipeline's own metrics pages.

Every count it turns into events/s must keep growing while retention removes old events, so each sink's is read
where it is cumulative:

- PostgreSQL: the rows whose ``created_at`` (the inserting transaction's start) falls in the tick's interval moved
  ``SETTLE_S`` earlier, so that a transaction still running at the interval's end is counted in it;
  the same rows give the window's latency, ``created_at`` minus the ``timestamp`` the publisher set.
- the enriched stream: its last sequence number (``max_age`` deletes messages, never sequence numbers);
- the graph: the graph pool's ``etl_events_total{stage="graph"}``; Event nodes are only counted, as a size.

Published events are the raw stream's last sequence number. The blocking reads run in a thread, so that the
publisher sharing the event loop keeps its rate.
"""

from __future__ import annotations

import asyncio
import math
import time
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass

import psutil
import psycopg2
import redis
from falkordb import FalkorDB
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError
from prometheus_client.parser import text_string_to_metric_families

from bench import _servers, e2e, load
from bench.sampling import MIB, Group
from bench.soak_summary import BENCH_LABEL, Sample
from etl.dev.supervisor import Pipeline
from etl.stages import GRAPH

SETTLE_S = 3.0
SCRAPE_TIMEOUT_S = 2.0
RETENTION_WORD = "retention"  # any metric whose name holds it is recorded, whatever the retention code calls it
# One scan of the table gives both its row count and the window's latencies: rows outside the window fall into
# the NULL group. A second scan, or an index on created_at, would cost PostgreSQL more than the pipeline's writes.
_TABLE_SQL = ('SELECT CASE WHEN created_at >= to_timestamp(%s) AND created_at < to_timestamp(%s) '
              'THEN floor(extract(epoch FROM created_at) * 1000 - "timestamp")::bigint END, count(*) '
              'FROM "{table}" GROUP BY 1')


def scrape(ports: Mapping[str, int]) -> dict[str, float]:
    """Every sample of every ``/metrics`` page on ``ports``, by name and labels (``name{k="v"}``); the largest
    value any page reports (a counter is incremented in one pool only). A page that does not answer is left out."""
    out: dict[str, float] = {}
    for port in ports.values():
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=SCRAPE_TIMEOUT_S) as page:
                text = page.read().decode()
        except OSError:
            continue
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                labels = ",".join(f'{k}="{v}"' for k, v in sorted(s.labels.items()))
                key = f"{s.name}{{{labels}}}" if labels else s.name
                out[key] = max(out.get(key, -math.inf), float(s.value))
    return out


def _pss(proc: psutil.Process) -> int:
    """Proportional set size in bytes: each page shared with other processes counted as its share; 0 once gone."""
    try:
        return int(proc.memory_full_info().pss)
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return 0


class Cumulative:
    """A count that only grows, read at each tick: its rate since the last successful read."""

    def __init__(self) -> None:
        self._last: tuple[float, float] | None = None

    def rate(self, value: float | None, now: float) -> float:
        """Events/s since the previous read; NaN for the first read or a missing value (the next read then
        covers the gap)."""
        if value is None:
            return math.nan
        last, self._last = self._last, (value, now)
        if last is None or now <= last[1]:
            return math.nan
        return round((value - last[0]) / (now - last[1]), 1)


@dataclass(frozen=True)
class _Read:
    window_rows: int
    hist: dict[int, int]
    metrics: dict[str, float]
    rss: dict[str, float]
    pss: dict[str, float]
    cpu: dict[str, float]
    sizes: dict[str, float]


class Probe:
    """Opens its connections at construction; ``await start()`` before publishing, ``await sample(phase)`` at
    each tick, ``close()`` at the end."""

    def __init__(self, stack: _servers.Stack, pipeline: Pipeline, js: JetStreamContext) -> None:
        self._settings = s = stack.settings
        self._js = js
        self._pg = psycopg2.connect(host="127.0.0.1", port=s.pg_port, dbname=s.pg_db, user="postgres")
        self._pg.autocommit = True
        self._redis = redis.Redis(host="127.0.0.1", port=stack.servers.redis.port)
        assert stack.servers.falkordb is not None, "the soak runs on FalkorDB"
        self._graph = FalkorDB(host="127.0.0.1", port=stack.servers.falkordb.port).select_graph(s.graph_name)
        self._counts = load.SinkCounts(s, js)
        self._groups = {label: Group(proc, with_children=not label.startswith(BENCH_LABEL))
                        for label, proc in e2e.processes_of(stack, pipeline).items()}
        self._ports = dict(pipeline.ports)
        self._published, self._enriched, self._graph_events = Cumulative(), Cumulative(), Cumulative()
        self._started = self._last = time.time()
        self._cut = self._started - SETTLE_S
        self._machine = psutil.cpu_times()

    def close(self) -> None:
        self._counts.close()
        self._pg.close()
        self._redis.close()

    async def start(self) -> None:
        """Read every cumulative count once: the soak's rates, its clock and its windows count from here."""
        await self.sample("start")
        # From the start sample's time: the warm-up's rows, stored just before, are not the soak's.
        self._started = self._cut = self._last

    async def sample(self, phase: str, *, final: bool = False) -> Sample:
        """One tick. ``final``: the PostgreSQL window runs up to now (the pipeline is idle, nothing is in flight)."""
        now = time.time()
        raw_seq, raw_backlog = await self._stream(self._settings.nats_stream)
        enriched_seq, enriched_messages = await self._stream(self._settings.nats_enriched_stream)
        read = await asyncio.to_thread(self._read, now if final else now - SETTLE_S)
        dt = now - self._last
        # The table's window is the tick's, SETTLE_S earlier (the last one runs up to now): its rows over the tick's
        # length, so that rate times length is the rows stored, as for the other sinks.
        rates = {"published": self._published.rate(raw_seq, now), "enriched": self._enriched.rate(enriched_seq, now),
                 "graph": self._graph_events.rate(read.metrics.get(f'etl_events_total{{stage="{GRAPH.name}"}}'), now),
                 "timescale": round(read.window_rows / dt, 1) if dt > 0 else math.nan}
        sizes = {**read.sizes, "enriched_messages": enriched_messages or 0.0, "raw_backlog": raw_backlog or 0.0}
        sample = Sample(t_s=round(now - self._started, 3), dt_s=round(dt, 3), phase=phase,
                        rates=rates, rss_mib=read.rss, cpu_s=read.cpu, sizes=sizes, latency_hist=read.hist,
                        retention={k: v for k, v in read.metrics.items() if RETENTION_WORD in k}, pss_mib=read.pss,
                        machine_cores=self._machine_cores(dt, sum(read.cpu.values())))
        self._last = now
        return sample

    def _read(self, cut: float) -> _Read:
        """Everything a tick reads with blocking clients, the PostgreSQL window ending at ``cut``."""
        rows, hist = self._table(cut)
        rss, pss, cpu = self._processes()
        return _Read(sum(hist.values()), hist, scrape(self._ports), rss, pss, cpu,
                     {**self._graph_and_redis(), "table_rows": float(rows)})

    def _table(self, cut: float) -> tuple[int, dict[int, int]]:
        """(rows in the table, latency histogram in ms of the rows stored in ``[previous cut, cut)``)."""
        start, self._cut = self._cut, max(self._cut, cut)
        with self._pg.cursor() as cur:
            cur.execute(_TABLE_SQL.format(table=self._settings.pg_table), (start, self._cut))
            groups = cur.fetchall()
        return sum(int(n) for _, n in groups), {int(ms): int(n) for ms, n in groups if ms is not None}

    def _processes(self) -> tuple[dict[str, float], dict[str, float], dict[str, float]]:
        """RSS and PSS in MiB, and CPU seconds since the last tick, of each process with its children."""
        rss, pss, cpu = {}, {}, {}
        for label, group in self._groups.items():
            used = group.cpu_used_s()
            group.sample()
            rss[label] = round(group.rss[-1] / MIB, 1)
            cpu[label] = round(group.cpu_used_s() - used, 3)
            del group.rss[:-1]  # the samples keep the series; the group need not
            pss[label] = round(sum(_pss(proc) for proc in group.members()) / MIB, 1)
        return rss, pss, cpu

    def _machine_cores(self, dt: float, ours_s: float) -> dict[str, float]:
        """Cores the machine spent since the last tick: busy (all but idle and I/O wait), stolen, and busy outside
        the soak's processes (``ours_s`` CPU seconds)."""
        before, self._machine = self._machine, psutil.cpu_times()
        spent = {name: getattr(self._machine, name) - getattr(before, name) for name in before._fields}
        busy = sum(spent.values()) - spent["idle"] - spent.get("iowait", 0.0)
        if dt <= 0:
            return {}
        return {"busy": round(busy / dt, 2), "steal": round(spent.get("steal", 0.0) / dt, 2),
                "outside": round(max(0.0, busy - ours_s) / dt, 2)}

    def _graph_and_redis(self) -> dict[str, float]:
        nodes = int(self._graph.ro_query("MATCH (n) RETURN count(n)").result_set[0][0])
        used = int(self._redis.info("memory")["used_memory"])
        return {"event_nodes": float(self._counts.merged()), "nodes": float(nodes),
                "redis_used_mib": round(used / MIB, 1)}

    async def _stream(self, stream: str) -> tuple[float | None, float | None]:
        """(last sequence number, messages held) of ``stream``; both None before it exists."""
        try:
            state = (await self._js.stream_info(stream)).state
        except NotFoundError:
            return None, None
        return float(state.last_seq), float(state.messages)
