"""Simulation: the gate's false-alarm rate and power, measured on synthetic paired data with known effects.

Each seed is one gate run over 4 cohorts (+ overall) through the same code the CLI uses
(quality_results -> compare_frame -> evaluate_gate). The measured rates are printed and
recorded in docs/benchmarks.md ("Report and gate").
"""

from __future__ import annotations

import os
from concurrent.futures import ProcessPoolExecutor
from functools import partial

import numpy as np
import pytest
from scipy import stats as sps

from harness.gate.evaluate import evaluate_gate
from harness.report.build import quality_only_report
from harness.report.policy import Policy
from harness.testing.simulated_load import ar1
from harness.testing.synthetic import paired_quality_frame

SEEDS = 400
ALPHA = 0.05
COHORTS = {"a": 300, "b": 300, "c": 300, "d": 300}


def _over_seeds(one_seed, seeds: int) -> list:
    """Each seed is independent and seeded by its index, so the results are the same whether the
    seeds run here or spread over the machine's cores (which halves this file's time in CI)."""
    workers = min(len(os.sched_getaffinity(0)), 4)
    if workers < 2:
        return [one_seed(seed) for seed in range(seeds)]
    with ProcessPoolExecutor(workers) as pool:
        return list(pool.map(one_seed, range(seeds), chunksize=max(1, seeds // (4 * workers))))


def _policy(metric: str, margin: float) -> Policy:
    return Policy.model_validate({"alpha": ALPHA, "min_samples": 30, "metrics": {metric: {"margin": margin}}})


def _quality_seed(binary: bool, margin: float, drop: float, seed: int) -> tuple[bool, bool, bool, float]:
    metric = "task_completion.pass_rate" if binary else "task_completion.score"
    policy = _policy(metric, margin)
    rng = np.random.default_rng(seed)
    q = paired_quality_frame(rng, COHORTS, {"a": drop} if drop else None, binary=binary)
    report = quality_only_report(q, "dense", policy, rng=rng)
    result = evaluate_gate(report, policy)
    checks = {c.cohort: c for c in result.checks}
    return (result.exit_code == 1, checks["a"].status == "regression",
            any(checks[c].status == "regression" for c in ("b", "c", "d")), checks["a"].power_at_margin)


def _simulate(binary: bool, margin: float, drop: float, seeds: int = SEEDS):
    runs = np.array(_over_seeds(partial(_quality_seed, binary, margin, drop), seeds), dtype=float)
    any_alarm, hit, other_alarms, claimed = runs.mean(axis=0)
    return float(any_alarm), float(hit), float(other_alarms), float(claimed)


def _not_above(rate: float, target: float, n: int) -> bool:
    """The measured rate is not significantly above target (one-sided exact binomial test, 5%)."""
    return sps.binomtest(round(rate * n), n, target, alternative="greater").pvalue > 0.05


pytestmark = pytest.mark.slow  # ~9 minutes of CPU: ~4.5 on the 2-core machine, seeds spread over both cores


@pytest.mark.parametrize("binary,margin", [(True, 0.10), (False, 0.03)], ids=["pass_fail_mcnemar", "scores_wilcoxon"])
def test_false_alarm_rate_at_most_alpha(binary, margin):
    fa, _, _, _ = _simulate(binary, margin, drop=0.0)
    print(f"\n{'pass/fail' if binary else 'scores'}: false-alarm rate per gate run (no effect, {SEEDS} seeds) = {fa:.3f} (alpha {ALPHA})")
    assert _not_above(fa, ALPHA, SEEDS), f"false-alarm rate {fa:.3f} is significantly above alpha {ALPHA}"


@pytest.mark.parametrize("binary,margin", [(True, 0.10), (False, 0.03)], ids=["pass_fail_mcnemar", "scores_wilcoxon"])
def test_drop_of_margin_caught_with_claimed_power(binary, margin):
    _, power, others, claimed = _simulate(binary, margin, drop=margin)
    print(f"\n{'pass/fail' if binary else 'scores'}: drop of margin {margin} in one cohort caught in {power:.3f} of "
          f"{SEEDS} runs; claimed power {claimed:.3f}; false alarms in the other cohorts {others:.3f}")
    se = np.sqrt(claimed * (1 - claimed) / SEEDS)
    assert power >= claimed - 3 * se, f"measured power {power:.3f} below claimed {claimed:.3f}"
    assert _not_above(others, ALPHA, SEEDS)


def _simulate_p99(factor: float, n: int = 1000, seeds: int = 300):
    """p99 latency gate (margin +20%): prompts share a latent speed on both routes (pairing)."""
    runs = np.array(_over_seeds(partial(_p99_seed, factor, n), seeds), dtype=float)
    alarms, hit = runs[:, :2].mean(axis=0)
    return float(alarms), float(hit), float(np.nanmean(runs[:, 2]))


def _p99_seed(factor: float, n: int, seed: int) -> tuple[bool, bool, float]:
    from harness.report import stats
    from harness.report.compare import PairedRow, compare_frame
    from harness.report.model import Report
    from harness.report.policy import SERVING_METRICS

    spec = next(s for s in SERVING_METRICS if s.name == "latency_p99_s")
    policy = Policy.model_validate({"alpha": ALPHA, "min_samples": 30, "metrics": {"latency_p99_s": {"margin_rel": 0.2}}})
    cohorts = ["a", "b", "c", "d"]
    rng = np.random.default_rng(seed)
    mu = rng.normal(np.log(0.5), 0.3, (4, n))
    base = np.exp(mu + rng.normal(0, 0.3, (4, n)))
    cand = np.exp(mu + rng.normal(0, 0.3, (4, n)))
    cand[0] *= factor
    rows = [PairedRow("moe", spec, "overall", "(all)", stats.paired_quantile(base.ravel(), cand.ravel(), 0.99, False, rng))]
    rows += [PairedRow("moe", spec, "cohort", c, stats.paired_quantile(base[i], cand[i], 0.99, False, rng))
             for i, c in enumerate(cohorts)]
    comps = compare_frame(rows, policy, ALPHA, lambda c, s, sc: f"{c}:{s.kind}")
    report = Report("sim", "", "", "dense", ["moe"], [], {}, cohorts, comps, [], [], [], {}, [], None)
    result = evaluate_gate(report, policy)
    checks = {c.cohort: c for c in result.checks}
    return result.exit_code == 1, checks["a"].status == "regression", checks["a"].power_at_margin


def test_p99_latency_gate_false_alarms_and_power():
    fa, _, _ = _simulate_p99(1.0)
    _, power, claimed = _simulate_p99(1.2)
    print(f"\np99 latency (1000 prompts/cohort): false-alarm rate {fa:.3f}; +20% p99 in one cohort caught "
          f"{power:.3f}, claimed {claimed:.3f}")
    assert _not_above(fa, ALPHA, 300)
    # Bootstrap power for an extreme quantile is approximate: allow 10 points (documented).
    assert power >= claimed - 0.10


# -- serving figures under time-correlated load (issue 19) -------------------------------------------
#
# Mirror groups in time order, 4 cohorts shuffled over the run. Log latency of a call =
# prompt difficulty (shared by both routes) + a slow drift of the machine's load (shared, AR(1)
# with phi 0.995) + each server's own slow swings (its share of the CPU, AR(1) phi 0.9, not shared)
# + per-call noise. The old method (i.i.d. bootstrap over prompts, Wilcoxon for tokens/s) reads
# one server's slow stretch as many independent slow calls; the time-aware one resamples blocks.

SERVING_GROUPS = {"a": 300, "b": 300, "c": 300, "d": 300}
SERVING_SEEDS = 200
SERVING_POLICY = Policy.model_validate({"alpha": ALPHA, "min_samples": 30, "metrics": {
    "latency_p99_s": {"margin_rel": 0.2}, "output_tokens_per_s": {"margin_rel": 0.1}}})


def _serving_pairs(rng, correlated: bool, factor: float = 1.0):
    """A ServingPairs as the report loads it (rows in time order); `factor` scales cohort a's candidate."""
    import pandas as pd

    from harness.report.load import ServingPairs

    cohorts = np.repeat(list(SERVING_GROUPS), list(SERVING_GROUPS.values()))
    rng.shuffle(cohorts)
    n = len(cohorts)
    mu = rng.normal(np.log(0.5), 0.3, n)
    drift = ar1(rng, 0.995, 0.5, (n,)) if correlated else 0.0
    swings = ar1(rng, 0.9, 0.15, (2, n)) if correlated else np.zeros((2, n))
    base = np.exp(mu + drift + swings[0] + rng.normal(0, 0.2, n))
    cand = np.exp(mu + drift + swings[1] + rng.normal(0, 0.2, n))
    cand[cohorts == "a"] *= factor
    zeros = np.zeros(n)
    frame = pd.DataFrame({"cohort": pd.Categorical(cohorts), "error_base": zeros, "error_cand": zeros,
                          "timeout_base": zeros, "timeout_cand": zeros,
                          "out_tps_base": 64 / base, "out_tps_cand": 64 / cand})
    nan = np.full((n, 1), np.nan)
    return ServingPairs(frame, {("latency_s", "base"): base[:, None], ("latency_s", "cand"): cand[:, None],
                                ("ttft_s", "base"): nan, ("ttft_s", "cand"): nan})


def _old_serving_rows(pairs, rng):
    """The method before issue 19: prompts as independent (i.i.d. bootstrap, Wilcoxon)."""
    from harness.report import stats
    from harness.report.compare import PairedRow, _scopes
    from harness.report.policy import SERVING_METRICS

    rows = []
    for spec in SERVING_METRICS:
        if spec.name == "latency_p99_s":
            B, C = pairs.times[("latency_s", "base")], pairs.times[("latency_s", "cand")]
            for scope, cohort, part in _scopes(pairs.frame.assign(i=np.arange(len(B)))):
                idx = part["i"].to_numpy()
                rows.append(PairedRow("moe", spec, scope, cohort, stats.paired_quantile(B[idx], C[idx], 0.99, False, rng)))
        elif spec.name == "output_tokens_per_s":
            for scope, cohort, part in _scopes(pairs.frame):
                rows.append(PairedRow("moe", spec, scope, cohort, stats.paired_mean(
                    part["out_tps_base"].to_numpy(), part["out_tps_cand"].to_numpy(), True, rng)))
    return rows


def _simulate_serving(correlated: bool, factor: float = 1.0, old: bool = False, seeds: int = SERVING_SEEDS):
    runs = np.array(_over_seeds(partial(_serving_seed, correlated, factor, old), seeds), dtype=float)
    alarms, hit = runs[:, :2].mean(axis=0)
    return float(alarms), float(hit), float(np.nanmean(runs[:, 2]))


def _serving_seed(correlated: bool, factor: float, old: bool, seed: int) -> tuple[bool, bool, float]:
    from harness.report.compare import compare_frame, serving_results
    from harness.report.load import RouteInfo
    from harness.report.model import Report

    rng = np.random.default_rng(seed)
    pairs = _serving_pairs(rng, correlated, factor)
    rows = (_old_serving_rows(pairs, rng) if old else
            [r for r in serving_results(pairs, RouteInfo("dense", "baseline"), RouteInfo("moe", "candidate"), rng, [])
             if r.spec.name in SERVING_POLICY.metrics])
    comps = compare_frame(rows, SERVING_POLICY, ALPHA, lambda c, s, sc: f"{c}:{s.kind}")
    report = Report("sim", "", "", "dense", ["moe"], [], {}, list(SERVING_GROUPS), comps, [], [], [], {}, [], None)
    result = evaluate_gate(report, SERVING_POLICY)
    p99 = next(c for c in result.checks if c.cohort == "a" and c.metric == "latency_p99_s")
    return result.exit_code == 1, p99.status == "regression", p99.power_at_margin


def test_serving_false_alarms_under_time_correlated_load():
    old, _, _ = _simulate_serving(correlated=True, old=True)
    new, _, _ = _simulate_serving(correlated=True)
    calm, _, _ = _simulate_serving(correlated=False)
    print(f"\nserving gate (p99 latency + tokens/s, 4 cohorts x 300 groups, {SERVING_SEEDS} seeds): false-alarm rate under "
          f"time-correlated load: old per-prompt method {old:.3f}, time-aware {new:.3f}; without drift {calm:.3f} (alpha {ALPHA})")
    assert not _not_above(old, ALPHA, SERVING_SEEDS), f"the old method should over-alarm here: {old:.3f}"
    assert _not_above(new, ALPHA, SERVING_SEEDS), f"time-aware false-alarm rate {new:.3f} significantly above alpha"
    assert _not_above(calm, ALPHA, SERVING_SEEDS)


def test_serving_p99_power_with_time_aware_cis():
    _, power, claimed = _simulate_serving(correlated=False, factor=1.2)
    _, power_c, claimed_c = _simulate_serving(correlated=True, factor=1.2)
    print(f"\n+20% p99 in one cohort (300 groups): caught {power:.3f}, claimed {claimed:.3f}; under time-correlated load "
          f"caught {power_c:.3f}, claimed {claimed_c:.3f}")
    # Bootstrap power for an extreme quantile is approximate: allow 10 points, as for the p99 test above.
    assert power >= claimed - 0.10
    assert power_c >= claimed_c - 0.10
