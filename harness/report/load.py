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

from harness.store import views


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
    checkpoint: str | None = None   # what it serves: serve.model (+ args), else the model name (A/A detection)


def load_routes(con: duckdb.DuckDBPyConnection, run_id: str) -> list[RouteInfo]:
    """Routes of the run: the runs.routes snapshot, else the roles seen in responses."""
    row = con.execute("SELECT routes FROM runs WHERE run_id = ?", [run_id]).fetchone()
    seen = con.execute(f"SELECT route, any_value(role) FROM {views.MEASURED_RESPONSES} WHERE run_id = ? GROUP BY route ORDER BY route",
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
                extra={k: r.get(k) for k in ("total_params", "active_params", "num_experts", "active_experts", "capacity_factor")
                       if r.get(k) is not None},
                checkpoint=_checkpoint(r),
            )
    for name, role in seen:
        routes.setdefault(name, RouteInfo(name=name, role=role or "candidate"))
    return list(routes.values())


def proxy_notes(con: duckdb.DuckDBPyConnection, run_id: str) -> list[str]:
    """A `routecheck proxy` run: how many primary calls each mirrored route did not get, and why
    (the counts the proxy keeps in runs.options); nothing for a corpus run."""
    row = con.execute("SELECT options FROM runs WHERE run_id = ?", [run_id]).fetchone()
    opts = json.loads(row[0]) if row and isinstance(row[0], str) else (row[0] if row else None)
    if not isinstance(opts, dict) or opts.get("source") != "proxy":
        return []
    calls = opts.get("calls") or {}
    primary = calls.get("primary", 0)
    notes = []
    for route, c in sorted((calls.get("mirror") or {}).items()):
        missed = c.get("not_sampled", 0) + c.get("queue_full", 0) + c.get("shutdown", 0)
        notes.append(f"proxy run (primary {opts.get('primary')}): {missed} of {primary} primary calls were not mirrored "
                     f"to {route} ({c.get('not_sampled', 0)} not sampled, {c.get('queue_full', 0)} dropped with the "
                     f"mirror queue full, {c.get('shutdown', 0)} dropped at shutdown); only mirrored prompts are compared")
    return notes


def _checkpoint(snapshot: dict[str, Any]) -> str | None:
    """The checkpoint a route answers from: a served route's serve.model with its engine arguments
    (another dtype is another checkpoint), else the model name the endpoint is asked for."""
    serve = snapshot.get("serve") or {}
    if serve.get("model"):
        args = " ".join(map(str, serve.get("args") or []))
        return f"{serve['model']}" + (f" [{args}]" if args else "")
    return snapshot.get("model")


def split_roles(routes: list[RouteInfo]) -> tuple[RouteInfo, list[RouteInfo]]:
    baselines = [r for r in routes if r.role == "baseline"]
    if len(baselines) != 1:
        raise ReportError(f"the run needs exactly one baseline route; found {len(baselines)}: {[r.name for r in baselines]}")
    candidates = [r for r in routes if r.role != "baseline"]
    if not candidates:
        raise ReportError(f"the run has only the baseline route {baselines[0].name!r}; nothing to compare")
    return baselines[0], candidates


def distinct_cohorts(con: duckdb.DuckDBPyConnection, run_id: str) -> list[str]:
    rows = con.execute(f"SELECT DISTINCT coalesce(cohort, 'default') FROM {views.MEASURED_RESPONSES} WHERE run_id = ? ORDER BY 1", [run_id]).fetchall()
    return [r[0] for r in rows]


def _cohort_source(con: duckdb.DuckDBPyConnection, run_id: str) -> str:
    """The prompts table names each prompt's cohort; stores without it fall back to responses."""
    has_prompts = con.execute("SELECT count(*) > 0 FROM prompts WHERE run_id = ?", [run_id]).fetchone()[0]
    if has_prompts:
        return "(SELECT prompt_id, cohort FROM prompts WHERE run_id = $run)"
    return f"(SELECT prompt_id, any_value(cohort) AS cohort FROM {views.MEASURED_RESPONSES} WHERE run_id = $run GROUP BY prompt_id)"


