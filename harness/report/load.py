"""Read what the report needs from the store, aggregated in DuckDB SQL.

Samples are averaged within a prompt here (quality and per-prompt serving means), so the
statistics downstream see one row per prompt and route.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import duckdb
import numpy as np
import pandas as pd


class ReportError(ValueError):
    """The run cannot be reported on (unknown run, no baseline, nothing to compare)."""


@dataclass
class RouteInfo:
    name: str
    role: str
    architecture: str = "dense"
    input_per_mtok: float = 0.0
    output_per_mtok: float = 0.0
    model: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def load_routes(con: duckdb.DuckDBPyConnection, run_id: str) -> list[RouteInfo]:
    """Routes of the run: the runs.routes snapshot, else the roles seen in responses."""
    row = con.execute("SELECT routes FROM runs WHERE run_id = ?", [run_id]).fetchone()
    seen = con.execute("SELECT route, any_value(role) FROM responses WHERE run_id = ? GROUP BY route ORDER BY route",
                       [run_id]).fetchall()
    if row is None and not seen:
        raise ReportError(f"no run {run_id!r} in the store (`routecheck runs` lists them)")
    routes: dict[str, RouteInfo] = {}
    if row is not None and row[0]:
        for r in json.loads(row[0]) if isinstance(row[0], str) else row[0]:
            prices = r.get("prices") or {}
            routes[r["name"]] = RouteInfo(
                name=r["name"], role=r.get("role", "candidate"), architecture=r.get("architecture") or "dense",
                input_per_mtok=float(prices.get("input_per_mtok") or 0.0),
                output_per_mtok=float(prices.get("output_per_mtok") or 0.0), model=r.get("model"),
                extra={k: r.get(k) for k in ("total_params", "active_params", "num_experts", "active_experts") if r.get(k)},
            )
    for name, role in seen:
        routes.setdefault(name, RouteInfo(name=name, role=role or "candidate"))
    return list(routes.values())


def split_roles(routes: list[RouteInfo]) -> tuple[RouteInfo, list[RouteInfo]]:
    baselines = [r for r in routes if r.role == "baseline"]
    if len(baselines) != 1:
        raise ReportError(f"the run needs exactly one baseline route; found {len(baselines)}: {[r.name for r in baselines]}")
    candidates = [r for r in routes if r.role != "baseline"]
    if not candidates:
        raise ReportError(f"the run has only the baseline route {baselines[0].name!r}; nothing to compare")
    return baselines[0], candidates


# One row per (candidate, evaluator, prompt) with both routes' per-prompt means.
QUALITY_SQL = """
WITH cohorts AS (
    SELECT prompt_id, any_value(cohort) AS cohort FROM responses WHERE run_id = $run GROUP BY prompt_id
), q AS (
    SELECT route, evaluator, prompt_id,
           avg(score)                  AS score,
           avg(CAST(passed AS DOUBLE)) AS pass_rate,
           count(*)                    AS n_samples
    FROM scores
    WHERE run_id = $run AND coalesce(applicable, score IS NOT NULL OR passed IS NOT NULL)
    GROUP BY ALL
)
SELECT c.route AS candidate, c.evaluator, c.prompt_id, coalesce(h.cohort, 'default') AS cohort,
       b.score AS base_score, c.score AS cand_score, b.pass_rate AS base_pass_rate, c.pass_rate AS cand_pass_rate,
       b.n_samples AS base_samples, c.n_samples AS cand_samples
FROM q c
JOIN q b ON b.prompt_id = c.prompt_id AND b.evaluator = c.evaluator AND b.route = $baseline
LEFT JOIN cohorts h ON h.prompt_id = c.prompt_id
WHERE c.route <> $baseline
"""

# Scored prompts present for one route only: reported, never silently dropped.
UNPAIRED_SQL = """
WITH q AS (SELECT DISTINCT route, evaluator, prompt_id FROM scores
           WHERE run_id = $run AND coalesce(applicable, score IS NOT NULL OR passed IS NOT NULL))
