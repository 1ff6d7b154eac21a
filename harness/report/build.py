"""Build the Report: every candidate against the baseline, overall and per cohort.

Verdict rule (documented in docs/report.md), per cohort x metric, with the metric's margin m:
- "no change":    the 95% CI of the difference lies inside (-m, +m);
- "regression":   otherwise, Holm-adjusted p < alpha and the candidate is worse;
- "improvement":  otherwise, Holm-adjusted p < alpha and the candidate is better;
- "inconclusive": otherwise; the comparison states its minimal detectable effect.
"""

from __future__ import annotations

import math
import time
from datetime import datetime, timezone
from typing import Iterator

import duckdb
import numpy as np
import pandas as pd
from scipy import stats as sps

from harness import __version__
from harness.report import load, stats
from harness.report.model import Comparison, Report, WorstExample
from harness.report.policy import SERVING_METRICS, MetricSpec, Policy, quality_metrics

BINARY_COLUMNS = {"pass_rate", "error", "timeout"}
WORST_EXAMPLES = 5


def _scopes(df: pd.DataFrame) -> Iterator[tuple[str, str, pd.DataFrame]]:
    yield "overall", "(all)", df
    groups = {k: v for k, v in df.groupby("cohort", sort=True, observed=True) if len(v)}
    if len(groups) > 1:
        for cohort, part in groups.items():
            yield "cohort", str(cohort), part


def _margin(spec: MetricSpec, policy: Policy | None, cohort: str | None, baseline_value: float) -> tuple[float, str]:
    margin, relative = spec.default_margin, spec.relative
    if policy is not None and spec.name in policy.metrics:
        m, rel, _, _, _ = policy.rule(spec.name, cohort)
        if m is not None:
            margin, relative = m, rel
    if relative:
        return margin * abs(baseline_value) if not math.isnan(baseline_value) else float("nan"), f"{margin:.0%} of baseline"
    return margin, f"{margin:g} absolute"


def decide(diff: float, lo: float, hi: float, p_adj: float, alpha: float, margin: float, higher_is_better: bool) -> str:
    if math.isnan(diff) or math.isnan(p_adj):
        return "inconclusive"
    if not math.isnan(lo) and not math.isnan(margin) and -margin < lo and hi < margin:
        return "no change"
    if p_adj < alpha and diff != 0:
        worse = diff < 0 if higher_is_better else diff > 0
        return "regression" if worse else "improvement"
    return "inconclusive"


def compare_frame(rows: list[tuple[str, MetricSpec, str, str, stats.PairedResult]], policy: Policy | None,
                  alpha: float, family_of) -> list[Comparison]:
    """Turn raw paired results into Comparisons: Holm per family, margins, verdicts, power."""
    families: dict[str, list[int]] = {}
    for i, (cand, spec, scope, cohort, res) in enumerate(rows):
        families.setdefault(family_of(cand, spec, scope), []).append(i)
    p_adj = [float("nan")] * len(rows)
    fam_size = [0] * len(rows)
    for fam, idx in families.items():
        adj = stats.holm([rows[i][4].p_two_sided for i in idx], alpha)
        m = sum(1 for i in idx if not math.isnan(rows[i][4].p_two_sided))
        for i, a in zip(idx, adj):
            p_adj[i], fam_size[i] = a, max(m, 1)
    out = []
    z_power = sps.norm.ppf(stats.POWER)
    for i, (cand, spec, scope, cohort, r) in enumerate(rows):
        margin, margin_spec = _margin(spec, policy, cohort if scope == "cohort" else None, r.baseline.value)
        a_fam = alpha / fam_size[i]
        verdict = decide(r.diff, r.diff_low, r.diff_high, p_adj[i], alpha, margin, spec.higher_is_better)
        if spec.stat == "mean":
            sd = stats.planning_sd(r.sd_diff, spec.column in BINARY_COLUMNS)
            mde = stats.minimal_detectable_effect(r.n, sd, a_fam, test=r.test)
            needed = stats.prompts_needed(margin, sd, a_fam, test=r.test) if margin and not math.isnan(margin) else None
            power = stats.power_at(margin, r.n, sd, a_fam, two_sided=True, test=r.test, diff=r.diff)
        else:
            se = r.se
            ok = not math.isnan(se) and se > 0
            mde = float((sps.norm.ppf(1 - a_fam / 2) + z_power) * se) if ok else float("nan")
            needed = int(math.ceil(r.n * (mde / margin) ** 2)) if ok and margin and not math.isnan(margin) else None
            power = float(sps.norm.cdf(margin / se - sps.norm.ppf(1 - a_fam))) if ok and margin else float("nan")
        note = ""
        if verdict == "inconclusive" and r.n > 0:
            note = f"detectable at this size: |diff| >= {mde:.3g}"
            if needed:
                note += f"; ~{needed} prompts to detect {margin:.3g}"
        elif r.n == 0:
            note = "no paired prompts"
        out.append(Comparison(
            candidate=cand, scope=scope, cohort=cohort, metric=spec.name, kind=spec.kind, label=spec.label,
            higher_is_better=spec.higher_is_better, n_prompts=r.n,
            baseline=r.baseline.value, baseline_ci=(r.baseline.low, r.baseline.high),
            candidate_value=r.candidate.value, candidate_ci=(r.candidate.low, r.candidate.high),
            diff=r.diff, diff_ci=(r.diff_low, r.diff_high), se=r.se, sd_diff=r.sd_diff,
            ci_method=r.ci_method, test=r.test, p_value=r.p_two_sided, p_worse=r.p_worse,
            family=family_of(cand, spec, scope), family_size=fam_size[i], p_adjusted=p_adj[i],
            margin=margin, margin_spec=margin_spec, verdict=verdict, mde=mde, prompts_needed=needed,
            power_at_margin=power, note=note,
        ))
    return out


