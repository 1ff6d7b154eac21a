"""The server-side view of a run: vLLM's Prometheus `/metrics`, scraped before, during and after.

Client latency says how slow a route felt; the server's counters and histograms say why (queue,
prefill, decode, KV-cache pressure, preemptions). Samples are stored raw in `server_metrics`
(one row per Prometheus sample, incl. _sum/_count/_bucket), and `metric_deltas` /
`server_summary` turn the before/after pair into per-route figures with DuckDB SQL.
"""

from __future__ import annotations

import json
import logging
import threading
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import duckdb
import httpx
import pandas as pd
from prometheus_client.parser import text_string_to_metric_families

from harness.store import BatchWriter

log = logging.getLogger(__name__)

# Metric families kept (names as vLLM 0.32 registers them; counters are exposed with `_total`).
KEPT_FAMILIES: frozenset[str] = frozenset(
    {
        # counters
        "vllm:prompt_tokens",
        "vllm:generation_tokens",
        "vllm:prefix_cache_queries",
        "vllm:prefix_cache_hits",
        "vllm:num_preemptions",
        "vllm:request_success",
        # histograms
        "vllm:time_to_first_token_seconds",
        "vllm:inter_token_latency_seconds",
        "vllm:e2e_request_latency_seconds",
        "vllm:request_queue_time_seconds",
        "vllm:request_prefill_time_seconds",
        "vllm:request_decode_time_seconds",
        "vllm:request_inference_time_seconds",
        # gauges
        "vllm:kv_cache_usage_perc",
        "vllm:num_requests_running",
        "vllm:num_requests_waiting",
    }
)

PHASES = ("before", "during", "after")


def metrics_url(base_url: str) -> str:
    """`http://host:port/v1` -> `http://host:port/metrics` (vLLM serves metrics at the root)."""
    root = base_url.rstrip("/")
    if root.endswith("/v1"):
        root = root[: -len("/v1")]
    return root + "/metrics"


def parse_metrics(text: str, families: frozenset[str] | None = KEPT_FAMILIES, buckets: bool = True) -> list[dict[str, Any]]:
    """Prometheus text -> [{metric, labels, value}], keeping `families` (None keeps all vllm:*)."""
    samples = []
    for family in text_string_to_metric_families(text):
        base = family.name.removesuffix("_total")
        if families is None:
            if not base.startswith("vllm:"):
                continue
        elif base not in families:
            continue
        for s in family.samples:
            if s.name.endswith("_created") or (not buckets and s.name.endswith("_bucket")):
                continue
            samples.append({"metric": s.name, "labels": dict(s.labels), "value": float(s.value)})
    return samples


def scrape(
    client: httpx.Client,
    base_url: str,
    *,
    run_id: str | None,
    route: str,
    phase: str,
    buckets: bool = True,
) -> list[dict[str, Any]]:
    """One scrape of one server as `server_metrics` rows. Raises httpx errors."""
    if phase not in PHASES:
        raise ValueError(f"phase must be one of {PHASES}, got {phase!r}")
    response = client.get(metrics_url(base_url))
    response.raise_for_status()
    scraped_at = datetime.now(timezone.utc)
    return [
        {
            "run_id": run_id,
            "route": route,
            "scraped_at": scraped_at,
            "phase": phase,
            "metric": s["metric"],
            "labels": json.dumps(s["labels"], sort_keys=True),
            "value": s["value"],
        }
        for s in parse_metrics(response.text, buckets=buckets)
    ]


@dataclass
class MetricsScraper:
    """Scrapes every route's server before a run, every `interval_s` during it (background thread)
    and after it, writing rows through `writer`.

    A failed scrape is logged and kept in `errors`; it never fails the run.
    """

    base_urls: dict[str, str]  # route name -> OpenAI base URL (.../v1)
    writer: BatchWriter
    run_id: str | None
    interval_s: float = 10.0
    buckets: bool = True
    timeout_s: float = 5.0
    errors: list[str] = field(default_factory=list)
    scrapes: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._client = httpx.Client(timeout=self.timeout_s, trust_env=False)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def scrape_all(self, phase: str) -> int:
        rows: list[dict[str, Any]] = []
        for route, base_url in self.base_urls.items():
            try:
                rows += scrape(self._client, base_url, run_id=self.run_id, route=route, phase=phase, buckets=self.buckets)
                self.scrapes[phase] = self.scrapes.get(phase, 0) + 1
            except (httpx.HTTPError, ValueError) as e:
                message = f"route {route}: {phase} scrape of {metrics_url(base_url)} failed: {type(e).__name__}: {e}"
                self.errors.append(message)
                log.warning(message)
        if rows:
            self.writer.add("server_metrics", rows)
            self.writer.flush()
        return len(rows)

    def start(self) -> "MetricsScraper":
        """Scrape `before` now (so it precedes the first request), then `during` in the background."""
        self.scrape_all("before")
        if self.interval_s and self.interval_s > 0:
            self._thread = threading.Thread(target=self._loop, name="metrics-scraper", daemon=True)
            self._thread.start()
        return self

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.scrape_all("during")

    def stop(self) -> None:
        """Stop the background loop and scrape `after`."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.timeout_s + 5)
            self._thread = None
        self.scrape_all("after")
        self._client.close()

    def __enter__(self) -> "MetricsScraper":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


_DELTA_SQL = """
WITH last_per_phase AS (
    SELECT run_id, route, phase, metric, labels,
           arg_max(value, scraped_at) AS value
    FROM server_metrics
    WHERE run_id = $run_id AND phase IN ('before', 'after')
    GROUP BY ALL
),
pairs AS (
    SELECT a.run_id, a.route, a.metric, a.labels, b.value AS before, a.value AS after
    FROM last_per_phase a
    LEFT JOIN last_per_phase b
      ON b.phase = 'before' AND a.route = b.route AND a.metric = b.metric AND a.labels = b.labels
    WHERE a.phase = 'after'
)
SELECT run_id, route, metric, labels, before, after,
       -- a counter lower after than before means the server restarted: count from zero
       CASE WHEN before IS NULL OR after < before THEN after ELSE after - before END AS delta
