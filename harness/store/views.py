"""Every figure derived from the store, defined once, in DuckDB SQL: `runs`, `runs --detail`,
`report` and `gate` read them from here, so two commands never print two values for one fact.

Engine-neutral by construction: server spans and metrics are read through the typed columns and
quantity names that each serving engine maps at ingest (harness/serving/engines/).
"""

from __future__ import annotations

from typing import Any

from typing import TYPE_CHECKING

import duckdb

if TYPE_CHECKING:  # pandas only for annotations here: `routecheck --help` and `runs` start faster
    import pandas as pd

# -- measured calls --------------------------------------------------------------------------------

# The calls every figure is about. Warm-up calls (sent per route before measurement, marked
# `responses.warmup`, samples < 0) are stored for inspection but never reported, scored or counted:
# every reader of responses goes through this subquery (or the `measured_responses` view).
MEASURED_RESPONSES_SQL = "SELECT * FROM responses WHERE NOT coalesce(warmup, false)"
MEASURED_RESPONSES = f"({MEASURED_RESPONSES_SQL})"

# -- runs ------------------------------------------------------------------------------------------

RUNS_SQL = f"""
SELECT r.run_id, r.status, r.started_at, r.finished_at,
       date_diff('millisecond', r.started_at, coalesce(r.finished_at, now())) / 1000.0 AS duration_s,
       r.n_prompts AS prompts,
       count(x.route)                                          AS responses,
       count(x.route) FILTER (WHERE x.error_type IS NOT NULL)   AS errors,
       r.n_expected AS expected,
       r.corpus_path
FROM runs r LEFT JOIN {MEASURED_RESPONSES} x USING (run_id)
GROUP BY ALL ORDER BY r.started_at DESC
"""


def list_runs(con: duckdb.DuckDBPyConnection) -> pd.DataFrame:
    return con.execute(RUNS_SQL).df()


class RunIdError(LookupError):
    """A run id that names no run, or several; the message says which runs exist."""


def resolve_run_id(con: duckdb.DuckDBPyConnection, run_id: str) -> str:
    """`latest` (or a unique prefix) names a run; errors say which runs exist."""
    if not run_id.strip():
        raise RunIdError("the run id is empty; give a run id, a unique prefix of one, or 'latest'")
    if run_id == "latest":
        row = con.execute("SELECT run_id FROM runs ORDER BY started_at DESC LIMIT 1").fetchone()
        if row is None:
            raise RunIdError("the store has no runs yet (run `routecheck mirror` first)")
        return row[0]
    rows = con.execute("SELECT run_id FROM runs WHERE starts_with(run_id, ?)", [run_id]).fetchall()
    if len(rows) == 1:
        return rows[0][0]
    if not rows:
        raise RunIdError(f"no run {run_id!r} in the store (`routecheck runs` lists them)")
    raise RunIdError(f"{run_id!r} matches {len(rows)} runs; give more of the id")


# -- route summaries -------------------------------------------------------------------------------

# Latency, TTFT and throughput are over successful calls only (a failed call's latency is the
# time it took to fail); error and timeout rates are over all calls. One row per (route, cohort)
# and one per route (cohort NULL).
ROUTE_SUMMARY_SQL = f"""
SELECT route, any_value(role) AS role, coalesce(cohort, 'default') AS cohort,
       count(*)                                                        AS calls,
       count(DISTINCT prompt_id)                                       AS prompts,
       count(*) FILTER (WHERE error_type IS NOT NULL)                  AS errors,
       count(*) FILTER (WHERE timed_out)                               AS timeouts,
       quantile_cont(latency_s, 0.5)  FILTER (WHERE error_type IS NULL) AS latency_p50_s,
       quantile_cont(latency_s, 0.95) FILTER (WHERE error_type IS NULL) AS latency_p95_s,
       quantile_cont(latency_s, 0.99) FILTER (WHERE error_type IS NULL) AS latency_p99_s,
       quantile_cont(ttft_s, 0.5)     FILTER (WHERE error_type IS NULL) AS ttft_p50_s,
       quantile_cont(ttft_s, 0.99)    FILTER (WHERE error_type IS NULL) AS ttft_p99_s,
       sum(input_tokens)                                               AS input_tokens,
       sum(output_tokens)                                              AS output_tokens,
       sum(output_tokens) FILTER (WHERE error_type IS NULL)
         / nullif(sum(latency_s) FILTER (WHERE error_type IS NULL), 0) AS output_tokens_per_s,
       sum(output_tokens) FILTER (WHERE error_type IS NULL)
         / nullif(sum(latency_s - coalesce(ttft_s, 0)) FILTER (WHERE error_type IS NULL), 0) AS decode_tokens_per_s,
       avg(coalesce(total_tokens, coalesce(input_tokens, 0) + coalesce(output_tokens, 0))) AS tokens_per_trace,
       avg(coalesce(input_tokens, 0))                                  AS input_tokens_mean,
       avg(coalesce(output_tokens, 0))                                 AS output_tokens_mean,
       avg(CAST(error_type IS NOT NULL AS DOUBLE))                     AS error_rate,
       avg(CAST(coalesce(timed_out, false) AS DOUBLE))                 AS timeout_rate
FROM {MEASURED_RESPONSES} WHERE run_id = $run
GROUP BY GROUPING SETS ((route, coalesce(cohort, 'default')), (route))
"""