# One row per (evaluator, prompt) with both routes' per-prompt means; strings come back as codes
# (evaluator, cohort) because turning a million strings into Python objects costs more than the SQL.
QUALITY_SQL = """
WITH q AS (
    SELECT evaluator, prompt_id,
           avg(score) FILTER (WHERE route = $baseline)                  AS base_score,
           avg(score) FILTER (WHERE route = $candidate)                 AS cand_score,
           avg(CAST(passed AS DOUBLE)) FILTER (WHERE route = $baseline)  AS base_pass_rate,
           avg(CAST(passed AS DOUBLE)) FILTER (WHERE route = $candidate) AS cand_pass_rate,
           count(*) FILTER (WHERE route = $baseline)                     AS base_samples,
           count(*) FILTER (WHERE route = $candidate)                    AS cand_samples
    FROM scores
    WHERE run_id = $run AND route IN ($baseline, $candidate)
      AND coalesce(applicable, score IS NOT NULL OR passed IS NOT NULL)
    GROUP BY evaluator, prompt_id
)
SELECT list_position($evaluators, q.evaluator) - 1 AS evaluator_code,
       list_position($cohorts, coalesce(h.cohort, 'default')) - 1 AS cohort_code,
       base_score, cand_score, base_pass_rate, cand_pass_rate, base_samples, cand_samples {ids}
FROM q LEFT JOIN {cohorts} h ON h.prompt_id = q.prompt_id
{where}
"""


def load_quality(con: duckdb.DuckDBPyConnection, run_id: str, baseline: str, candidates: list[str] | None = None,
                 with_ids: bool = False, cohort: str | None = None) -> pd.DataFrame:
    """Per (candidate, evaluator, prompt): baseline and candidate means over samples.

    Rows scored on one route only are kept (NaN on the other side) so callers can count them.
    """
    evaluators = [r[0] for r in con.execute("SELECT DISTINCT evaluator FROM scores WHERE run_id = ? ORDER BY 1", [run_id]).fetchall()]
    cohorts = distinct_cohorts(con, run_id)
    if candidates is None:
        candidates = [r[0] for r in con.execute("SELECT DISTINCT route FROM scores WHERE run_id = ? AND route <> ? ORDER BY 1",
                                               [run_id, baseline]).fetchall()]
    cols = ["candidate", "evaluator", "cohort", "base_score", "cand_score", "base_pass_rate", "cand_pass_rate",
            "base_samples", "cand_samples"] + (["prompt_id"] if with_ids else [])
    if not evaluators or not candidates:
        return pd.DataFrame(columns=cols)
    where = "WHERE coalesce(h.cohort, 'default') = $cohort" if cohort is not None else ""
    sql = QUALITY_SQL.format(ids=", q.prompt_id" if with_ids else "", cohorts=_cohort_source(con, run_id), where=where)
    frames = []
    for cand in candidates:
        params = {"run": run_id, "baseline": baseline, "candidate": cand, "evaluators": evaluators, "cohorts": cohorts}
        if cohort is not None:
            params["cohort"] = cohort
        df = con.execute(sql, params).df()
        df.insert(0, "candidate", cand)
        df.insert(1, "evaluator", pd.Categorical.from_codes(df.pop("evaluator_code").astype(int), categories=evaluators))
        codes = df.pop("cohort_code").fillna(-1).astype(int)
        df.insert(2, "cohort", pd.Categorical.from_codes(codes, categories=cohorts))
        frames.append(df[[c for c in cols]])
    out = pd.concat(frames, ignore_index=True)
    out["cohort"] = out["cohort"].astype(pd.CategoricalDtype(cohorts))
    out["evaluator"] = out["evaluator"].astype(pd.CategoricalDtype(evaluators))
    return out


