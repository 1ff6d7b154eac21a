"""Build the Report of a run: load it from the store once, compare (compare.py), discover, assemble."""

from __future__ import annotations

import time
from datetime import datetime, timezone
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd

from harness import __version__
from harness.experts.run import load_panel
from harness.report import load, stats
from harness.report.calibration import aa_candidates, aa_note, server_phase_warnings
from harness.report.compare import SERVING_CI_METHOD, compare_frame, quality_results, serving_results
from harness.report.coverage import missing_data, run_no_data
from harness.report.model import Comparison, Report, WorstExample
from harness.report.policy import MIN_SAMPLES, SERVING_METRICS, Policy
from harness.store import connect
from harness.store.views import resolve_run_id

WORST_EXAMPLES = 5


def worst_examples(con: duckdb.DuckDBPyConnection, run_id: str, baseline: str, quality: pd.DataFrame,
                   regressions: list[Comparison], n: int = WORST_EXAMPLES) -> list[WorstExample]:
    """The prompts that lost most in each quality regression (from the paired frame already loaded)."""
    out: list[WorstExample] = []
    for comp in regressions:
        if comp.kind != "quality" or comp.scope not in ("cohort", "overall"):
            continue
        if comp.scope == "overall" and any(r.scope == "cohort" for r in regressions):
            continue  # the cohort rows already show where the overall drop comes from
        ev, col = comp.metric.rsplit(".", 1)
        sel = quality[(quality["candidate"] == comp.candidate) & (quality["evaluator"] == ev)]
        if comp.scope == "cohort":
            sel = sel[sel["cohort"] == comp.cohort]
        drop = (sel["base_" + col] - sel["cand_" + col]).dropna()
        top = sel.loc[drop.sort_values(ascending=False).index[:n]]
        top = top[(top["base_" + col] - top["cand_" + col]) > 0]
        if top.empty:
            continue
        ids = top["prompt_id"].tolist()
        prompts = load.prompt_texts(con, run_id, ids).set_index("prompt_id")["text"]
        texts = load.response_texts(con, run_id, ids, [baseline, comp.candidate])
        text_of = {(r.prompt_id, r.route): (r.text if r.text is not None else f"[error: {r.error_type}]")
                   for r in texts.itertuples()}
        for r in top.itertuples():
            out.append(WorstExample(
                candidate=comp.candidate, cohort=comp.cohort, metric=comp.metric, prompt_id=r.prompt_id,
                baseline_value=float(getattr(r, "base_" + col)), candidate_value=float(getattr(r, "cand_" + col)),
                prompt_text=str(prompts.get(r.prompt_id, "")), baseline_text=text_of.get((r.prompt_id, baseline), ""),
                candidate_text=text_of.get((r.prompt_id, comp.candidate), ""),
            ))
    return out


def _records(df: pd.DataFrame) -> list[dict]:
    return df.astype(object).where(pd.notna(df), None).to_dict(orient="records")


