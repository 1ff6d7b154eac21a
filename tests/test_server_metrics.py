"""Scraping Prometheus metrics from a real HTTP endpoint (prometheus_client exposing vLLM-named
metrics) into a real DuckDB file, and the before/after deltas in SQL."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from harness.serving.engines import ENGINES
from harness.serving.metrics import MetricsScraper, metric_deltas, metrics_url, parse_metrics, server_summary
from harness.store import BatchWriter, connect, upsert

LABELS = ["model_name", "engine"]


class FakeVLLMMetrics:
    """The vLLM metric families we keep, plus one we drop, on a real HTTP server."""

    def __init__(self):
        self.registry = r = CollectorRegistry()
        self.prompt = Counter("vllm:prompt_tokens", "", LABELS, registry=r).labels("m", "0")
        self.generation = Counter("vllm:generation_tokens", "", LABELS, registry=r).labels("m", "0")
        self.success = Counter("vllm:request_success", "", LABELS + ["finished_reason"], registry=r)
        self.queue = Histogram("vllm:request_queue_time_seconds", "", LABELS, registry=r, buckets=(0.1, 1.0)).labels("m", "0")
        self.prefill = Histogram("vllm:request_prefill_time_seconds", "", LABELS, registry=r, buckets=(0.1, 1.0)).labels("m", "0")
        self.kv = Gauge("vllm:kv_cache_usage_perc", "", LABELS, registry=r).labels("m", "0")
        self.hits = Counter("vllm:prefix_cache_hits", "", LABELS, registry=r).labels("m", "0")
        self.queries = Counter("vllm:prefix_cache_queries", "", LABELS, registry=r).labels("m", "0")
        Gauge("vllm:cache_config_info", "", ["block_size"], registry=r).labels("16").set(1)
        self.server, self.thread = start_http_server(0, addr="127.0.0.1", registry=r)
        self.base_url = f"http://127.0.0.1:{self.server.server_port}/v1"

    def request(self, prompt: int, gen: int, queue_s: float, prefill_s: float, reason: str = "stop") -> None:
        self.prompt.inc(prompt)
        self.generation.inc(gen)
        self.success.labels("m", "0", reason).inc()
        self.queue.observe(queue_s)
        self.prefill.observe(prefill_s)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def fake():
    f = FakeVLLMMetrics()
    yield f
    f.close()


@pytest.fixture
def con(tmp_path: Path):
    c = connect(tmp_path / "m.duckdb")
    yield c
    c.close()


def test_metrics_url():
    assert metrics_url("http://127.0.0.1:8200/v1") == "http://127.0.0.1:8200/metrics"
    assert metrics_url("http://h:1/v1/") == "http://h:1/metrics"
    assert metrics_url("http://h:1") == "http://h:1/metrics"


def test_parse_keeps_listed_families_with_suffixes(fake):
    import httpx

    fake.request(10, 5, 0.05, 0.2)
    text = httpx.get(metrics_url(fake.base_url)).text
    names = {s["metric"] for s in parse_metrics(text, ENGINES["vllm"].metric_families)}
    assert {"vllm:prompt_tokens_total", "vllm:request_queue_time_seconds_sum", "vllm:request_queue_time_seconds_count",
            "vllm:request_queue_time_seconds_bucket", "vllm:kv_cache_usage_perc"} <= names
    assert not any(n.endswith("_created") for n in names)
    assert "vllm:cache_config_info" not in names
    assert not any(n.endswith("_bucket") for n in (s["metric"] for s in parse_metrics(text, buckets=False)))


def test_scraper_phases_deltas_and_summary(fake, con):
    fake.request(100, 1, 0.5, 0.5)  # traffic before the run: must not count
    writer = BatchWriter(con)
    scraper = MetricsScraper({"moe": fake.base_url, "down": "http://127.0.0.1:9/v1"}, writer, "run-1", interval_s=0.2)
    scraper.start()
    fake.request(12, 30, 0.01, 0.10)
    fake.kv.set(0.75)
    time.sleep(0.7)
    fake.request(8, 10, 0.03, 0.30, reason="length")
    fake.kv.set(0.25)
    fake.hits.inc(3)
    fake.queries.inc(4)
    scraper.stop()

    phases = dict(con.execute("SELECT phase, count(DISTINCT scraped_at) FROM server_metrics WHERE route='moe' GROUP BY phase").fetchall())
    assert phases["before"] == 1 and phases["after"] == 1 and phases["during"] >= 2
    labels = con.execute("SELECT labels FROM server_metrics WHERE metric='vllm:prompt_tokens_total' LIMIT 1").fetchone()[0]
    assert json.loads(labels) == {"engine": "0", "model_name": "m"}
    # the unreachable route is reported, not fatal
    assert any("route down" in e for e in scraper.errors)
    assert con.execute("SELECT count(*) FROM server_metrics WHERE route='down'").fetchone()[0] == 0

    deltas = metric_deltas(con, "run-1").set_index("metric")
    assert deltas.loc["vllm:prompt_tokens_total", "delta"] == 20
    assert deltas.loc["vllm:generation_tokens_total", "delta"] == 40
    assert deltas.loc["vllm:request_queue_time_seconds_count", "delta"] == 2
    assert deltas.loc["vllm:request_queue_time_seconds_sum", "delta"] == pytest.approx(0.04)
    assert not deltas.index.str.endswith("_bucket").any()

    summary = server_summary(con, "run-1").set_index("route")
    row = summary.loc["moe"]
    assert row["requests"] == 2 and row["prompt_tokens"] == 20 and row["generation_tokens"] == 40
    assert row["queue_mean_s"] == pytest.approx(0.02)
    assert row["prefill_mean_s"] == pytest.approx(0.20)
    assert row["prefix_cache_hit_rate"] == pytest.approx(0.75)
    assert row["kv_cache_usage_peak"] == pytest.approx(0.75)  # seen by a 'during' scrape, gone by 'after'


def test_counter_reset_counts_from_zero(con):
    base = {"run_id": "r", "route": "a", "metric": "vllm:prompt_tokens_total", "labels": "{}"}
    upsert(con, "server_metrics", [
        {**base, "phase": "before", "scraped_at": "2026-01-01T00:00:00Z", "value": 500.0},
        {**base, "phase": "after", "scraped_at": "2026-01-01T00:10:00Z", "value": 40.0},  # server restarted
    ])
    assert metric_deltas(con, "r")["delta"].tolist() == [40.0]
    assert metric_deltas(con, "other").empty
    assert server_summary(con, "other").empty