def split_unpaired(quality: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(paired rows, counts of prompts scored on one route only per candidate and evaluator)."""
    one_sided = (quality["base_samples"] == 0) | (quality["cand_samples"] == 0)
    missing = (quality[one_sided].assign(side=np.where(quality.loc[one_sided, "base_samples"] == 0, "candidate", "baseline"))
               .groupby(["candidate", "evaluator", "side"], observed=True).size().reset_index(name="n"))
    return quality[~one_sided].reset_index(drop=True), missing


def evaluator_kinds(quality: pd.DataFrame, keep: frozenset[str] = frozenset()) -> dict[str, tuple[bool, bool]]:
    """evaluator -> (has pass/fail, has scores). `keep`: metric names to keep even if redundant (a policy names them)."""
    if quality.empty:
        return {}
    g = quality.groupby("evaluator", observed=True)
    has_pass = g["cand_pass_rate"].count() > 0
    has_score = g["cand_score"].count() > 0
    # A score that is just the pass/fail bit again would double-count one test.
    same = (quality["cand_score"] == quality["cand_pass_rate"]) & (quality["base_score"] == quality["base_pass_rate"])
    redundant = same.groupby(quality["evaluator"], observed=True).all()
    return {ev: (bool(has_pass[ev]), bool(has_score[ev]) and (f"{ev}.score" in keep or not (has_pass[ev] and redundant[ev])))
            for ev in sorted(g.groups)}


SCORE_COVERAGE_SQL = """
SELECT s.route, coalesce(h.cohort, 'default') AS cohort, s.evaluator,
       count(DISTINCT s.prompt_id) FILTER (WHERE {applicable} AND s.passed IS NOT NULL) AS pass_prompts,
       count(DISTINCT s.prompt_id) FILTER (WHERE {applicable} AND s.score IS NOT NULL)  AS score_prompts,
       count(*) AS rows
FROM scores s LEFT JOIN {cohorts} h ON h.prompt_id = s.prompt_id
WHERE s.run_id = $run
GROUP BY GROUPING SETS ((s.route, coalesce(h.cohort, 'default'), s.evaluator), (s.route, s.evaluator))
ORDER BY 1, 2, 3
"""


def score_coverage(con: duckdb.DuckDBPyConnection, run_id: str) -> list[dict[str, Any]]:
    """Per route, cohort ("(all)" for the route as a whole) and evaluator: the prompts with an
    applicable pass/fail and score. Says which route lacks the data when a comparison has none."""
    applicable = "coalesce(s.applicable, s.score IS NOT NULL OR s.passed IS NOT NULL)"
    rows = con.execute(SCORE_COVERAGE_SQL.format(applicable=applicable, cohorts=_cohort_source(con, run_id)),
                       {"run": run_id}).fetchall()
    return [{"route": r, "cohort": "(all)" if g is None else g, "evaluator": ev, "pass_prompts": int(p),
             "score_prompts": int(sc), "rows": int(n)} for r, g, ev, p, sc, n in rows]


def error_types(con: duckdb.DuckDBPyConnection, run_id: str) -> list[dict[str, Any]]:
    """Failed calls per route and error type, most frequent first."""
    rows = con.execute(f"""SELECT route, error_type, count(*) FROM {views.MEASURED_RESPONSES}
                          WHERE run_id = ? AND error_type IS NOT NULL GROUP BY ALL ORDER BY 1, 3 DESC, 2""",
                       [run_id]).fetchall()
    return [{"route": r, "error_type": e, "calls": int(n)} for r, e, n in rows]


def samples_per_prompt(con: duckdb.DuckDBPyConnection, run_id: str) -> int:
    return int(con.execute(f"SELECT coalesce(max(sample), 0) + 1 FROM {views.MEASURED_RESPONSES} WHERE run_id = ?", [run_id]).fetchone()[0])


def _serving_pairs_sql(k: int) -> str:
    per_sample = []
    for j in range(k):
        for col, name in (("latency_s", "latency_s"), ("ttft_s", "ttft_s")):
            for side, route in (("base", "$baseline"), ("cand", "$candidate")):
                per_sample.append(f"max(CASE WHEN error_type IS NULL THEN {col} END) FILTER (WHERE route = {route} AND sample = {j}) "
                                  f"AS {name}_{side}_{j}")
    means = []
    for side, route in (("base", "$baseline"), ("cand", "$candidate")):
        means += [
            f"avg(CAST(error_type IS NOT NULL AS DOUBLE)) FILTER (WHERE route = {route}) AS error_{side}",
            f"avg(CAST(coalesce(timed_out, false) AS DOUBLE)) FILTER (WHERE route = {route}) AS timeout_{side}",
            f"avg(coalesce(input_tokens, 0)) FILTER (WHERE route = {route}) AS input_tokens_{side}",
            f"avg(coalesce(output_tokens, 0)) FILTER (WHERE route = {route}) AS output_tokens_{side}",
            f"avg(output_tokens / latency_s) FILTER (WHERE route = {route} AND error_type IS NULL AND latency_s > 0) AS out_tps_{side}",
        ]
    return f"""
        SELECT list_position($cohorts, coalesce(any_value(cohort), 'default')) - 1 AS cohort_code,
               epoch(min(started_at)) AS group_started,
               {', '.join(means + per_sample)}
        FROM {views.MEASURED_RESPONSES} WHERE run_id = $run AND route IN ($baseline, $candidate)
        GROUP BY prompt_id
        HAVING count(*) FILTER (WHERE route = $baseline) > 0 AND count(*) FILTER (WHERE route = $candidate) > 0
        ORDER BY group_started NULLS LAST, prompt_id
    """


@dataclass
class ServingPairs:
    """Per prompt answered by both routes: per-prompt means (columns <name>_base/_cand) and
    per-sample times as (prompts x samples) arrays, NaN where a call failed or is missing.
    Rows are in time order (the prompt's first mirror group), for the time-aware serving CIs."""

    frame: pd.DataFrame
    times: dict[tuple[str, str], np.ndarray]    # (column, "base"|"cand") -> matrix


def load_serving_pairs(con: duckdb.DuckDBPyConnection, run_id: str, baseline: RouteInfo, candidate: RouteInfo,
                       cohorts: list[str], k: int) -> ServingPairs:
    df = con.execute(_serving_pairs_sql(k), {"run": run_id, "baseline": baseline.name, "candidate": candidate.name,
                                             "cohorts": cohorts}).df()
    df["cohort"] = pd.Categorical.from_codes(df.pop("cohort_code").fillna(-1).astype(int), categories=cohorts)
    for side, route in (("base", baseline), ("cand", candidate)):
        df[f"cost_{side}"] = (df[f"input_tokens_{side}"] * route.input_per_mtok + df[f"output_tokens_{side}"] * route.output_per_mtok) / 1e6
    times = {}
    for col in ("latency_s", "ttft_s"):
        for side in ("base", "cand"):
            names = [f"{col}_{side}_{j}" for j in range(k)]
            times[(col, side)] = df[names].to_numpy(dtype=float, na_value=np.nan)
            df = df.drop(columns=names)
    return ServingPairs(df, times)


LATENCY_CDF_SQL = f"""
SELECT route, quantile_cont(latency_s, $probs) AS q
FROM {views.MEASURED_RESPONSES} WHERE run_id = $run AND error_type IS NULL AND latency_s IS NOT NULL GROUP BY route
"""


def load_latency_cdf(con: duckdb.DuckDBPyConnection, run_id: str, points: int = 201) -> dict[str, dict[str, list[float]]]:
    probs = np.linspace(0, 1, points).round(6).tolist()
    rows = con.execute(LATENCY_CDF_SQL, {"run": run_id, "probs": probs}).fetchall()
    return {route: {"p": probs, "latency_s": list(q)} for route, q in rows}


def load_serving_summary(con: duckdb.DuckDBPyConnection, run_id: str, routes: list[RouteInfo]) -> pd.DataFrame:
    df = (views.route_cohort_summary(con, run_id)
          .drop(columns=["role", "errors", "timeouts", "input_tokens", "output_tokens", "decode_tokens_per_s"])
          .rename(columns={"calls": "responses"}))
    df["scope"] = np.where(df["cohort"].isna(), "overall", "cohort")
    df["cohort"] = df["cohort"].fillna("(all)")
    df["cost_per_trace_usd"] = cost_per_trace(df, routes)
    return df


def cost_per_trace(df: pd.DataFrame, routes: list[RouteInfo]) -> pd.Series:
    """USD per trace from a frame's `route`, `input_tokens_mean` and `output_tokens_mean` (a
    trajectory's tokens are summed over its steps) at each route's prices."""
    price_in = df["route"].map({r.name: r.input_per_mtok for r in routes}).fillna(0.0)
    price_out = df["route"].map({r.name: r.output_per_mtok for r in routes}).fillna(0.0)
    return (df["input_tokens_mean"] * price_in + df["output_tokens_mean"] * price_out) / 1e6


def load_trajectories(con: duckdb.DuckDBPyConnection, run_id: str, routes: list[RouteInfo]) -> pd.DataFrame:
    """The trajectory panel: per route and cohort ("(all)" = every cohort), steps, stop reasons,
    step accuracy, tokens and cost per trace."""
    df = views.trajectory_summary(con, run_id)
    if df.empty:
        return df
    df["scope"] = np.where(df["cohort"].isna(), "overall", "cohort")
    df["cohort"] = df["cohort"].fillna("(all)")
    df["cost_per_trace_usd"] = cost_per_trace(df, routes)
    return df.drop(columns=["input_tokens_mean", "output_tokens_mean"])


SERVER_PHASE_PAIRS_SQL = f"""
SELECT prompt_id, epoch(min(started_at)) AS group_started,
       {{cols}}
FROM ({views.RESPONSE_TIMINGS_SQL}) WHERE run_id = $run AND route IN ($baseline, $candidate)
GROUP BY prompt_id ORDER BY group_started NULLS LAST, prompt_id
"""
SERVER_PHASES = ("queue", "prefill", "decode")


def load_server_phase_pairs(con: duckdb.DuckDBPyConnection, run_id: str, baseline: str, candidate: str) -> pd.DataFrame:
    """Per prompt in time order: each route's mean server-side queue / prefill / decode seconds
    (<phase>_base, <phase>_cand; NaN where the server sent no span)."""
    cols = ", ".join(f"avg(server_{p}_s) FILTER (WHERE route = {r}) AS {p}_{side}"
                     for p in SERVER_PHASES for side, r in (("base", "$baseline"), ("cand", "$candidate")))
    return con.execute(SERVER_PHASE_PAIRS_SQL.format(cols=cols),
                       {"run": run_id, "baseline": baseline, "candidate": candidate}).df()


def load_server_spans(con: duckdb.DuckDBPyConnection, run_id: str) -> pd.DataFrame:
    df = views.server_phases(con, run_id).drop(columns=["client_latency_mean_s", "server_e2e_mean_s"])
    df["cohort"] = df["cohort"].fillna("(all)")
    return df


def load_server_metrics(con: duckdb.DuckDBPyConnection, run_id: str) -> pd.DataFrame:
    """Counters: change over the run (restart-aware); gauges: the peak seen during the run."""
    return views.server_panel(con, run_id)


def prompt_texts(con: duckdb.DuckDBPyConnection, run_id: str, prompt_ids: list[str] | None = None) -> pd.DataFrame:
    """prompt_id, cohort, text (the user turns joined; of content parts, the text parts) from prompts.messages."""
    sql = """
        SELECT prompt_id, coalesce(cohort, 'default') AS cohort,
               coalesce(string_agg(CASE WHEN json_type(m->'content') = 'ARRAY' THEN array_to_string(list_transform(
                   list_filter(CAST(m->'content' AS JSON[]), lambda p: p->>'type' = 'text'), lambda p: p->>'text'), ' ')
                   ELSE m->>'content' END, '\n') FILTER (WHERE m->>'role' = 'user'), '') AS text
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
        f"""SELECT prompt_id, route, text, error_type FROM {views.MEASURED_RESPONSES}
           WHERE run_id = $run AND sample = 0 AND list_contains($ids, prompt_id) AND list_contains($routes, route)""",
        {"run": run_id, "ids": list(prompt_ids), "routes": list(routes)},
    ).df()