def quality_results(quality: pd.DataFrame, candidate: str, rng: np.random.Generator,
                    cohort_of: pd.Series | None = None, keep: frozenset[str] = frozenset()
                    ) -> list[tuple[str, MetricSpec, str, str, stats.PairedResult]]:
    """Paired quality results for one candidate; `cohort_of` (prompt_id -> label) replaces cohorts."""
    rows = []
    qc = quality[quality["candidate"] == candidate]
    if cohort_of is not None:
        qc = qc.assign(cohort=qc["prompt_id"].map(cohort_of)).dropna(subset=["cohort"])
    for ev, (has_pass, has_score) in load.evaluator_kinds(quality, keep).items():
        qe = qc[qc["evaluator"] == ev]
        for spec in quality_metrics(ev, has_pass, has_score):
            b, c = "base_" + spec.column, "cand_" + spec.column
            sub = qe[[b, c, "cohort"]].dropna()
            for scope, cohort, part in _scopes(sub):
                if cohort_of is not None and scope == "overall":
                    continue
                res = stats.paired_mean(part[b].to_numpy(), part[c].to_numpy(), True, rng)
                rows.append((candidate, spec, scope, cohort, res))
    return rows


def serving_results(pairs: load.ServingPairs, baseline: load.RouteInfo, cand: load.RouteInfo,
                    rng: np.random.Generator, warnings: list[str]):
    rows = []
    pf = pairs.frame
    priced = any(p > 0 for p in (baseline.input_per_mtok, baseline.output_per_mtok, cand.input_per_mtok, cand.output_per_mtok))
    for spec in SERVING_METRICS:
        if spec.column == "cost" and not priced:
            continue
        if spec.stat == "mean":
            b, c = spec.column + "_base", spec.column + "_cand"
            sub = pf[[b, c, "cohort"]].dropna()
            for scope, cohort, part in _scopes(sub):
                res = stats.paired_mean(part[b].to_numpy(), part[c].to_numpy(), spec.higher_is_better, rng)
                rows.append((cand.name, spec, scope, cohort, res))
        else:
            B, C = pairs.times[(spec.column, "base")], pairs.times[(spec.column, "cand")]
            both = ~np.isnan(B).all(axis=1) & ~np.isnan(C).all(axis=1)
            frame = pd.DataFrame({"i": np.nonzero(both)[0], "cohort": pf["cohort"].to_numpy()[both]})
            for scope, cohort, part in _scopes(frame):
                idx = part["i"].to_numpy()
                res = stats.paired_quantile(B[idx], C[idx], spec.q, spec.higher_is_better, rng)
                rows.append((cand.name, spec, scope, cohort, res))
    msg = "no route has prices in routes.yaml: cost per trace is not compared"
    if not priced and msg not in warnings:
        warnings.append(msg)
    return rows


