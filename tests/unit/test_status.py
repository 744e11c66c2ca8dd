"""The pure parts of ``etl status``: rates, the paused estimate, Prometheus text, rendering, and the loop."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from etl.config import Settings
from etl.ops import status
from etl.ops.status import STAGES, ProcessMetrics, Snapshot
from etl.pipeline.backlog import Backpressure
from etl.stages import SINK_NAMES

SETTINGS = Settings()
ALL_UNKNOWN = dict.fromkeys(STAGES)


def snapshot(taken_at: float = 1_700_000_000.0, **totals: int | None) -> Snapshot:
    return Snapshot(taken_at=taken_at, totals={**dict.fromkeys(STAGES, 0), **totals})


def full_snapshot() -> Snapshot:
    return Snapshot(
        taken_at=1_700_000_000.0,
        totals={"received": 305, "published": 300, "stored": 300, "merged": 299, "dead_lettered": 5},
        delivered=310, lag=12, ack_pending=5, dead_letters={"enrich": 5},
        queues={"enrich": 1, "publish": 0, "timescale": 3, "graph": 2},
        breakers={"publish": "closed", "timescale": "open", "graph": None},
        bridge_paused=False, paused_estimate=False, high_water=200, low_water=100)


# --- rates ---

def test_rate_is_the_change_per_second_between_two_snapshots() -> None:
    before = snapshot(100.0, received=1000, stored=900)
    after = snapshot(102.0, received=1300, stored=1000)
    got = status.rates(before, after)
    assert got["received"] == 150.0 and got["stored"] == 50.0 and got["merged"] == 0.0
    assert set(got) == set(STAGES)


def test_rate_is_unknown_when_either_total_is() -> None:
    got = status.rates(snapshot(100.0, merged=None), snapshot(101.0, published=None))
    assert got["merged"] is None and got["published"] is None and got["received"] == 0.0


def test_rate_is_unknown_when_no_time_passed() -> None:
    assert status.rates(snapshot(100.0, received=1), snapshot(100.0, received=5)) == ALL_UNKNOWN
    assert status.rates(snapshot(101.0, received=1), snapshot(100.0, received=5)) == ALL_UNKNOWN


def test_a_total_that_went_down_gives_a_negative_rate() -> None:
    got = status.rates(snapshot(10.0, dead_lettered=40), snapshot(14.0, dead_lettered=0))
    assert got["dead_lettered"] == -10.0


# --- the paused estimate ---

@pytest.mark.parametrize(("deepest", "expected"), [(0, False), (100, False), (101, None), (199, None), (200, True),
                                                   (5000, True)])
def test_paused_estimate_follows_the_bridge_marks(deepest: int, expected: bool | None) -> None:
    pressure = Backpressure(high_water=200, low_water=100)
    assert status.paused_estimate({"enrich": 0, "graph": deepest}, pressure) is expected


def test_no_queue_means_not_paused() -> None:
    assert status.paused_estimate({}, Backpressure(high_water=2, low_water=1)) is False


# --- Prometheus text ---

WORKER_PAGE = """\
# HELP etl_bridge_paused 1 while the bridge stopped fetching because the queues are full
# TYPE etl_bridge_paused gauge
etl_bridge_paused 0.0
# HELP etl_circuit_breaker_state Circuit breaker per sink: 0 closed, 1 half-open, 2 open
# TYPE etl_circuit_breaker_state gauge
etl_circuit_breaker_state{pid="101",sink="timescale"} 0.0
etl_circuit_breaker_state{pid="102",sink="timescale"} 2.0
etl_circuit_breaker_state{sink="graph"} 1.0
# HELP dramatiq_messages_total The total number of messages processed.
# TYPE dramatiq_messages_total counter
dramatiq_messages_total{actor_name="write_graph",queue_name="graph"} 12.0
"""

BRIDGE_PAGE = """\
# HELP etl_bridge_paused 1 while the bridge stopped fetching because the queues are full
# TYPE etl_bridge_paused gauge
etl_bridge_paused {paused}
# HELP etl_queue_depth Messages not yet acked in each Dramatiq queue
# TYPE etl_queue_depth gauge
etl_queue_depth{{queue="enrich"}} 3.0
"""


def test_breaker_states_by_sink_take_the_worst_process() -> None:
    assert status.parse_metrics(WORKER_PAGE).breakers == {"timescale": 2, "graph": 1}


def test_paused_is_read_from_the_bridge_page() -> None:
    assert status.parse_metrics(BRIDGE_PAGE.format(paused="1.0")).paused is True
    assert status.parse_metrics(BRIDGE_PAGE.format(paused="0.0")).paused is False


def test_a_workers_idle_paused_gauge_is_not_believed() -> None:
    assert status.parse_metrics(WORKER_PAGE).paused is None


def test_a_page_without_our_metrics_knows_nothing() -> None:
    assert status.parse_metrics("# TYPE up gauge\nup 1\n") == ProcessMetrics()
    assert status.parse_metrics("") == ProcessMetrics()


def test_a_page_that_is_not_prometheus_text_raises_value_error() -> None:
    with pytest.raises(ValueError):
        status.parse_metrics("<html>not { metrics</html>\n")


def test_pages_merge_into_the_worst_breaker_and_any_paused_bridge() -> None:
    a = ProcessMetrics({"graph": 0, "publish": 2}, paused=False)
    b = ProcessMetrics({"graph": 1}, paused=True)
    assert a.merge(b) == ProcessMetrics({"graph": 1, "publish": 2}, paused=True)
    assert a.merge(ProcessMetrics()) == a
    assert ProcessMetrics().merge(ProcessMetrics()).paused is None


@pytest.mark.parametrize(("value", "name"), [(0, "closed"), (1, "half-open"), (2, "open"), (7, None), (None, None)])
def test_breaker_state_names(value: int | None, name: str | None) -> None:
    assert status._state_name(value) == name


# --- metrics URLs (--metrics-url; STATUS_METRICS_URLS is a setting, see test_config.py) ---

@pytest.mark.parametrize("url", ["file:///etc/passwd", "ftp://host/metrics", "http:///metrics", "localhost:9191"])
def test_only_http_urls_with_a_host_are_fetched(url: str) -> None:
    with pytest.raises(ValueError, match="http:// or https://"):
        status.check_url(url)
    assert status.check_url("https://b/metrics") == "https://b/metrics"


def test_a_rejected_url_does_not_show_its_password() -> None:
    with pytest.raises(ValueError) as caught:
        status.check_url("ftp://user:hunter2@host/metrics")
    assert "hunter2" not in str(caught.value)


# --- rendering ---

def test_render_shows_each_stage_with_its_total_and_rate() -> None:
    rates = {**ALL_UNKNOWN, "received": 12.345, "stored": 0.0}
    text = status.render(full_snapshot(), rates, SETTINGS, interval_s=0.5)
    lines = text.splitlines()
    assert lines[0] == "etl status  2023-11-14 22:13:20 UTC  every 0.5s, Ctrl-C to quit"
    assert lines[3].split()[:3] == ["received", "305", "12.3"]
    assert lines[4].split()[:3] == ["published", "300", "?"]
    assert lines[5].split()[:3] == ["stored", "300", "0.0"]
    assert lines[6].split()[:3] == ["merged", "299", "?"]
    assert lines[7].split()[:3] == ["dead-lettered", "5", "?"]
    assert "\x1b" not in text, "the loop clears the screen, not the renderer"


def test_render_shows_lag_queues_dead_letters_breakers_and_paused() -> None:
    text = status.render(full_snapshot(), ALL_UNKNOWN, SETTINGS)
    assert "JetStream lag   12 waiting, 5 awaiting ack" in text
    assert "queues          enrich 1  publish 0  timescale 3  graph 2  (deepest 3, pauses at 200)" in text
    assert "dead letters    enrich 5  publish 0  timescale 0  graph 0" in text
    assert "breakers        publish closed  timescale open  graph ?" in text
    assert "bridge paused   no (metrics)  no (estimated from queue depth)" in text
    assert "every" not in text.splitlines()[0]


def test_render_marks_what_could_not_be_read() -> None:
    snap = Snapshot(taken_at=0.0, totals=dict(ALL_UNKNOWN), breakers=dict.fromkeys(SINK_NAMES),
                    errors={"redis": "ConnectionError: refused"}, metrics_unreachable=["http://w:9191/metrics"])
    text = status.render(snap, ALL_UNKNOWN, SETTINGS)
    assert text.splitlines()[3].split()[:3] == ["received", "?", "?"]
    assert "JetStream lag   ? waiting, ? awaiting ack" in text
    assert "queues          ?  (deepest ?, pauses at 0)" in text
    assert "breakers        publish ?  timescale ?  graph ?" in text
    assert "bridge paused   ? (metrics)  ? (estimated from queue depth)" in text
    assert "! redis: ConnectionError: refused" in text
    assert "! metrics not answering: http://w:9191/metrics" in text


def test_json_holds_every_field_and_the_rates() -> None:
    rates = {**ALL_UNKNOWN, "received": 2.5}
    data = json.loads(status.to_json(full_snapshot(), rates))
    assert data["totals"]["received"] == 305 and data["rates"] == rates
    assert data["breakers"] == {"publish": "closed", "timescale": "open", "graph": None}
    assert (data["lag"], data["ack_pending"], data["delivered"]) == (12, 5, 310)
    assert set(data) == set(full_snapshot().as_dict()) | {"rates", "match_rates"}
    assert "\n" not in status.to_json(full_snapshot(), rates), "one line per reading when streaming"


# --- the loop, with readings faked ---

class Stop(Exception):
    pass


def readings(*snapshots: Snapshot) -> Iterator[Snapshot]:
    yield from snapshots


def test_watch_clears_and_redraws_with_rates_from_the_previous_reading(monkeypatch: pytest.MonkeyPatch) -> None:
    taken = readings(snapshot(10.0, received=100), snapshot(12.0, received=160))
    monkeypatch.setattr(status, "collect", lambda settings, urls: next(taken))
    frames: list[str] = []
    sleeps: list[float] = []

    def sleep(seconds: float) -> None:
        sleeps.append(seconds)
        if len(sleeps) == 2:
            raise Stop

    with pytest.raises(Stop):
        status.watch(SETTINGS, (), 0.5, frames.append, sleep=sleep)
    assert len(frames) == 2 and all(f.startswith(status.CLEAR_SCREEN) for f in frames)
    assert frames[0].splitlines()[3].split()[:3] == ["received", "100", "?"]
    assert frames[1].splitlines()[3].split()[:3] == ["received", "160", "30.0"]
    assert sleeps == [0.5, 0.5]


def test_watch_as_json_writes_one_line_per_reading(monkeypatch: pytest.MonkeyPatch) -> None:
    taken = readings(snapshot(10.0, stored=1), snapshot(11.0, stored=3))
    monkeypatch.setattr(status, "collect", lambda settings, urls: next(taken))
    lines: list[str] = []

    def sleep(seconds: float) -> None:
        if len(lines) == 2:
            raise Stop

    with pytest.raises(Stop):
        status.watch(SETTINGS, (), 1.0, lines.append, as_json=True, clear=False, sleep=sleep)
    assert [json.loads(line)["rates"]["stored"] for line in lines] == [None, 2.0]


def test_measure_returns_the_second_reading_and_the_rates_over_the_interval(monkeypatch: pytest.MonkeyPatch) -> None:
    taken = readings(snapshot(10.0, merged=5), snapshot(10.5, merged=6))
    monkeypatch.setattr(status, "collect", lambda settings, urls: next(taken))
    slept: list[float] = []
    current, rates, matches = status.measure(SETTINGS, (), 0.5, sleep=slept.append)
    assert current.totals["merged"] == 6 and rates["merged"] == 2.0 and slept == [0.5]
    assert matches == {}, "no metrics page: no matches to rate"
