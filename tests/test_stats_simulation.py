"""Simulation: the gate's false-alarm rate and power, measured on synthetic paired data with known effects.

Each seed is one gate run over 4 cohorts (+ overall) through the same code the CLI uses
(quality_results -> compare_frame -> evaluate_gate). The measured rates are printed and
recorded in docs/benchmarks.md ("Report and gate").
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats as sps

from harness.gate.evaluate import evaluate_gate
from harness.report.build import quality_only_report
from harness.report.policy import Policy
from harness.testing.synthetic import paired_quality_frame

SEEDS = 400
ALPHA = 0.05
COHORTS = {"a": 300, "b": 300, "c": 300, "d": 300}


def _policy(metric: str, margin: float) -> Policy:
    return Policy.model_validate({"alpha": ALPHA, "min_samples": 30, "metrics": {metric: {"margin": margin}}})


def _simulate(binary: bool, margin: float, drop: float, seeds: int = SEEDS):
    metric = "task_completion.pass_rate" if binary else "task_completion.score"
    policy = _policy(metric, margin)
    any_alarm = hit = other_alarms = 0
    claimed = []
    for seed in range(seeds):
        rng = np.random.default_rng(seed)
        q = paired_quality_frame(rng, COHORTS, {"a": drop} if drop else None, binary=binary)
        report = quality_only_report(q, "dense", policy, rng=rng)
        result = evaluate_gate(report, policy)
        checks = {c.cohort: c for c in result.checks}
        any_alarm += result.exit_code == 1
        hit += checks["a"].status == "regression"
        other_alarms += any(checks[c].status == "regression" for c in ("b", "c", "d"))
        claimed.append(checks["a"].power_at_margin)
    return any_alarm / seeds, hit / seeds, other_alarms / seeds, float(np.mean(claimed))


def _not_above(rate: float, target: float, n: int) -> bool:
    """The measured rate is not significantly above target (one-sided exact binomial test, 5%)."""
    return sps.binomtest(round(rate * n), n, target, alternative="greater").pvalue > 0.05


pytestmark = pytest.mark.slow  # ~3 minutes on the 2-core machine


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
    from harness.report import stats
    from harness.report.compare import PairedRow, compare_frame
    from harness.report.model import Report
    from harness.report.policy import SERVING_METRICS

    spec = next(s for s in SERVING_METRICS if s.name == "latency_p99_s")
    policy = Policy.model_validate({"alpha": ALPHA, "min_samples": 30, "metrics": {"latency_p99_s": {"margin_rel": 0.2}}})
    alarms = hit = 0
    claimed = []
    cohorts = ["a", "b", "c", "d"]
    for seed in range(seeds):
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
        alarms += result.exit_code == 1
        hit += checks["a"].status == "regression"
        claimed.append(checks["a"].power_at_margin)
    return alarms / seeds, hit / seeds, float(np.nanmean(claimed))


def test_p99_latency_gate_false_alarms_and_power():
    fa, _, _ = _simulate_p99(1.0)
    _, power, claimed = _simulate_p99(1.2)
    print(f"\np99 latency (1000 prompts/cohort): false-alarm rate {fa:.3f}; +20% p99 in one cohort caught "
          f"{power:.3f}, claimed {claimed:.3f}")
    assert _not_above(fa, ALPHA, 300)
    # Bootstrap power for an extreme quantile is approximate: allow 10 points (documented).
    assert power >= claimed - 0.10
