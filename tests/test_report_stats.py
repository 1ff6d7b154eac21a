"""Statistical primitives against scipy/statsmodels directly and against brute force."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats as sps
from statsmodels.stats.contingency_tables import mcnemar
from statsmodels.stats.multitest import multipletests

from harness.report import stats


def test_tail_bootstrap_matches_brute_force_distribution():
    rng = np.random.default_rng(1)
    base = rng.lognormal(0, 0.5, (20000, 2))
    cand = base * rng.lognormal(0.05, 0.2, (20000, 2))
    qb1, qc1 = stats._boot_quantiles_gather(base, cand, 0.99, 2000, np.random.default_rng(2))
    qb2, qc2 = stats._boot_quantiles_tail(base, cand, 0.99, 2000, np.random.default_rng(3))
    assert qb2.mean() == pytest.approx(qb1.mean(), rel=0.01)
    assert (qc2 - qb2).std() == pytest.approx((qc1 - qb1).std(), rel=0.12)
    assert np.quantile(qc2 - qb2, 0.5) == pytest.approx(np.quantile(qc1 - qb1, 0.5), abs=0.03)


def test_paired_mean_binary_is_mcnemar_and_one_sided_binomial():
    base = np.array([1] * 30 + [0] * 10 + [1] * 12 + [0] * 3, dtype=float)
    cand = np.array([1] * 30 + [0] * 10 + [0] * 12 + [1] * 3, dtype=float)
    r = stats.paired_mean(base, cand, True, np.random.default_rng(0))
    assert r.test == "McNemar exact"
    assert r.p_two_sided == pytest.approx(mcnemar([[30, 12], [3, 10]], exact=True).pvalue)
    assert r.p_worse == pytest.approx(sps.binomtest(12, 15, 0.5, alternative="greater").pvalue)
    assert r.diff == pytest.approx(-9 / 55)


def test_wilcoxon_one_sided_from_one_ranking_matches_scipy():
    rng = np.random.default_rng(5)
    base = rng.normal(0.6, 0.1, 400)
    cand = base + rng.normal(-0.01, 0.08, 400)
    r = stats.paired_mean(base, cand, True, rng)
    d = cand - base
    assert r.p_two_sided == pytest.approx(sps.wilcoxon(d).pvalue)
    assert r.p_worse == pytest.approx(sps.wilcoxon(d, alternative="less").pvalue)
    r2 = stats.paired_mean(base, cand, False, rng)
    assert r2.p_worse == pytest.approx(sps.wilcoxon(d, alternative="greater").pvalue)


def test_holm_matches_statsmodels_and_keeps_nan():
    p = [0.01, float("nan"), 0.04, 0.03, 0.5]
    adj = stats.holm(p, 0.05)
    ref = multipletests([0.01, 0.04, 0.03, 0.5], method="holm")[1]
    assert np.isnan(adj[1])
    assert [adj[0], adj[2], adj[3], adj[4]] == pytest.approx(list(ref))


def test_power_and_sample_size_are_consistent():
    n = stats.prompts_needed(0.05, 0.3, 0.01, two_sided=False)
    assert stats.power_at(0.05, n, 0.3, 0.01) == pytest.approx(0.8, abs=0.02)
    mde = stats.minimal_detectable_effect(n, 0.3, 0.01, two_sided=False)
    assert mde == pytest.approx(0.05, rel=0.02)