def worst_examples(con: duckdb.DuckDBPyConnection, run_id: str, baseline: str,
                   regressions: list[Comparison], n: int = WORST_EXAMPLES) -> list[WorstExample]:
    out: list[WorstExample] = []
    for comp in regressions:
        if comp.kind != "quality" or comp.scope not in ("cohort", "overall"):
            continue
        if comp.scope == "overall" and any(r.scope == "cohort" for r in regressions):
            continue  # the cohort rows already show where the overall drop comes from
        ev, col = comp.metric.rsplit(".", 1)
        sel = load.load_quality(con, run_id, baseline, [comp.candidate], with_ids=True,
                                cohort=comp.cohort if comp.scope == "cohort" else None)
        sel = sel[sel["evaluator"] == ev]
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
    warnings: list[str] = []
    if policy is not None:
        alpha = policy.alpha
    routes = load.load_routes(con, run_id)
    baseline, candidates = load.split_roles(routes)
    cohorts = load.distinct_cohorts(con, run_id)
    quality, missing = load.split_unpaired(load.load_quality(con, run_id, baseline.name, [c.name for c in candidates]))
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

    t = time.perf_counter()
    summary = load.load_serving_summary(con, run_id, routes)
    phases = load.load_server_spans(con, run_id)
    metrics = load.load_server_metrics(con, run_id)
    cdf = load.load_latency_cdf(con, run_id)
    timings["serving_tables"] = time.perf_counter() - t

    t = time.perf_counter()
    regressions = [c for c in comparisons if c.verdict == "regression"]
    examples = worst_examples(con, run_id, baseline.name, regressions)
    discovery = None
    unlabelled = len(cohorts) <= 1
    if (discover or unlabelled) and not quality.empty:
        from harness.report.discover import discover_cohorts
        reason = "requested (--discover-cohorts)" if discover else "prompts carry no cohort labels"
        discovery = discover_cohorts(con, run_id, baseline.name, [c.name for c in candidates], alpha, rng, reason, warnings)
    timings["examples_and_discovery"] = time.perf_counter() - t

    settings = {
        "alpha": alpha, "confidence": stats.CONFIDENCE, "power": stats.POWER,
        "correction": "Holm (statsmodels multipletests, method='holm')",
        "families": "one per candidate and kind: all cohorts x metrics of quality, and of serving, are corrected together",
        "unit": "prompt (samples are averaged within a prompt; bootstraps resample prompts)",
        "mean_ci": f"paired bootstrap (percentile, {stats.BOOTSTRAP_RESAMPLES} resamples) up to {stats.BOOTSTRAP_MAX_N} prompts, t-interval above",
        "quantile_ci": f"paired bootstrap over prompts ({stats.QUANTILE_RESAMPLES} resamples; m-out-of-n with m={stats.QUANTILE_BOOT_M} above that)",
        "tests": "McNemar exact (pass/fail, one sample per prompt); Wilcoxon signed-rank (scores, averaged samples); bootstrap normal approximation (quantiles)",
        "verdict_rule": "no change if the 95% CI is inside +-margin; else regression/improvement if Holm-adjusted p < alpha; else inconclusive",
        "margins": {s.name: (f"{s.default_margin:.0%} of baseline" if s.relative else s.default_margin) for s in SERVING_METRICS}
                   | {"<evaluator>.pass_rate / .score": 0.05},
        "policy": policy.model_dump() if policy is not None else None,
        "seed": seed,
    }
    return Report(
        run_id=run_id, generated_at=datetime.now(timezone.utc).isoformat(timespec="seconds"), tool_version=__version__,
        baseline=baseline.name, candidates=[c.name for c in candidates],
        routes=[{"name": r.name, "role": r.role, "architecture": r.architecture, "model": r.model,
                 "input_per_mtok": r.input_per_mtok, "output_per_mtok": r.output_per_mtok, **r.extra} for r in routes],
        settings=settings, cohorts=cohorts, comparisons=comparisons, serving=_records(summary),
        server_phases=_records(phases), server_metrics=_records(metrics), latency_cdf=cdf,
        worst_examples=examples, discovery=discovery, warnings=warnings, timings_s=timings,
    )


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
