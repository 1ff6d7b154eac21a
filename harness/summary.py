"""Per-route and per-run summaries read from the store (SQL where the data lives)."""

from __future__ import annotations

import duckdb
import pandas as pd

ROUTE_SUMMARY_SQL = """
SELECT route,
       any_value(role)                                       AS role,
       count(*)                                              AS calls,
       count(*) FILTER (WHERE error_type IS NOT NULL)         AS errors,
       count(*) FILTER (WHERE timed_out)                      AS timeouts,
       quantile_cont(latency_s, 0.5)                          AS latency_p50_s,
       quantile_cont(latency_s, 0.99)                         AS latency_p99_s,
       quantile_cont(ttft_s, 0.5)                             AS ttft_p50_s,
       quantile_cont(ttft_s, 0.99)                            AS ttft_p99_s,
       sum(input_tokens)                                      AS input_tokens,
       sum(output_tokens)                                     AS output_tokens,
       sum(output_tokens) / nullif(sum(latency_s - coalesce(ttft_s, 0)), 0) AS decode_tokens_per_s
FROM responses WHERE run_id = ? GROUP BY route ORDER BY role, route
"""

RUNS_SQL = """
SELECT r.run_id, r.status, r.started_at, r.finished_at,
       date_diff('millisecond', r.started_at, coalesce(r.finished_at, now())) / 1000.0 AS duration_s,
       r.n_prompts AS prompts,
       count(x.route)                                          AS responses,
       count(x.route) FILTER (WHERE x.error_type IS NOT NULL)   AS errors,
       r.n_expected AS expected,
       r.corpus_path
FROM runs r LEFT JOIN responses x USING (run_id)
GROUP BY ALL ORDER BY r.started_at DESC
"""


def route_summary(con: duckdb.DuckDBPyConnection, run_id: str) -> pd.DataFrame:
    return con.execute(ROUTE_SUMMARY_SQL, [run_id]).df()


def list_runs(con: duckdb.DuckDBPyConnection) -> pd.DataFrame:
    return con.execute(RUNS_SQL).df()


def resolve_run_id(con: duckdb.DuckDBPyConnection, run_id: str) -> str:
    """`latest` (or a unique prefix) names a run; errors say which runs exist."""
    if run_id == "latest":
        row = con.execute("SELECT run_id FROM runs ORDER BY started_at DESC LIMIT 1").fetchone()
        if row is None:
            raise LookupError("the store has no runs yet (run `routecheck mirror` first)")
        return row[0]
    rows = con.execute("SELECT run_id FROM runs WHERE starts_with(run_id, ?)", [run_id]).fetchall()
    if len(rows) == 1:
        return rows[0][0]
    if not rows:
        raise LookupError(f"no run {run_id!r} in the store (`routecheck runs` lists them)")
    raise LookupError(f"{run_id!r} matches {len(rows)} runs; give more of the id")