SELECT route, evaluator, count(*) AS n FROM q
WHERE NOT EXISTS (SELECT 1 FROM q o WHERE o.prompt_id = q.prompt_id AND o.evaluator = q.evaluator AND o.route <> q.route)
GROUP BY ALL
"""


def load_quality(con: duckdb.DuckDBPyConnection, run_id: str, baseline: str) -> pd.DataFrame:
    return con.execute(QUALITY_SQL, {"run": run_id, "baseline": baseline}).df()


def load_unpaired(con: duckdb.DuckDBPyConnection, run_id: str) -> pd.DataFrame:
    return con.execute(UNPAIRED_SQL, {"run": run_id}).df()


def evaluator_kinds(quality: pd.DataFrame) -> dict[str, tuple[bool, bool]]:
    """evaluator -> (has pass/fail, has scores)."""
    if quality.empty:
        return {}
    g = quality.groupby("evaluator")
    has_pass = g["cand_pass_rate"].count() > 0
    has_score = g["cand_score"].count() > 0
    # A score that is just the pass/fail bit again would double-count one test.
    same = (quality["cand_score"] == quality["cand_pass_rate"]) & (quality["base_score"] == quality["base_pass_rate"])
    redundant = same.groupby(quality["evaluator"]).all()
    return {ev: (bool(has_pass[ev]), bool(has_score[ev]) and not (has_pass[ev] and redundant[ev])) for ev in sorted(g.groups)}


# Per (route, prompt) means of the serving figures; cost is priced in pandas.
SERVING_PROMPT_SQL = """
SELECT route, prompt_id, coalesce(any_value(cohort), 'default') AS cohort,
       avg(CAST(error_type IS NOT NULL AS DOUBLE))                                  AS error,
       avg(CAST(coalesce(timed_out, false) AS DOUBLE))                              AS timeout,
       avg(coalesce(input_tokens, 0))                                               AS input_tokens,
       avg(coalesce(output_tokens, 0))                                              AS output_tokens,
       avg(coalesce(total_tokens, coalesce(input_tokens, 0) + coalesce(output_tokens, 0))) AS tokens,
       avg(output_tokens / latency_s) FILTER (WHERE error_type IS NULL AND latency_s > 0) AS out_tps
FROM responses WHERE run_id = $run
GROUP BY route, prompt_id
"""


def load_serving_prompts(con: duckdb.DuckDBPyConnection, run_id: str, routes: list[RouteInfo]) -> pd.DataFrame:
    df = con.execute(SERVING_PROMPT_SQL, {"run": run_id}).df()
    price_in = df["route"].map({r.name: r.input_per_mtok for r in routes}).fillna(0.0)
    price_out = df["route"].map({r.name: r.output_per_mtok for r in routes}).fillna(0.0)
    df["cost"] = (df["input_tokens"] * price_in + df["output_tokens"] * price_out) / 1e6
    return df


def paired_prompt_frame(serving: pd.DataFrame, baseline: str, candidate: str) -> pd.DataFrame:
    """Baseline and candidate per-prompt rows side by side (inner join: both answered)."""
    b = serving[serving["route"] == baseline].drop(columns="route")
    c = serving[serving["route"] == candidate].drop(columns=["route", "cohort"])
    return b.merge(c, on="prompt_id", suffixes=("_base", "_cand"))


RESPONSE_TIMES_SQL = """
SELECT prompt_id, route, sample, coalesce(cohort, 'default') AS cohort,
       CASE WHEN error_type IS NULL THEN latency_s END AS latency_s,
       CASE WHEN error_type IS NULL THEN ttft_s END    AS ttft_s