# What `runs --detail` and the end of `mirror` print per route.
ROUTE_COLUMNS = ("route", "role", "calls", "errors", "timeouts", "latency_p50_s", "latency_p99_s", "ttft_p50_s",
                 "ttft_p99_s", "input_tokens", "output_tokens", "decode_tokens_per_s")


def route_cohort_summary(con: duckdb.DuckDBPyConnection, run_id: str) -> pd.DataFrame:
    """Per (route, cohort) and per route (cohort NULL) serving figures."""
    return con.execute(ROUTE_SUMMARY_SQL, {"run": run_id}).df()


def route_summary(con: duckdb.DuckDBPyConnection, run_id: str) -> pd.DataFrame:
    """One row per route: the overall rows of `route_cohort_summary`."""
    df = route_cohort_summary(con, run_id)
    df = df[df["cohort"].isna()]
    order = df["role"].map({"baseline": 0}).fillna(1)
    return df.assign(_o=order).sort_values(["_o", "route"])[list(ROUTE_COLUMNS)].reset_index(drop=True)


# -- server-side timings ---------------------------------------------------------------------------

# Each response beside its serving engine's own per-request span (a child of the call span through
# the traceparent header); NULL where none arrived. Engines map their span attributes to these
# typed columns when the span is received.
RESPONSE_TIMINGS_SQL = f"""
SELECT r.run_id, r.prompt_id, r.route, r.sample, r.cohort, r.started_at,
       r.latency_s, r.ttft_s,
       s.queue_s   AS server_queue_s,
       s.prefill_s AS server_prefill_s,
       s.decode_s  AS server_decode_s,
       s.ttft_s    AS server_ttft_s,
       s.e2e_s     AS server_e2e_s
FROM {MEASURED_RESPONSES} r
LEFT JOIN spans s ON s.trace_id = r.trace_id AND s.parent_span_id = r.span_id AND s.engine IS NOT NULL
"""


def server_timings(con: duckdb.DuckDBPyConnection, run_id: str) -> pd.DataFrame:
    """Each response with the server's own queue / prefill / decode / TTFT / e2e seconds (NULL where
    no server span arrived), and the time spent outside the server (client latency minus server
    e2e: network, HTTP, streaming)."""
    return con.execute(
        f"SELECT *, latency_s - server_e2e_s AS outside_server_s FROM ({RESPONSE_TIMINGS_SQL}) "
        "WHERE run_id = $run_id ORDER BY route, prompt_id, sample",
        {"run_id": run_id},
    ).df()


SERVER_PHASES_SQL = f"""
SELECT route, coalesce(cohort, 'default') AS cohort, count(server_e2e_s) AS server_spans,
       avg(latency_s) AS client_latency_mean_s, avg(server_e2e_s) AS server_e2e_mean_s,
       avg(server_queue_s) AS queue_mean_s, quantile_cont(server_queue_s, 0.99) AS queue_p99_s,
       avg(server_prefill_s) AS prefill_mean_s, quantile_cont(server_prefill_s, 0.99) AS prefill_p99_s,
       avg(server_decode_s) AS decode_mean_s, quantile_cont(server_decode_s, 0.99) AS decode_p99_s
FROM ({RESPONSE_TIMINGS_SQL}) WHERE run_id = $run AND server_e2e_s IS NOT NULL
GROUP BY GROUPING SETS ((route, coalesce(cohort, 'default')), (route))
"""