def build_report(con: duckdb.DuckDBPyConnection, run_id: str, policy: Policy | None = None,
                 discover: bool = False, alpha: float = 0.05, seed: int = 0) -> Report:
    timings: dict[str, float] = {}
    t = time.perf_counter()
    rng = np.random.default_rng(seed)
    warnings: list[str] = load.proxy_notes(con, run_id)
    if policy is not None:
        alpha = policy.alpha
    routes = load.load_routes(con, run_id)
    baseline, candidates = load.split_roles(routes)
    cohorts = load.distinct_cohorts(con, run_id)
    # Loaded once: the comparisons, the worst examples and cohort discovery all read this frame.
    quality, missing = load.split_unpaired(load.load_quality(con, run_id, baseline.name, [c.name for c in candidates],
                                                             with_ids=True))
    k = load.samples_per_prompt(con, run_id)
    pairs = {c.name: load.load_serving_pairs(con, run_id, baseline, c, cohorts, k) for c in candidates}
    timings["load"] = time.perf_counter() - t
    if quality.empty:
        warnings.append("no scores for this run (run `routecheck score` first): quality is not compared")
    for r in missing.itertuples():
        other = baseline.name if r.side == "candidate" else r.candidate
        warnings.append(f"{r.n} prompts scored by {r.evaluator} on route {other} only (not on "
                        f"{r.candidate if r.side == 'candidate' else baseline.name}); left out of paired comparisons")

    t = time.perf_counter()
    rows = []
    for cand in candidates:
        rows += quality_results(quality, cand.name, rng, keep=frozenset(policy.metrics) if policy else frozenset())
        rows += serving_results(pairs[cand.name], baseline, cand, rng, warnings)
    comparisons = compare_frame(rows, policy, alpha, lambda cand, spec, scope: f"{cand}:{spec.kind}")
    timings["statistics"] = time.perf_counter() - t

    notes = [SERVING_CI_METHOD]
    for cand in aa_candidates(baseline, candidates):
        notes.append(aa_note(baseline, cand, comparisons))
        warnings += server_phase_warnings(baseline, cand, load.load_server_phase_pairs(con, run_id, baseline.name, cand.name),
                                          alpha, rng)

    t = time.perf_counter()
    summary = load.load_serving_summary(con, run_id, routes)
    phases = load.load_server_spans(con, run_id)
    metrics = load.load_server_metrics(con, run_id)
    cdf = load.load_latency_cdf(con, run_id)
    experts = [p.to_dict() for p in load_panel(con, run_id)]
    trajectories = _records(load.load_trajectories(con, run_id, routes))
    timings["serving_tables"] = time.perf_counter() - t

    t = time.perf_counter()
    regressions = [c for c in comparisons if c.verdict == "regression"]
    examples = worst_examples(con, run_id, baseline.name, quality, regressions)
    discovery = None
    unlabelled = len(cohorts) <= 1
    if (discover or unlabelled) and not quality.empty:
        from harness.report.discover import discover_cohorts
        reason = "requested (--discover-cohorts)" if discover else "prompts carry no cohort labels"
        discovery = discover_cohorts(con, run_id, quality, [c.name for c in candidates], alpha, rng, reason, warnings)
    timings["examples_and_discovery"] = time.perf_counter() - t

    settings = {
        "alpha": alpha, "confidence": stats.CONFIDENCE, "power": stats.POWER,
        "correction": "Holm (statsmodels multipletests, method='holm')",
        "families": "one per candidate and kind: all cohorts x metrics of quality, and of serving, are corrected together",
        "unit": "prompt (samples are averaged within a prompt; bootstraps resample prompts)",
        "mean_ci": f"paired bootstrap (percentile, {stats.BOOTSTRAP_RESAMPLES} resamples) up to {stats.BOOTSTRAP_MAX_N} prompts, t-interval above",
        "quantile_ci": f"circular block bootstrap over mirror groups in time order ({stats.QUANTILE_RESAMPLES} resamples; m-out-of-n with m={stats.QUANTILE_BOOT_M} above that)",
        "serving_ci": SERVING_CI_METHOD,
        "tests": "quality: McNemar exact (pass/fail, one sample per prompt), Wilcoxon signed-rank (scores, averaged samples); "
                 "serving: block bootstrap with Student's t (times, tokens/s, cost), McNemar exact (error and timeout rates)",
        "aa_candidates": [c.name for c in aa_candidates(baseline, candidates)],
        "verdict_rule": "insufficient below min_samples prompts (untested); else no change if the 95% CI is inside +-margin; "
                        "else regression/improvement if Holm-adjusted p < alpha; else inconclusive",
        "min_samples": policy.min_samples if policy is not None else MIN_SAMPLES,
        "margins": {s.name: (f"{s.default_margin:.0%} of baseline" if s.relative else s.default_margin) for s in SERVING_METRICS}
                   | {"<evaluator>.pass_rate / .score": 0.05},
        "policy": policy.model_dump() if policy is not None else None,
        "seed": seed,
    }
    serving = _records(summary)
    errors = load.error_types(con, run_id)
    report = Report(
        run_id=run_id, generated_at=datetime.now(timezone.utc).isoformat(timespec="seconds"), tool_version=__version__,
        baseline=baseline.name, candidates=[c.name for c in candidates],
        routes=[{"name": r.name, "role": r.role, "architecture": r.architecture, "model": r.model, "checkpoint": r.checkpoint,
                 "input_per_mtok": r.input_per_mtok, "output_per_mtok": r.output_per_mtok, **r.extra} for r in routes],
        settings=settings, cohorts=cohorts, comparisons=comparisons, serving=serving,
        server_phases=_records(phases), server_metrics=_records(metrics), latency_cdf=cdf,
        worst_examples=examples, discovery=discovery, warnings=warnings, experts=experts, trajectories=trajectories,
        timings_s=timings, notes=notes,
        no_data=run_no_data(serving, errors, baseline.name, [c.name for c in candidates]),
        score_coverage=load.score_coverage(con, run_id), error_types=errors,
    )
    for c in comparisons:  # say which route lacks the data
        if c.n_prompts == 0 and c.scope in ("overall", "cohort"):
            c.note = missing_data(report, c.candidate, c.metric, c.cohort).message
    return report


def quality_only_report(quality: pd.DataFrame, baseline: str, policy: Policy | None = None, alpha: float = 0.05,
                        rng: np.random.Generator | None = None, run_id: str = "in-memory") -> Report:
    """A Report from an in-memory quality frame (load.QUALITY_SQL's shape), same statistics as build_report.

    Used by the simulation test, which runs the gate on thousands of synthetic data sets.
    """
    rng = rng or np.random.default_rng(0)
    if policy is not None:
        alpha = policy.alpha
    candidates = sorted(quality["candidate"].unique())
    rows = []
    keep = frozenset(policy.metrics) if policy else frozenset()
    for cand in candidates:
        rows += quality_results(quality, cand, rng, keep=keep)
    comparisons = compare_frame(rows, policy, alpha, lambda cand, spec, scope: f"{cand}:{spec.kind}")
    return Report(run_id=run_id, generated_at="", tool_version=__version__, baseline=baseline, candidates=candidates,
                  routes=[], settings={"alpha": alpha}, cohorts=sorted(map(str, quality["cohort"].unique())),
                  comparisons=comparisons, serving=[], server_phases=[], server_metrics=[], latency_cdf={},
                  worst_examples=[], discovery=None)


def make_report(db_path: Path | str, run_id: str, policy: Policy | None = None, discover: bool = False,
                seed: int = 0) -> Report:
    con = connect(db_path, read_only=True)
    try:
        run_id = resolve_run_id(con, run_id) if con.execute("SELECT count(*) FROM runs").fetchone()[0] else run_id
        return build_report(con, run_id, policy=policy, discover=discover, seed=seed)
    finally:
        con.close()