FROM responses WHERE run_id = $run
"""


@dataclass
class TimeMatrices:
    """Per-response times as (prompts x samples) arrays, NaN where a call failed or is missing."""

    prompt_ids: np.ndarray
    cohorts: np.ndarray
    values: dict[tuple[str, str], np.ndarray]   # (route, column) -> matrix


def load_time_matrices(con: duckdb.DuckDBPyConnection, run_id: str, routes: list[str]) -> TimeMatrices:
    df = con.execute(RESPONSE_TIMES_SQL, {"run": run_id}).df()
    codes, prompt_ids = pd.factorize(df["prompt_id"], sort=True)
    n = len(prompt_ids)
    k = int(df["sample"].max()) + 1 if len(df) else 1
    sample = df["sample"].to_numpy().clip(0, k - 1)
    cohorts = np.empty(n, dtype=object)
    cohorts[codes] = df["cohort"].to_numpy()
    values = {}
    route_col = df["route"].to_numpy()
    for route in routes:
        mask = route_col == route
        for col in ("latency_s", "ttft_s"):
            m = np.full((n, k), np.nan)
            m[codes[mask], sample[mask]] = df[col].to_numpy(dtype=float, na_value=np.nan)[mask]
            values[(route, col)] = m
    return TimeMatrices(np.asarray(prompt_ids), cohorts, values)


SERVING_SUMMARY_SQL = """
SELECT route, coalesce(cohort, 'default') AS cohort, count(*) AS responses, count(DISTINCT prompt_id) AS prompts,
       quantile_cont(latency_s, 0.5)  FILTER (WHERE error_type IS NULL) AS latency_p50_s,
       quantile_cont(latency_s, 0.95) FILTER (WHERE error_type IS NULL) AS latency_p95_s,
       quantile_cont(latency_s, 0.99) FILTER (WHERE error_type IS NULL) AS latency_p99_s,
       quantile_cont(ttft_s, 0.5)     FILTER (WHERE error_type IS NULL) AS ttft_p50_s,
       quantile_cont(ttft_s, 0.99)    FILTER (WHERE error_type IS NULL) AS ttft_p99_s,
       sum(output_tokens) FILTER (WHERE error_type IS NULL)
         / nullif(sum(latency_s) FILTER (WHERE error_type IS NULL), 0)     AS output_tokens_per_s,
       avg(coalesce(total_tokens, coalesce(input_tokens, 0) + coalesce(output_tokens, 0))) AS tokens_per_trace,
       avg(coalesce(input_tokens, 0))  AS input_tokens_mean,
       avg(coalesce(output_tokens, 0)) AS output_tokens_mean,
       avg(CAST(error_type IS NOT NULL AS DOUBLE))       AS error_rate,
       avg(CAST(coalesce(timed_out, false) AS DOUBLE))   AS timeout_rate
FROM responses WHERE run_id = $run
GROUP BY GROUPING SETS ((route, coalesce(cohort, 'default')), (route))
"""


def load_serving_summary(con: duckdb.DuckDBPyConnection, run_id: str, routes: list[RouteInfo]) -> pd.DataFrame:
    df = con.execute(SERVING_SUMMARY_SQL, {"run": run_id}).df()
    df["scope"] = np.where(df["cohort"].isna(), "overall", "cohort")
    df["cohort"] = df["cohort"].fillna("(all)")
    price_in = df["route"].map({r.name: r.input_per_mtok for r in routes}).fillna(0.0)
    price_out = df["route"].map({r.name: r.output_per_mtok for r in routes}).fillna(0.0)
    df["cost_per_trace_usd"] = (df["input_tokens_mean"] * price_in + df["output_tokens_mean"] * price_out) / 1e6
    return df


# Server-side phases: vLLM's llm_request span is a child of the client's call span.
SERVER_SPANS_SQL = """
WITH s AS (
    SELECT r.route, coalesce(r.cohort, 'default') AS cohort,
           TRY_CAST(s.attributes->>'$."gen_ai.latency.time_in_queue"' AS DOUBLE)         AS queue_s,
           TRY_CAST(s.attributes->>'$."gen_ai.latency.time_in_model_prefill"' AS DOUBLE) AS prefill_s,
           TRY_CAST(s.attributes->>'$."gen_ai.latency.time_in_model_decode"' AS DOUBLE)  AS decode_s
    FROM spans s JOIN responses r ON s.parent_span_id = r.span_id AND s.trace_id = r.trace_id
    WHERE r.run_id = $run AND s.name = 'llm_request'
)
SELECT route, cohort, count(*) AS server_spans,
       avg(queue_s) AS queue_mean_s, quantile_cont(queue_s, 0.99) AS queue_p99_s,
       avg(prefill_s) AS prefill_mean_s, quantile_cont(prefill_s, 0.99) AS prefill_p99_s,
       avg(decode_s) AS decode_mean_s, quantile_cont(decode_s, 0.99) AS decode_p99_s
