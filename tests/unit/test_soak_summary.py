"""The soak benchmark's pure part (``bench.soak_summary``): percentiles over windows, the verdict's rules and the
summary, on made-up samples. The soak itself (``bench/soak``) is not part of the test suite."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from bench.soak import Options, finite
from bench.soak_charts import write_charts
from bench.soak_probe import Cumulative
from bench.soak_summary import (
    DRAIN,
    SOAK,
    Check,
    Rules,
    Sample,
    duration_s,
    edges,
    growth,
    hist_percentile,
    merged,
    passed,
    summary,
    verdict,
    window_latency,
)

INTERVAL_S = 5.0
RULES = Rules()


def sample(i: int, *, rate: float = 1000.0, hist: dict[int, int] | None = None, rss: float = 100.0,
           redis_mib: float = 20.0, event_nodes: float = 1000.0, phase: str = SOAK) -> Sample:
    """The ``i``-th tick of a run sampled every ``INTERVAL_S``: every sink stored ``rate`` events/s."""
    return Sample(t_s=(i + 1) * INTERVAL_S, dt_s=INTERVAL_S, phase=phase,
                  rates={"published": rate, "timescale": rate, "graph": rate, "enriched": rate},
                  rss_mib={"worker-graph": rss + i, "bench (publisher)": 50.0 + i}, cpu_s={"worker-graph": 1.0},
                  pss_mib={"worker-graph": rss, "bench (publisher)": 50.0 + i},
                  sizes={"redis_used_mib": redis_mib, "event_nodes": event_nodes, "table_rows": event_nodes},
                  latency_hist=hist if hist is not None else {50: 90, 120: 9, 300: 1})


def run(minutes: float, **per_sample: object) -> list[Sample]:
    return [sample(i, **per_sample) for i in range(int(minutes * 60 / INTERVAL_S))]  # type: ignore[arg-type]


def check(checks: list[Check], name: str) -> Check:
    return next(c for c in checks if c.name == name)


def test_a_histograms_percentile_is_the_nearest_rank() -> None:
    hist = {1: 50, 2: 45, 10: 4, 2000: 1}
    assert [hist_percentile(hist, p) for p in (50, 95, 99, 100)] == [1.0, 2.0, 10.0, 2000.0]
    assert hist_percentile({7: 1}, 99) == 7.0
    assert hist_percentile({1: 1, 2: 1, 3: 1}, 50) == 2.0  # rank 1.5 is rounded up: the second value
    assert math.isnan(hist_percentile({}, 50))


def test_the_runs_percentiles_come_from_every_window_together_not_from_their_percentiles() -> None:
    quiet = {10: 1000}
    burst = {10: 90, 900: 10}  # this window's p99 is 900; over both windows, 1 % of 1,100 events is 11
    assert window_latency(burst)["p99"] == 900.0
    overall = window_latency(merged([quiet, burst]))
    assert overall["p99"] == 10.0
    assert overall["p50"] == 10.0 and overall["max"] == 900.0 and overall["events"] == 1100.0


@pytest.mark.parametrize(("text", "seconds"), [("90s", 90), ("2m", 120), ("6h", 21600), ("30d", 2592000)])
def test_durations(text: str, seconds: int) -> None:
    assert duration_s(text) == seconds


@pytest.mark.parametrize("text", ["", "2", "m", "2 min", "-1m", "1.5h"])
def test_a_duration_without_a_unit_is_refused(text: str) -> None:
    with pytest.raises(ValueError):
        duration_s(text)


def test_the_edges_are_the_first_and_last_three_minutes_or_thirds_of_a_shorter_run() -> None:
    first, last = edges(run(15), 180)
    assert (len(first), len(last)) == (36, 36)
    assert first[0].t_s == 5.0 and last[-1].t_s == 900.0 and last[0].t_s == 725.0
    first, last = edges(run(2), 180)  # 24 samples: a third each
    assert (len(first), len(last)) == (8, 8)


def test_a_steady_run_passes_every_check() -> None:
    checks = verdict(run(15), RULES, retention_active=True)
    assert passed(checks), [c for c in checks if not c.passed]


def test_a_decline_of_more_than_ten_percent_in_the_last_three_minutes_fails() -> None:
    samples = run(15)
    for s in samples[-36:]:
        s.rates["graph"] = 880.0
    checks = verdict(samples, RULES, retention_active=True)
    assert check(checks, "graph events/s held").passed is False
    assert check(checks, "timescale events/s held").passed is True
    assert not passed(checks)
    for s in samples[-36:]:
        s.rates["graph"] = 920.0
    assert passed(verdict(samples, RULES, retention_active=True))


def test_the_first_sample_while_publishing_starts_is_not_the_rate_to_hold() -> None:
    samples = run(15)
    samples[0].rates["timescale"] = 100.0  # its table window was short; publishing was just starting
    for s in samples[-36:]:
        s.rates["timescale"] = 880.0  # 0.88 of the rate held; 0.90 of a mean that counted the first sample
    assert check(verdict(samples, RULES, retention_active=True), "timescale events/s held").passed is False


def test_the_drain_after_publishing_is_not_a_decline() -> None:
    samples = run(15) + [sample(180 + i, rate=0.0, phase=DRAIN) for i in range(12)]  # a minute of nothing
    assert passed(verdict(samples, RULES, retention_active=True))


def test_one_window_with_p99_over_a_second_fails_even_when_the_runs_p99_is_low() -> None:
    samples = run(15)
    samples[100].latency_hist = {50: 980, 1500: 20}
    checks = verdict(samples, RULES, retention_active=True)
    assert check(checks, "p99 under 1 s throughout").passed is False
    assert summary(samples, checks, RULES)["latency_ms"]["p99"] < 1000


def test_a_window_with_too_few_events_has_no_p99_to_judge() -> None:
    samples = run(15)
    samples[100].latency_hist = {5000: RULES.min_window_events - 1}
    assert passed(verdict(samples, RULES, retention_active=True))


def test_the_drains_latency_is_judged_too() -> None:
    samples = run(15) + [sample(180, hist={2000: 500}, phase=DRAIN)]
    assert check(verdict(samples, RULES, retention_active=True), "p99 under 1 s throughout").passed is False


def test_memory_flat_is_the_last_thirds_median_against_the_middle_thirds() -> None:
    assert growth([999.0, 10, 10, 11, 10, 12, 13]) == (10, 12.5)  # thirds of 2: [10, 11, 10] and [12, 13]
    leaking = [sample(i, rss=100.0 + i) for i in range(180)]  # 1 MiB a tick: the last third is 60 MiB above
    checks = verdict(leaking, RULES, retention_active=True)
    assert check(checks, "PSS worker-graph flat").passed is False
    warming = [sample(i, rss=min(100.0 + i, 150.0)) for i in range(180)]  # grows while warming up, then flat
    assert check(verdict(warming, RULES, retention_active=True), "PSS worker-graph flat").passed is True


def test_memory_is_judged_by_pss_not_by_rss() -> None:
    # Every sample's RSS is a MiB above the last (sample() adds i): shared pages touched by more processes.
    checks = verdict(run(15), RULES, retention_active=True)
    assert check(checks, "PSS worker-graph flat").passed is True
    assert not [c for c in checks if c.name.startswith("RSS")]


def test_a_small_process_may_grow_by_a_few_mib() -> None:
    small = [sample(i, redis_mib=10.0 + (5.0 if i >= 120 else 0.0)) for i in range(180)]  # +50 %, but 5 MiB
    assert check(verdict(small, RULES, retention_active=True), "Redis used_memory flat").passed is True
    small = [sample(i, redis_mib=10.0 + (9.0 if i >= 120 else 0.0)) for i in range(180)]
    assert check(verdict(small, RULES, retention_active=True), "Redis used_memory flat").passed is False


def test_the_benchmarks_own_process_is_not_judged() -> None:
    names = [c.name for c in verdict(run(15), RULES, retention_active=True)]
    assert "PSS worker-graph flat" in names
    assert not [n for n in names if "bench" in n]


def test_sizes_are_judged_only_with_retention_active() -> None:
    growing = [sample(i, event_nodes=1000.0 * (i + 1)) for i in range(180)]
    checks = verdict(growing, RULES, retention_active=True)
    assert check(checks, "graph Event nodes steady").passed is False
    assert check(checks, "table rows steady").passed is False
    steady_events = [sample(i) for i in range(180)]
    for i, s in enumerate(steady_events):
        s.sizes["nodes"] = 2000.0 + 100.0 * i  # Event nodes steady, context nodes piling up beside them
    checks = verdict(steady_events, RULES, retention_active=True)
    assert check(checks, "graph Event nodes steady").passed is True
    assert check(checks, "graph nodes (all) steady").passed is False
    checks = verdict(growing, RULES, retention_active=False)
    assert check(checks, "graph Event nodes steady").passed is None
    assert passed(checks)


def test_no_check_made_is_not_a_pass() -> None:
    assert not passed(verdict([], RULES, retention_active=False))


def test_the_summary() -> None:
    samples = run(15)
    for s in samples[1:36]:
        s.rates["published"] = 1100.0
    result = summary(samples, verdict(samples, RULES, retention_active=True), RULES)
    assert result["verdict"] == "PASS"
    assert result["events_per_s"]["published"]["first"] == pytest.approx(1100.0)
    assert result["events_per_s"]["published"]["last"] == pytest.approx(1000.0)
    assert result["events_per_s"]["published"]["mean"] == pytest.approx(1000.0 + 100.0 * 35 / 180, abs=0.1)
    assert result["latency_ms"] == {"p50": 50.0, "p95": 120.0, "p99": 120.0, "max": 300.0, "events": 18000.0}
    assert result["peak_rss_mib"]["bench (publisher)"] == 229.0
    assert result["peak_pss_mib"]["worker-graph"] == 100.0
    assert result["events"] == {"published": 900_000 + 100 * 35 * 5, "timescale": 900_000, "graph": 900_000,
                                "enriched": 900_000}


def test_a_rate_that_could_not_be_read_is_left_out_not_counted_as_zero() -> None:
    samples = run(15)
    samples[50].rates["graph"] = math.nan
    result = summary(samples, verdict(samples, RULES, retention_active=True), RULES)
    assert result["events_per_s"]["graph"]["mean"] == 1000.0
    assert result["events"]["graph"] == 900_000 - 5000


def test_a_samples_json_has_its_percentiles_not_its_histogram() -> None:
    out = sample(0).as_json()
    assert "latency_hist" not in out
    assert out["latency_ms"]["p99"] == 120.0


def test_json_has_no_nan() -> None:
    assert finite({"a": [math.nan, 1.0], "b": {"c": math.nan}}) == {"a": [None, 1.0], "b": {"c": None}}


def options(retention: str, env: dict[str, str]) -> Options:
    return Options(15, 0.75, None, retention, 5.0, 1000, Path("."), env, None, False)


def test_the_pipeline_gets_the_retention_settings_and_the_enriched_streams_max_age() -> None:
    assert options("5m", {"GRAPH_RETENTION": "1m"}).pipeline_env() == {
        "GRAPH_RETENTION": "1m", "TIMESCALE_RETENTION": "5m", "NATS_ENRICHED_STREAM_MAX_AGE": "300"}


def test_the_enriched_streams_max_age_is_never_under_the_publish_sinks_duplicate_window() -> None:
    # JetStream refuses such a stream, and every publish batch failed with it.
    assert options("1m", {}).pipeline_env()["NATS_ENRICHED_STREAM_MAX_AGE"] == "120"


def test_the_charts_are_written(tmp_path: Path) -> None:
    samples = run(2) + [sample(24, rate=0.0, phase=DRAIN)]
    samples[3].rates["graph"] = math.nan  # a missed read is a gap
    paths = write_charts(samples, tmp_path, 1000.0)
    assert [p.name for p in paths] == ["soak-throughput.png", "soak-latency.png", "soak-memory.png",
                                       "soak-pss.png", "soak-sizes.png", "soak-redis.png"]
    assert all(p.read_bytes().startswith(b"\x89PNG") for p in paths)


def test_a_cumulative_counts_rate_covers_a_missed_read() -> None:
    count = Cumulative()
    assert math.isnan(count.rate(100.0, now=10.0))  # the first read only sets the start
    assert count.rate(600.0, now=15.0) == 100.0
    assert math.isnan(count.rate(None, now=20.0))  # a page that did not answer
    assert count.rate(1600.0, now=25.0) == 100.0  # over the ten seconds since the last read