def server_phases(con: duckdb.DuckDBPyConnection, run_id: str) -> pd.DataFrame:
    """Per (route, cohort) and per route (cohort NULL): how many server spans, and the mean and p99
    of queue, prefill and decode time as the server measured them."""
    return con.execute(SERVER_PHASES_SQL, {"run": run_id}).df()


# -- server metrics (Prometheus scrapes) -----------------------------------------------------------

# The last scrape of each phase per sample; a counter lower after than before means the server
# restarted, so it counts from zero.
_LAST_PER_PHASE = """
WITH last_per_phase AS (
    SELECT run_id, route, phase, metric, any_value(quantity) AS quantity, labels, arg_max(value, scraped_at) AS value
    FROM server_metrics
    WHERE run_id = $run_id AND phase IN ('before', 'after')
    GROUP BY run_id, route, phase, metric, labels
),
deltas AS (
    SELECT a.run_id, a.route, a.metric, a.quantity, a.labels, b.value AS before, a.value AS after,
           CASE WHEN b.value IS NULL OR a.value < b.value THEN a.value ELSE a.value - b.value END AS delta
    FROM last_per_phase a
    LEFT JOIN last_per_phase b
      ON b.phase = 'before' AND a.route = b.route AND a.metric = b.metric AND a.labels = b.labels
    WHERE a.phase = 'after'
)
"""

METRIC_DELTAS_SQL = _LAST_PER_PHASE + """
SELECT run_id, route, metric, quantity, labels, before, after, delta
FROM deltas WHERE regexp_matches(metric, '_(total|sum|count)$')
ORDER BY route, metric, labels
"""


def metric_deltas(con: duckdb.DuckDBPyConnection, run_id: str) -> pd.DataFrame:
    """Per route and labelled sample, counter and histogram _sum/_count changes over the run."""
    return con.execute(METRIC_DELTAS_SQL, {"run_id": run_id}).df()


# Quantities (engine-neutral names) that the summary turns into figures: counters are summed over
# labels; means are a histogram's sum / count.
_COUNTERS = {"requests": "requests", "prompt_tokens": "prompt_tokens", "generation_tokens": "generation_tokens",
             "preemptions": "preemptions"}
_MEANS = {"ttft_mean_s": "ttft_seconds", "itl_mean_s": "itl_seconds", "e2e_mean_s": "e2e_seconds",
          "queue_mean_s": "queue_seconds", "prefill_mean_s": "prefill_seconds", "decode_mean_s": "decode_seconds"}


def _server_summary_sql() -> str:
    def total(q: str) -> str:
        return f"sum(delta) FILTER (WHERE quantity = '{q}')"

    cols = [f"{total(q)} AS {name}" for name, q in _COUNTERS.items()]
    cols += [f"{total(q + '_sum')} / nullif({total(q + '_count')}, 0) AS {name}" for name, q in _MEANS.items()]
    cols.append(f"{total('prefix_cache_hits')} / nullif({total('prefix_cache_queries')}, 0) AS prefix_cache_hit_rate")
    return _LAST_PER_PHASE + f"""
, per_route AS (SELECT route, {', '.join(cols)} FROM deltas GROUP BY route),
peak AS (
    SELECT route, max(value) AS kv_cache_usage_peak
    FROM server_metrics WHERE run_id = $run_id AND quantity = 'kv_cache_usage' GROUP BY route
)
SELECT w.route, w.requests, w.prompt_tokens, w.generation_tokens, w.ttft_mean_s, w.itl_mean_s, w.e2e_mean_s,
       w.queue_mean_s, w.prefill_mean_s, w.decode_mean_s, w.prefix_cache_hit_rate, w.preemptions, p.kv_cache_usage_peak
FROM per_route w LEFT JOIN peak p USING (route)
ORDER BY w.route
"""


SERVER_SUMMARY_SQL = _server_summary_sql()


def server_summary(con: duckdb.DuckDBPyConnection, run_id: str) -> pd.DataFrame:
    """One row per route: requests, tokens, mean TTFT/ITL/e2e/queue/prefill/decode seconds as the
    server measured them, prefix-cache hit rate, preemptions and peak KV-cache usage (0..1).
    Empty when the run has no before/after scrapes."""
    return con.execute(SERVER_SUMMARY_SQL, {"run_id": run_id}).df()


