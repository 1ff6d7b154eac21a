"""The server-side view of a run: each server's Prometheus metrics, scraped before, during and after.

Client latency says how slow a route felt; the server's counters and histograms say why (queue,
prefill, decode, KV-cache pressure, preemptions). Samples are stored raw in `server_metrics`
(one row per Prometheus sample, incl. _sum/_count/_bucket) with the engine-neutral quantity its
engine maps it to; harness/store/views.py turns them into per-route figures.
"""

from __future__ import annotations

import json
import logging
import threading
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from harness.serving.engines import Engine, default_engine
from harness.store import BatchWriter
from harness.store.views import metric_deltas, server_summary  # noqa: F401  (the views of what is scraped here)

log = logging.getLogger(__name__)

PHASES = ("before", "during", "after")


def metrics_url(base_url: str, path: str = "/metrics") -> str:
    """`http://host:port/v1` -> `http://host:port/metrics` (servers serve metrics at the root)."""
    root = base_url.rstrip("/")
    if root.endswith("/v1"):
        root = root[: -len("/v1")]
    return root + path


def parse_metrics(text: str, families: frozenset[str] | None = None, buckets: bool = True) -> list[dict[str, Any]]:
    """Prometheus text -> [{metric, labels, value}], keeping `families` (None keeps all)."""
    samples = []
    for family in text_string_to_metric_families(text):
        base = family.name.removesuffix("_total")
        if families is not None and base not in families:
            continue
        for s in family.samples:
            if s.name.endswith("_created") or (not buckets and s.name.endswith("_bucket")):
                continue
            samples.append({"metric": s.name, "labels": dict(s.labels), "value": float(s.value)})
    return samples


def scrape(
    client: httpx.Client,
    base_url: str,
    engine: Engine,
    *,
    run_id: str | None,
    route: str,
    phase: str,
    buckets: bool = True,
) -> list[dict[str, Any]]:
    """One scrape of one server as `server_metrics` rows. Raises httpx errors."""
    if phase not in PHASES:
        raise ValueError(f"phase must be one of {PHASES}, got {phase!r}")
    response = client.get(metrics_url(base_url, engine.metrics_path))
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
            "quantity": engine.quantities.get(s["metric"]),
        }
        for s in parse_metrics(response.text, engine.metric_families, buckets=buckets)
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
    engines: dict[str, Engine] = field(default_factory=dict)  # route name -> its engine (default: serve.engine's default)
    errors: list[str] = field(default_factory=list)
    scrapes: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._client = httpx.Client(timeout=self.timeout_s, trust_env=False)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _engine(self, route: str) -> Engine:
        return self.engines.get(route) or default_engine()

    def scrape_all(self, phase: str) -> int:
        rows: list[dict[str, Any]] = []
        for route, base_url in self.base_urls.items():
            try:
                engine = self._engine(route)
                rows += scrape(self._client, base_url, engine, run_id=self.run_id, route=route, phase=phase, buckets=self.buckets)
                self.scrapes[phase] = self.scrapes.get(phase, 0) + 1
            except (httpx.HTTPError, ValueError) as e:
                message = f"route {route}: {phase} scrape of {metrics_url(base_url, self._engine(route).metrics_path)} failed: {type(e).__name__}: {e}"
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
