"""Paired results -> Comparisons with verdicts: pure functions of frames, no store, no I/O.

Verdict rule (documented in docs/report.md), per cohort x metric, with the metric's margin m:
- "insufficient": fewer prompts than min_samples (the policy's, else MIN_SAMPLES; exploratory rows
                  EXPLORATORY_MIN_SAMPLES): not tested, outside the Holm family, never "no change";
- "no change":    the 95% CI of the difference lies inside (-m, +m);
- "regression":   otherwise, Holm-adjusted p < alpha and the candidate is worse;
- "improvement":  otherwise, Holm-adjusted p < alpha and the candidate is better;
- "inconclusive": otherwise; the comparison states its minimal detectable effect.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Iterator

import numpy as np
import pandas as pd
from scipy import stats as sps

from harness.report import load, stats
from harness.report.model import Comparison
from harness.report.policy import (
    EXPLORATORY_MIN_SAMPLES, MIN_SAMPLES, SERVING_METRICS, TAIL_VALUES, MetricSpec, Policy, quality_metrics, tail_minimum,
)


@dataclass(frozen=True)
class PairedRow:
    """One paired comparison before correction: whose, which metric, where, and its statistics."""

    candidate: str
    spec: MetricSpec
    scope: str       # overall | cohort | discovered | slice
    cohort: str
    result: stats.PairedResult


BINARY_COLUMNS = {"pass_rate", "error", "timeout"}


def _scopes(df: pd.DataFrame) -> Iterator[tuple[str, str, pd.DataFrame]]:
    yield "overall", "(all)", df
    groups = {k: v for k, v in df.groupby("cohort", sort=True, observed=True) if len(v)}
    # Per cohort when the run has several, even if only one of them has data for this metric
    # (the categories are the run's cohorts): the others are "no data" downstream, not merged away.
    declared = len(df["cohort"].cat.categories) if isinstance(df["cohort"].dtype, pd.CategoricalDtype) else len(groups)
    if max(len(groups), declared) > 1:
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


def min_samples_of(policy: Policy | None, metric: str, scope: str, cohort: str) -> int:
    """Prompts a comparison needs before it gets a verdict."""
    if scope in ("discovered", "slice"):
        return EXPLORATORY_MIN_SAMPLES
    if policy is None:
        return MIN_SAMPLES
    return policy.min_samples_for(metric, cohort if scope == "cohort" else None)


def decide(diff: float, lo: float, hi: float, p_adj: float, alpha: float, margin: float, higher_is_better: bool) -> str:
    if math.isnan(diff) or math.isnan(p_adj):
        return "inconclusive"
    if not math.isnan(lo) and not math.isnan(margin) and -margin < lo and hi < margin:
        return "no change"
    if p_adj < alpha and diff != 0:
        worse = diff < 0 if higher_is_better else diff > 0
        return "regression" if worse else "improvement"
    return "inconclusive"


FamilyOf = Callable[[str, MetricSpec, str], str]


def compare_frame(rows: list[PairedRow], policy: Policy | None, alpha: float, family_of: FamilyOf) -> list[Comparison]:
    """Turn raw paired results into Comparisons: Holm per family, margins, verdicts, power."""
    families: dict[str, list[int]] = {}
    minimum = [max(min_samples_of(policy, row.spec.name, row.scope, row.cohort), tail_minimum(row.spec)) for row in rows]
    for i, row in enumerate(rows):
        if row.result.n >= minimum[i]:  # too few prompts: not tested, so not in the family
            families.setdefault(family_of(row.candidate, row.spec, row.scope), []).append(i)
    p_adj = [float("nan")] * len(rows)
    fam_size = [0] * len(rows)
    for fam, idx in families.items():
        adj = stats.holm([rows[i].result.p_two_sided for i in idx], alpha)
        m = sum(1 for i in idx if not math.isnan(rows[i].result.p_two_sided))
        for i, a in zip(idx, adj):
            p_adj[i], fam_size[i] = a, max(m, 1)
    out = []
    for i, row in enumerate(rows):
        cand, spec, scope, cohort, r = row.candidate, row.spec, row.scope, row.cohort, row.result
        margin, margin_spec = _margin(spec, policy, cohort if scope == "cohort" else None, r.baseline.value)
        a_fam = alpha / max(fam_size[i], 1)
        insufficient = r.n < minimum[i]
        verdict = "insufficient" if insufficient else decide(r.diff, r.diff_low, r.diff_high, p_adj[i], alpha, margin,
                                                             spec.higher_is_better)
        mde, needed, power = power_figures(spec, r.n, r.sd_diff, r.se, r.test, r.diff, margin, a_fam, two_sided=True)
        note = ""
        if r.n == 0:
            note = "no data: no prompt has this metric on both routes"
        elif insufficient and minimum[i] == tail_minimum(spec) > min_samples_of(policy, spec.name, scope, cohort):
            note = (f"{r.n} prompt{'s' if r.n != 1 else ''}: too few for p{100 * spec.q:g} (its bootstrap needs "
                    f"{TAIL_VALUES} values beyond it, {minimum[i]} prompts); the value is shown, not judged")
        elif insufficient:
            note = f"{r.n} prompt{'s' if r.n != 1 else ''} < min_samples {minimum[i]}: too few to judge"
            if needed:
                note += f"; ~{max(needed, minimum[i])} prompts to detect {margin:.3g}"
        elif verdict == "inconclusive":
            note = f"detectable at this size: |diff| >= {mde:.3g}"
            if needed:
                note += f"; ~{needed} prompts to detect {margin:.3g}"
        diff_ci = (r.diff_low, r.diff_high) if r.n >= 2 else (float("nan"), float("nan"))  # one prompt: no interval
        out.append(Comparison(
            candidate=cand, scope=scope, cohort=cohort, metric=spec.name, kind=spec.kind, label=spec.label,
            higher_is_better=spec.higher_is_better, n_prompts=r.n,
            baseline=r.baseline.value, baseline_ci=(r.baseline.low, r.baseline.high),
            candidate_value=r.candidate.value, candidate_ci=(r.candidate.low, r.candidate.high),
            diff=r.diff, diff_ci=diff_ci, se=r.se, sd_diff=r.sd_diff,
            ci_method=r.ci_method, test=r.test, p_value=r.p_two_sided, p_worse=r.p_worse,
            family=family_of(cand, spec, scope), family_size=fam_size[i], p_adjusted=p_adj[i],
            margin=margin, margin_spec=margin_spec, verdict=verdict, mde=mde, prompts_needed=needed,
            power_at_margin=power, note=note,
        ))
    return out


def power_figures(spec: MetricSpec, n: int, sd_diff: float, se: float, test: str, diff: float, margin: float,
                  alpha: float, two_sided: bool) -> tuple[float, int | None, float]:
    """(minimal detectable effect, prompts needed to detect `margin`, power at `margin`) at 80 %
    power: the one place the report and the gate get them from. Means plan from the difference's
    SD (binary metrics from the worst case); quantiles from the bootstrap SE, scaled by sqrt(n)."""
    has_margin = bool(margin) and not math.isnan(margin)
    z_a = sps.norm.ppf(1 - alpha / 2) if two_sided else sps.norm.ppf(1 - alpha)
    if spec.stat == "mean":
        sd = stats.planning_sd(sd_diff, spec.column in BINARY_COLUMNS)
        mde = stats.minimal_detectable_effect(n, sd, alpha, two_sided=two_sided, test=test)
        needed = stats.prompts_needed(margin, sd, alpha, two_sided=two_sided, test=test) if has_margin else None
        power = stats.power_at(margin, n, sd, alpha, two_sided=two_sided, test=test, diff=diff)
        return mde, needed, power
    ok = not math.isnan(se) and se > 0
    mde = float((z_a + sps.norm.ppf(stats.POWER)) * se) if ok else float("nan")
    needed = int(math.ceil(n * (mde / margin) ** 2)) if ok and has_margin else None
    power = float(sps.norm.cdf(margin / se - sps.norm.ppf(1 - alpha))) if ok and margin else float("nan")
    return mde, needed, power


def quality_results(quality: pd.DataFrame, candidate: str, rng: np.random.Generator,
                    cohort_of: pd.Series | None = None, keep: frozenset[str] = frozenset()) -> list[PairedRow]:
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
                rows.append(PairedRow(candidate, spec, scope, cohort, res))
    return rows


# What the report says about the serving CIs (settings.serving_ci and a note in every format).
SERVING_CI_METHOD = (
    "serving CIs resample mirror groups in time order: a circular block bootstrap (blocks of consecutive "
    "groups, length from the routes' per-group difference by Politis-White via arch, doubled; 1 where no "
    "dependence shows), tested with Student's t on the bootstrap SE (blocks - 1 df); error and timeout "
    "rates keep McNemar's exact test. Quality comparisons are per prompt (paired bootstrap, McNemar/Wilcoxon)."
)


def serving_results(pairs: load.ServingPairs, baseline: load.RouteInfo, cand: load.RouteInfo,
                    rng: np.random.Generator, warnings: list[str]) -> list[PairedRow]:
    """Paired serving results for one candidate; rows of `pairs` are mirror groups in time order."""
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
                bv, cv = part[b].to_numpy(), part[c].to_numpy()
                block = stats.time_series_block_length(bv, cv, positive=spec.column == "out_tps")
                res = stats.paired_mean_in_time(bv, cv, spec.higher_is_better, rng, block)
                rows.append(PairedRow(cand.name, spec, scope, cohort, res))
        else:
            B, C = pairs.times[(spec.column, "base")], pairs.times[(spec.column, "cand")]
            both = ~np.isnan(B).all(axis=1) & ~np.isnan(C).all(axis=1)
            frame = pd.DataFrame({"i": np.nonzero(both)[0], "cohort": pf["cohort"].array[both]})  # keeps the categories
            for scope, cohort, part in _scopes(frame):
                idx = part["i"].to_numpy()
                block = stats.time_series_block_length(B[idx], C[idx], positive=True)
                res = stats.paired_quantile(B[idx], C[idx], spec.q, spec.higher_is_better, rng, block=block)
                rows.append(PairedRow(cand.name, spec, scope, cohort, res))
    msg = "no route has prices in routes.yaml: cost per trace is not compared"
    if not priced and msg not in warnings:
        warnings.append(msg)
    return rows