# The report's server panel: load and pressure, one row per (route, quantity), labels summed.
_PANEL_QUANTITIES = ("requests", "prompt_tokens", "generation_tokens", "preemptions", "requests_running",
                     "requests_waiting", "kv_cache_usage")
SERVER_PANEL_SQL = """
WITH per_scrape AS (
    SELECT route, metric, phase, scraped_at, sum(value) AS value
    FROM server_metrics
    WHERE run_id = $run_id AND list_contains($quantities, quantity)
    GROUP BY ALL
),
wide AS (
    SELECT route, metric,
           arg_max(value, scraped_at) FILTER (WHERE phase = 'before') AS before,
           arg_max(value, scraped_at) FILTER (WHERE phase = 'after')  AS after,
           max(value) FILTER (WHERE phase = 'during')                 AS peak_during
    FROM per_scrape GROUP BY route, metric
)
SELECT route, metric, before, after,
       CASE WHEN before IS NULL OR after < before THEN after ELSE after - before END AS delta, peak_during
FROM wide ORDER BY route, metric
"""


def server_panel(con: duckdb.DuckDBPyConnection, run_id: str) -> pd.DataFrame:
    """Per route and metric: before, after, change over the run (restart-aware) and peak during it."""
    return con.execute(SERVER_PANEL_SQL, {"run_id": run_id, "quantities": list(_PANEL_QUANTITIES)}).df()


# -- agent trajectories ---------------------------------------------------------------------------

# Per (route, cohort) and per route (cohort NULL), over the run's trajectories (responses with
# steps): how many, steps taken, why they stopped, tokens per trace (summed over steps), and the
# mean step_accuracy score where scored. Cost per trace is these tokens at the route's prices
# (harness/report/load.py, `cost_per_trace`).
TRAJECTORY_SUMMARY_SQL = f"""
SELECT r.route, coalesce(r.cohort, 'default') AS cohort,
       count(*)                                                   AS trajectories,
       avg(r.steps)                                               AS steps_mean,
       max(r.steps)                                               AS steps_max,
       count(*) FILTER (WHERE r.stop_reason = 'answer')           AS answered,
       count(*) FILTER (WHERE r.stop_reason = 'max_steps')        AS max_steps,
       count(*) FILTER (WHERE r.stop_reason = 'unscripted_tool')  AS unscripted_tool,
       count(*) FILTER (WHERE r.stop_reason = 'error')            AS error,
       avg(s.score)                                               AS step_accuracy,
       avg(coalesce(r.total_tokens, coalesce(r.input_tokens, 0) + coalesce(r.output_tokens, 0))) AS tokens_per_trace,
       avg(coalesce(r.input_tokens, 0))                           AS input_tokens_mean,
       avg(coalesce(r.output_tokens, 0))                          AS output_tokens_mean
FROM {MEASURED_RESPONSES} r
LEFT JOIN scores s ON s.run_id = r.run_id AND s.prompt_id = r.prompt_id AND s.route = r.route AND s.sample = r.sample
                  AND s.evaluator = 'step_accuracy' AND s.applicable
WHERE r.run_id = $run AND r.steps IS NOT NULL
GROUP BY GROUPING SETS ((r.route, coalesce(r.cohort, 'default')), (r.route))
"""


def trajectory_summary(con: duckdb.DuckDBPyConnection, run_id: str) -> pd.DataFrame:
    """Per (route, cohort) and per route (cohort NULL) figures of the run's agent trajectories;
    empty when the run has none (or the store predates trajectories: schema version < 3)."""
    has = con.execute("SELECT count(*) FROM information_schema.columns WHERE table_name = 'responses' "
                      "AND column_name = 'steps'").fetchone()[0]
    if not has:
        import pandas as pd

        return pd.DataFrame(columns=["route", "cohort"])
    return con.execute(TRAJECTORY_SUMMARY_SQL, {"run": run_id}).df()


# Views kept in the file, for `routecheck sql` and other DuckDB clients.
VIEWS: dict[str, str] = {"measured_responses": MEASURED_RESPONSES_SQL, "response_timings": RESPONSE_TIMINGS_SQL}

__all__: list[Any] = ["MEASURED_RESPONSES", "list_runs", "resolve_run_id", "route_summary", "route_cohort_summary", "server_timings",
                      "server_phases", "metric_deltas", "server_summary", "server_panel", "trajectory_summary", "VIEWS"]