FROM s GROUP BY GROUPING SETS ((route, cohort), (route))
"""


def load_server_spans(con: duckdb.DuckDBPyConnection, run_id: str) -> pd.DataFrame:
    df = con.execute(SERVER_SPANS_SQL, {"run": run_id}).df()
    df["cohort"] = df["cohort"].fillna("(all)")
    return df


# Counters: after minus before; gauges: the peak seen during the run. Labels summed per scrape.
SERVER_METRICS_SQL = """
WITH per_scrape AS (
    SELECT route, metric, phase, scraped_at, sum(value) AS value
    FROM server_metrics
    WHERE run_id = $run AND metric NOT LIKE '%\\_bucket' ESCAPE '\\' AND metric NOT LIKE '%\\_created' ESCAPE '\\'
      AND (metric LIKE '%preemption%' OR metric LIKE '%requests_waiting%' OR metric LIKE '%requests_running%'
           OR metric LIKE '%cache_usage%' OR metric LIKE '%prompt_tokens_total' OR metric LIKE '%generation_tokens_total'
           OR metric LIKE '%request_success_total')
    GROUP BY ALL
)
SELECT route, metric,
       arg_min(value, scraped_at) FILTER (WHERE phase = 'before') AS before,
       arg_max(value, scraped_at) FILTER (WHERE phase = 'after')  AS after,
       max(value) FILTER (WHERE phase = 'during')                 AS peak_during
FROM per_scrape GROUP BY route, metric ORDER BY route, metric
"""


def load_server_metrics(con: duckdb.DuckDBPyConnection, run_id: str) -> pd.DataFrame:
    df = con.execute(SERVER_METRICS_SQL, {"run": run_id}).df()
    df["delta"] = df["after"] - df["before"]
    return df


def prompt_texts(con: duckdb.DuckDBPyConnection, run_id: str, prompt_ids: list[str] | None = None) -> pd.DataFrame:
    """prompt_id, cohort, text (the user turns joined) from prompts.messages."""
    sql = """
        SELECT prompt_id, coalesce(cohort, 'default') AS cohort,
               coalesce(string_agg(m->>'content', '\n') FILTER (WHERE m->>'role' = 'user'), '') AS text
        FROM (SELECT prompt_id, cohort, unnest(CAST(messages AS JSON[])) AS m FROM prompts WHERE run_id = $run {extra})
        GROUP BY prompt_id, cohort
    """
    params: dict[str, Any] = {"run": run_id}
    extra = ""
    if prompt_ids is not None:
        extra = "AND list_contains($ids, prompt_id)"
        params["ids"] = list(prompt_ids)
    return con.execute(sql.format(extra=extra), params).df()


def response_texts(con: duckdb.DuckDBPyConnection, run_id: str, prompt_ids: list[str], routes: list[str]) -> pd.DataFrame:
    return con.execute(
        """SELECT prompt_id, route, text, error_type FROM responses
           WHERE run_id = $run AND sample = 0 AND list_contains($ids, prompt_id) AND list_contains($routes, route)""",
        {"run": run_id, "ids": list(prompt_ids), "routes": list(routes)},
    ).df()