FROM pairs
WHERE regexp_matches(metric, '_(total|sum|count)$')
ORDER BY route, metric, labels
"""


def metric_deltas(con: duckdb.DuckDBPyConnection, run_id: str) -> pd.DataFrame:
    """Per route, counter and histogram _sum/_count changes over the run (after - before)."""
    return con.execute(_DELTA_SQL, {"run_id": run_id}).df()


_SUMMARY_SQL = f"""
WITH d AS ({_DELTA_SQL.replace("ORDER BY route, metric, labels", "")}),
per_metric AS (SELECT route, metric, sum(delta) AS delta FROM d GROUP BY route, metric),
peak AS (
    SELECT route, max(value) AS kv_cache_usage_peak
    FROM server_metrics
    WHERE run_id = $run_id AND metric = 'vllm:kv_cache_usage_perc'
    GROUP BY route
),
wide AS (
    PIVOT per_metric ON metric IN (
        'vllm:prompt_tokens_total', 'vllm:generation_tokens_total', 'vllm:request_success_total',
        'vllm:num_preemptions_total', 'vllm:prefix_cache_queries_total', 'vllm:prefix_cache_hits_total',
        'vllm:e2e_request_latency_seconds_count', 'vllm:e2e_request_latency_seconds_sum',
        'vllm:time_to_first_token_seconds_sum', 'vllm:time_to_first_token_seconds_count',
        'vllm:request_queue_time_seconds_sum', 'vllm:request_queue_time_seconds_count',
        'vllm:request_prefill_time_seconds_sum', 'vllm:request_prefill_time_seconds_count',
        'vllm:request_decode_time_seconds_sum', 'vllm:request_decode_time_seconds_count',
        'vllm:inter_token_latency_seconds_sum', 'vllm:inter_token_latency_seconds_count'
    ) USING sum(delta) GROUP BY route
)
SELECT w.route,
       w."vllm:request_success_total" AS requests,
       w."vllm:prompt_tokens_total" AS prompt_tokens,
       w."vllm:generation_tokens_total" AS generation_tokens,
       w."vllm:time_to_first_token_seconds_sum" / nullif(w."vllm:time_to_first_token_seconds_count", 0) AS ttft_mean_s,
       w."vllm:inter_token_latency_seconds_sum" / nullif(w."vllm:inter_token_latency_seconds_count", 0) AS itl_mean_s,
       w."vllm:e2e_request_latency_seconds_sum" / nullif(w."vllm:e2e_request_latency_seconds_count", 0) AS e2e_mean_s,
       w."vllm:request_queue_time_seconds_sum" / nullif(w."vllm:request_queue_time_seconds_count", 0) AS queue_mean_s,
       w."vllm:request_prefill_time_seconds_sum" / nullif(w."vllm:request_prefill_time_seconds_count", 0) AS prefill_mean_s,
       w."vllm:request_decode_time_seconds_sum" / nullif(w."vllm:request_decode_time_seconds_count", 0) AS decode_mean_s,
       w."vllm:prefix_cache_hits_total" / nullif(w."vllm:prefix_cache_queries_total", 0) AS prefix_cache_hit_rate,
       w."vllm:num_preemptions_total" AS preemptions,
       p.kv_cache_usage_peak
FROM wide w LEFT JOIN peak p USING (route)
ORDER BY w.route
"""


def server_summary(con: duckdb.DuckDBPyConnection, run_id: str) -> pd.DataFrame:
    """One row per route: requests, tokens, mean TTFT/ITL/e2e/queue/prefill/decode seconds as the
    server measured them, prefix-cache hit rate, preemptions and peak KV-cache usage (0..1).

    Empty when the run has no before/after scrapes.
    """
    return con.execute(_SUMMARY_SQL, {"run_id": run_id}).df()
