"""Paired statistics for route comparisons.

The prompt is the unit of analysis: callers aggregate samples within a prompt first, so a
prompt asked five times counts once, with its within-prompt spread folded into its mean.
Tests and intervals come from scipy/statsmodels; this module only chooses between them.
"""

from __future__ import annotations

import contextlib
import gc
import math
import warnings
from dataclasses import dataclass

import numpy as np
from scipy import stats
from statsmodels.stats.contingency_tables import mcnemar
from statsmodels.stats.multitest import multipletests
from statsmodels.stats.power import TTestPower
from statsmodels.stats.proportion import proportion_confint

CONFIDENCE = 0.95
POWER = 0.80
# Up to this many prompts the mean difference's CI is a paired bootstrap; above it the
# bootstrap distribution of a mean is normal to within Monte-Carlo noise, so the t-interval
# (same centre, same spread, no resampling cost) is used instead.
BOOTSTRAP_MAX_N = 5000
BOOTSTRAP_RESAMPLES = 2000
# Quantile differences are always bootstrapped; above this many prompts an m-out-of-n
# bootstrap (m = this) with sqrt(m/n) rescaling keeps the cost bounded.
QUANTILE_BOOT_M = 2000
QUANTILE_RESAMPLES = 1000

_power = TTestPower()


@dataclass
class Interval:
    value: float
    low: float
    high: float


@dataclass
class PairedResult:
    """Candidate minus baseline on the prompts both routes answered."""

    n: int
    baseline: Interval
    candidate: Interval
    diff: float
    diff_low: float
    diff_high: float
    se: float               # standard error of diff (for other CI levels and power)
    sd_diff: float          # per-prompt SD of the difference (NaN for quantiles)
    ci_method: str
    test: str
    p_two_sided: float
    p_worse: float          # one-sided p for "candidate is worse"


def _nan_interval() -> Interval:
    return Interval(float("nan"), float("nan"), float("nan"))


def mean_interval(x: np.ndarray, binary: bool) -> Interval:
    """Mean of per-prompt values with a 95% CI (Wilson for one-sample pass/fail, else t)."""
    n = len(x)
    if n == 0:
        return _nan_interval()
    m = float(np.mean(x))
    if binary:
        lo, hi = proportion_confint(float(np.sum(x)), n, alpha=1 - CONFIDENCE, method="wilson")
        return Interval(m, float(lo), float(hi))
    if n < 2:
        return Interval(m, float("nan"), float("nan"))
    sd = float(np.std(x, ddof=1))
    if sd == 0:
        return Interval(m, m, m)
    lo, hi = stats.t.interval(CONFIDENCE, n - 1, loc=m, scale=sd / math.sqrt(n))
    return Interval(m, float(lo), float(hi))


def _is_binary(a: np.ndarray) -> bool:
    return bool(np.all((a == 0) | (a == 1)))


def paired_mean(base: np.ndarray, cand: np.ndarray, higher_is_better: bool, rng: np.random.Generator) -> PairedResult:
    """Paired comparison of per-prompt means.

    Pass/fail with one sample per prompt gets McNemar's exact test (statsmodels; one-sided:
    the exact binomial test on the discordant pairs, which is what McNemar's exact test is).
    Anything else (scores, or pass rates averaged over samples) gets the Wilcoxon signed-rank
    test (scipy). The CI of the mean difference is a paired bootstrap over prompts
    (scipy.stats.bootstrap, percentile) up to BOOTSTRAP_MAX_N prompts, a t-interval above.
    """
    base = np.asarray(base, dtype=float)
    cand = np.asarray(cand, dtype=float)
    n = len(base)
    binary = n > 0 and _is_binary(base) and _is_binary(cand)
    bi, ci = mean_interval(base, binary), mean_interval(cand, binary)
    nan = float("nan")
    if n == 0:
        return PairedResult(0, bi, ci, nan, nan, nan, nan, nan, "none", "none", nan, nan)
    d = cand - base
    diff = float(d.mean())
    sd = float(d.std(ddof=1)) if n > 1 else nan
    se = sd / math.sqrt(n) if n > 1 else nan

    # Confidence interval of the mean difference.
    if n < 2 or sd == 0:
        lo = hi = diff
        ci_method = "degenerate (all differences equal)" if n > 1 else "none (one prompt)"
    elif n <= BOOTSTRAP_MAX_N:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            res = stats.bootstrap((d,), np.mean, n_resamples=BOOTSTRAP_RESAMPLES, confidence_level=CONFIDENCE,
                                  method="percentile", vectorized=True, rng=rng)
        lo, hi = float(res.confidence_interval.low), float(res.confidence_interval.high)
        se = float(res.standard_error)
        ci_method = f"paired bootstrap over prompts (percentile, {BOOTSTRAP_RESAMPLES} resamples)"
    else:
        lo, hi = stats.t.interval(CONFIDENCE, n - 1, loc=diff, scale=se)
        lo, hi = float(lo), float(hi)
        ci_method = "t-interval of the paired mean difference (n > %d)" % BOOTSTRAP_MAX_N

    # Tests. worse_alt is the scipy alternative meaning "candidate worse than baseline".
    worse_alt = "less" if higher_is_better else "greater"
    if binary:
        b = int(np.sum((base == 1) & (cand == 0)))   # baseline passed, candidate failed
        c = int(np.sum((base == 0) & (cand == 1)))   # candidate passed, baseline failed
        both = int(np.sum((base == 1) & (cand == 1)))
        neither = n - b - c - both
        test = "McNemar exact"
        if b + c == 0:
            p2 = pw = 1.0
        else:
            p2 = float(mcnemar([[both, b], [c, neither]], exact=True).pvalue)
            worse_count = b if higher_is_better else c
            pw = float(stats.binomtest(worse_count, b + c, 0.5, alternative="greater").pvalue)
    else:
        test = "Wilcoxon signed-rank"
        if not np.any(d != 0):
            p2 = pw = 1.0
        else:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                if np.count_nonzero(d) > 50:
                    # scipy uses the normal approximation here anyway; it is symmetric, so the
                    # one-sided p-value follows from the same z (one ranking instead of two).
                    res = stats.wilcoxon(d, zero_method="wilcox", alternative="two-sided", method="asymptotic")
                    p2 = float(res.pvalue)
                    z = float(res.zstatistic)
                    pw = float(stats.norm.sf(z) if worse_alt == "greater" else stats.norm.cdf(z))
                else:
                    p2 = float(stats.wilcoxon(d, zero_method="wilcox", alternative="two-sided").pvalue)
                    pw = float(stats.wilcoxon(d, zero_method="wilcox", alternative=worse_alt).pvalue)
    return PairedResult(n, bi, ci, diff, lo, hi, se, sd, ci_method, test, p2, pw)


# -- serving: mirror groups in time order -----------------------------------------------------------
#
# Latencies close in time share the servers' state (load, contention, a noisy neighbour), so
# per-prompt values are not independent: an i.i.d. bootstrap over prompts reads one slow minute of
# one route as many independent slow calls. Serving comparisons therefore resample *blocks* of
# consecutive mirror groups (circular block bootstrap, Politis & Romano 1992) with the block length
# chosen from the data (Politis & White 2004, arch's optimal_block_length). Both routes of a group
# stay together (paired: a group is one moment on both routes).

MIN_BLOCK_N = 20          # below this many groups the block length is 1 (too few to estimate it)
MAX_BLOCK_SHARE = 0.1     # and never more than this share of the groups (keep >= 10 blocks)
BLOCK_FACTOR = 2.0        # times the Politis-White length: blocks that short understate the variance
BLOCK_EST_MAX = 5000      # points the block-length estimate looks at (chunk means above that)


def block_length(*series: np.ndarray) -> int:
    """Block length for series in time order: the largest Politis-White circular estimate over
    the series (NaN dropped), rounded up, within [1, MAX_BLOCK_SHARE * n]."""
    from arch.bootstrap import optimal_block_length

    n = len(series[0]) if series else 0
    if n < MIN_BLOCK_N:
        return 1
    # Politis-White costs ~20 s on a million points: above BLOCK_EST_MAX, estimate on the means of
    # consecutive chunks and scale back (dependence shorter than a chunk then reads as none).
    chunk = max(1, -(-n // BLOCK_EST_MAX))
    best = 1.0
    for x in series:
        x = np.asarray(x, dtype=float)
        x = x[np.isfinite(x)]
        if chunk > 1:
            x = x[: len(x) // chunk * chunk].reshape(-1, chunk).mean(axis=1)
        if len(x) < MIN_BLOCK_N or np.ptp(x) <= 1e-9 * max(1.0, float(np.abs(x).max())):
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            b = float(optimal_block_length(x)["circular"].iloc[0])
        if math.isfinite(b):
            best = max(best, b)
    if best <= 1.5:
        return 1
    return int(max(1, min(math.ceil(BLOCK_FACTOR * best * chunk), math.floor(MAX_BLOCK_SHARE * n))))


def time_series_block_length(base: np.ndarray, cand: np.ndarray, positive: bool) -> int:
    """The block length for one paired serving comparison, from the per-group difference between
    the routes in time order (of logs, for positive quantities such as times). A drift both routes
    share cancels in the difference and needs no long blocks; each route's own slow swings (one
    server getting less CPU for a minute) do not cancel, and lengthen the blocks."""
    b, c = np.asarray(base, dtype=float), np.asarray(cand, dtype=float)
    if b.ndim == 2:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            b, c = np.nanmean(b, axis=1), np.nanmean(c, axis=1)
    if positive:
        with np.errstate(divide="ignore", invalid="ignore"):
            b, c = np.log(np.where(b > 0, b, np.nan)), np.log(np.where(c > 0, c, np.nan))
    return block_length(c - b)


def _block_indices(n: int, block: int, size: int, resamples: int, rng: np.random.Generator) -> np.ndarray:
    """(resamples x size) indices of circular blocks of `block` consecutive groups out of n."""
    nb = -(-size // block)
    starts = rng.integers(0, n, size=(resamples, nb))
    idx = (starts[:, :, None] + np.arange(block)) % n
    return idx.reshape(resamples, nb * block)[:, :size]


def _block_t(block: int, size: int) -> tuple[float, float]:
    """(df, t quantile for the 95% CI): the bootstrap SE comes from ~size/block blocks, so the
    reference distribution is Student's t with blocks - 1 degrees of freedom (normal for block 1)."""
    nb = max(2, -(-size // block))
    df = float("inf") if block == 1 else float(nb - 1)
    return df, float(stats.t.isf((1 - CONFIDENCE) / 2, df))


def _t_p(diff: float, se: float, df: float, higher_is_better: bool) -> tuple[float, float]:
    if se == 0 or math.isnan(se):
        return (1.0, 1.0) if diff == 0 else (0.0, 0.0)
    z = diff / se
    return float(2 * stats.t.sf(abs(z), df)), float(stats.t.cdf(z, df) if higher_is_better else stats.t.sf(z, df))


def _block_note(block: int, n: int, resamples: int, m: int | None = None) -> str:
    where = f"circular block bootstrap over mirror groups in time order (block {block} groups"
    where += ", Politis-White" if block > 1 else ", Politis-White found no dependence"
    if m is not None and m < n:
        where += f"; m-out-of-n, m={m}, sqrt(m/n) rescaled"
    return where + (f"; {resamples} resamples)" if resamples else "; exact bootstrap variance of the mean)")


# Means under strong dependence (a server's own slow swings): with Politis-White's block alone the
# paired t rejected at 7-8 % instead of 5 % in tests/test_stats_simulation.py's correlated load
# (2,000 runs); the longest block block_length allows (MAX_BLOCK_SHARE of the groups) and the 2b
# bias correction bring it to 4.5-5.6 % (bench/serving_calibration.py).


def _block_mean_var(d: np.ndarray, block: int) -> float:
    """Exact variance of a circular block bootstrap resample's mean: the mean of ceil(n/block) block
    sums drawn uniformly from the n circular sums, so no resampling is needed."""
    n = len(d)
    nb = -(-n // block)
    ext = np.concatenate([d, d[: block - 1]])
    csum = np.concatenate([[0.0], np.cumsum(ext)])
    sums = csum[block : block + n] - csum[:n]
    return float(np.var(sums) / (block * block * nb))


def paired_mean_in_time(base: np.ndarray, cand: np.ndarray, higher_is_better: bool, rng: np.random.Generator,
                        block: int) -> PairedResult:
    """Paired mean difference of a serving figure per mirror group, groups in time order.

    CI and test: Student's t (blocks - 1 df) on the circular block bootstrap's standard error of
    the mean difference, computed exactly from block sums (no resampling), with blocks of at least
    a tenth of the groups once there is dependence and the 2b bias correction; pass/fail figures
    (errors, timeouts: rare events, where a normal approximation overstates a handful) keep
    McNemar's exact test.
    """
    base = np.asarray(base, dtype=float)
    cand = np.asarray(cand, dtype=float)
    n = len(base)
    d = cand - base
    if n < 2 or float(d.std(ddof=1)) == 0:  # nothing to resample: the plain paired comparison says so
        return paired_mean(base, cand, higher_is_better, rng)
    binary = _is_binary(base) and _is_binary(cand)
    bi, ci = mean_interval(base, binary), mean_interval(cand, binary)
    diff, sd = float(d.mean()), float(d.std(ddof=1))
    block = max(1, min(block, n))
    if block > 1:  # dependence found: the longest block allowed (see above), whatever Politis-White chose
        block = max(block, math.floor(MAX_BLOCK_SHARE * n))
    var = _block_mean_var(d, block)
    corrected = False
    if block > 1 and 2 * block <= n // 3:
        # The block variance falls short of the long-run variance by ~c/block: Richardson's step from
        # blocks b and 2b removes that term; never below the plain estimate.
        v2 = 2 * _block_mean_var(d, 2 * block) - var
        corrected = v2 > var
        var = max(var, v2)
    se = math.sqrt(var)
    df, tq = _block_t(block, n)
    lo, hi = diff - tq * se, diff + tq * se
    method = _block_note(block, n, 0) + ("; bias-corrected from blocks of 2x" if corrected else "")
    if binary:
        ref = paired_mean(base, cand, higher_is_better, rng)
        return PairedResult(n, bi, ci, diff, lo, hi, se, sd, method, ref.test, ref.p_two_sided, ref.p_worse)
    p2, pw = _t_p(diff, se, df, higher_is_better)
    return PairedResult(n, bi, ci, diff, lo, hi, se, sd, method, _block_test(df), p2, pw)


def _block_test(df: float) -> str:
    return "block bootstrap (normal approx.)" if math.isinf(df) else f"block bootstrap (t, {df:g} df)"


def paired_quantile(base: np.ndarray, cand: np.ndarray, q: float, higher_is_better: bool,
                    rng: np.random.Generator, block: int | None = None) -> PairedResult:
    """Difference of a quantile (e.g. p99 latency) between routes, bootstrapping prompts.

    `base`/`cand` are (prompts x samples) arrays (NaN = no value, e.g. a failed call): a
    resample draws whole prompts, so all samples of a prompt stay together. With `block`, rows are
    mirror groups in time order and a resample draws circular blocks of `block` consecutive
    groups (serving figures: see above). Above QUANTILE_BOOT_M prompts an m-out-of-n bootstrap
    is used, its deviations rescaled by sqrt(m/n). The p-value is the normal approximation with
    the bootstrap standard error.
    """
    base = np.asarray(base, dtype=float)
    cand = np.asarray(cand, dtype=float)
    if base.ndim == 1:
        base, cand = base.reshape(-1, 1), cand.reshape(-1, 1)
    n = base.shape[0]
    nan = float("nan")
    b_est, c_est = _quantile(base.ravel(), q), _quantile(cand.ravel(), q)
    bi, ci = Interval(b_est, nan, nan), Interval(c_est, nan, nan)
    diff = c_est - b_est
    if n < 5 or math.isnan(diff):
        return PairedResult(n, bi, ci, diff, nan, nan, nan, nan, "none (fewer than 5 prompts)", "bootstrap", nan, nan)
    m = min(n, QUANTILE_BOOT_M)
    if block is not None:
        idx = _block_indices(n, max(1, min(block, n)), m, QUANTILE_RESAMPLES, rng)
        qb, qc = _boot_quantiles_gather(base, cand, q, m, rng, idx)
    elif np.isnan(base).any() or np.isnan(cand).any() or m * base.shape[1] < 1000:
        qb, qc = _boot_quantiles_gather(base, cand, q, m, rng)
    else:
        qb, qc = _boot_quantiles_tail(base, cand, q, m, rng)
    scale = math.sqrt(m / n)
    diffs = diff + scale * ((qc - qb) - np.nanmean(qc - qb))
    bstar_b = b_est + scale * (qb - np.nanmean(qb))
    bstar_c = c_est + scale * (qc - np.nanmean(qc))
    a = (1 - CONFIDENCE) / 2
    lo, hi = np.nanquantile(diffs, [a, 1 - a])
    bi = Interval(b_est, *map(float, np.nanquantile(bstar_b, [a, 1 - a])))
    ci = Interval(c_est, *map(float, np.nanquantile(bstar_c, [a, 1 - a])))
    se = float(np.nanstd(diffs, ddof=1))
    if block is not None and block > 1:
        # Few blocks: Student's t on the block bootstrap SE (the percentile interval is too narrow).
        df, tq = _block_t(min(block, n), m)
        lo, hi = diff - tq * se, diff + tq * se
        p2, pw = _t_p(diff, se, df, higher_is_better)
        method = _block_note(min(block, n), n, QUANTILE_RESAMPLES, m)
        return PairedResult(n, bi, ci, diff, float(lo), float(hi), se, nan, method, _block_test(df), p2, pw)
    if se == 0 or math.isnan(se):
        p2 = pw = 1.0 if diff == 0 else 0.0
    else:
        z = diff / se
        p2 = float(2 * stats.norm.sf(abs(z)))
        pw = float(stats.norm.sf(z) if not higher_is_better else stats.norm.cdf(z))
    if block is not None:
        method = _block_note(max(1, min(block, n)), n, QUANTILE_RESAMPLES, m)
    else:
        method = (f"paired bootstrap over prompts ({QUANTILE_RESAMPLES} resamples)" if m == n else
                  f"paired m-out-of-n bootstrap over prompts (m={m}, {QUANTILE_RESAMPLES} resamples, sqrt(m/n) rescaled)")
    return PairedResult(n, bi, ci, diff, float(lo), float(hi), se, nan, method, "bootstrap (normal approx.)", p2, pw)


def _boot_quantiles_gather(base: np.ndarray, cand: np.ndarray, q: float, m: int, rng: np.random.Generator,
                           idx: np.ndarray | None = None):
    """Quantile of each resample (m prompts with replacement, whole prompts, or the rows `idx`), by brute force."""
    if idx is None:
        idx = rng.integers(0, base.shape[0], size=(QUANTILE_RESAMPLES, m))
    has_nan = bool(np.isnan(base).any() or np.isnan(cand).any())
    # float32 halves the memory traffic of the gather and the partition; quantiles of times need no more.
    b32, c32 = base.astype(np.float32), cand.astype(np.float32)
    qb = _quantile_rows(b32[idx].reshape(QUANTILE_RESAMPLES, -1), q, has_nan).astype(float)
    qc = _quantile_rows(c32[idx].reshape(QUANTILE_RESAMPLES, -1), q, has_nan).astype(float)
    return qb, qc


def _boot_quantiles_tail(base: np.ndarray, cand: np.ndarray, q: float, m: int, rng: np.random.Generator):
    """Same distribution as _boot_quantiles_gather for a high quantile, touching only the tail.

    A resample's q-quantile depends only on its largest values. Let S be the prompts with a value
    in the top tail (below the q-quantile by a wide margin) on either route. The number of draws
    that land in S is Binomial(m, |S|/n) and, given that number, they are uniform over S; draws
    outside S are below both tails and only count towards the total. Rows where the tail turns
    out too thin (not enough draws above the threshold) are redone by brute force.
    """
    n, k = base.shape
    total = m * k
    h = q * (total - 1)
    lo_pos = int(math.floor(h))
    frac = h - lo_pos
    need = total - lo_pos                       # values >= x_(lo_pos) counted from the top
    if q < 0.5 or need > total // 4:
        return _boot_quantiles_gather(base, cand, q, m, rng)
    tail_share = min(1.0, 4 * need / total + 8 * math.sqrt(need) / total)
    tb = np.quantile(base, 1 - tail_share)
    tc = np.quantile(cand, 1 - tail_share)
    in_s = (base >= tb).any(axis=1) | (cand >= tc).any(axis=1)
    S = np.nonzero(in_s)[0]
    B = QUANTILE_RESAMPLES
    hits = rng.binomial(m, len(S) / n, size=B)
    K = int(hits.max()) if len(hits) else 0
    if K == 0:
        return _boot_quantiles_gather(base, cand, q, m, rng)
    draws = S[rng.integers(0, len(S), size=(B, K))]
    valid = np.arange(K)[None, :] < hits[:, None]
    out = []
    for vals, thr in ((base, tb), (cand, tc)):
        v = vals[draws]                                        # (B, K, k)
        v = np.where(valid[:, :, None], v, -np.inf).reshape(B, -1)
        enough = (v >= thr).sum(axis=1) >= need + 1
        top = -np.sort(-v, axis=1)[:, : need + 1]              # descending, the part that matters
        x_lo = top[:, need - 1]                                # ascending index lo_pos
        x_hi = top[:, need - 2] if need >= 2 else top[:, 0]    # ascending index lo_pos + 1
        res = x_lo + frac * (x_hi - x_lo)
        out.append((res, enough))
    (qb, ok_b), (qc, ok_c) = out
    bad = ~(ok_b & ok_c)
    if bad.any():
        gb, gc = _boot_quantiles_gather(base, cand, q, m, rng)
        qb[bad], qc[bad] = gb[: bad.sum()], gc[: bad.sum()]
    return qb, qc


def _quantile(x: np.ndarray, q: float) -> float:
    x = x[~np.isnan(x)]
    return float(np.quantile(x, q)) if len(x) else float("nan")


def _quantile_rows(a: np.ndarray, q: float, has_nan: bool) -> np.ndarray:
    if has_nan:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return np.nanquantile(a, q, axis=1)
    return np.quantile(a, q, axis=1)


@contextlib.contextmanager
def _no_gc_collect():
    """statsmodels' Holm branch calls gc.collect(), which costs ~0.15 s per call in a process
    holding large frames (the scale benchmark, the simulation); skip that call only."""
    saved = gc.collect
    gc.collect = lambda *a, **k: 0
    try:
        yield
    finally:
        gc.collect = saved


def holm(pvalues: list[float], alpha: float) -> list[float]:
    """Holm-adjusted p-values (statsmodels); NaN p-values stay NaN and do not count."""
    p = np.asarray(pvalues, dtype=float)
    out = np.full(len(p), np.nan)
    ok = ~np.isnan(p)
    if ok.any():
        with _no_gc_collect():
            out[ok] = multipletests(p[ok], alpha=alpha, method="holm")[1]
    return out.tolist()


def planning_sd(sd: float, binary: bool) -> float:
    """SD used for power when the sample shows none (e.g. all differences zero)."""
    if math.isnan(sd) or sd == 0:
        return 0.5 if binary else 0.25
    return sd


# Asymptotic relative efficiency of the Wilcoxon signed-rank test to the t-test (normal data).
WILCOXON_ARE = 3 / math.pi


def _efficiency(test: str) -> float:
    return WILCOXON_ARE if test.startswith("Wilcoxon") else 1.0


def minimal_detectable_effect(n: int, sd: float, alpha: float, two_sided: bool = True, power: float = POWER,
                              test: str = "") -> float:
    """Smallest true mean difference detected with `power` at this n (t quantiles, df = n - 1)."""
    if n < 2 or math.isnan(sd):
        return float("nan")
    n_eff = n * _efficiency(test)
    a = alpha / 2 if two_sided else alpha
    return float((stats.t.isf(a, n - 1) + stats.t.ppf(power, n - 1)) * sd / math.sqrt(n_eff))


def prompts_needed(effect: float, sd: float, alpha: float, two_sided: bool = True, power: float = POWER,
                   test: str = "") -> int | None:
    """Prompts needed to detect `effect` with `power` (normal approximation, one t refinement)."""
    if not effect or math.isnan(effect) or math.isnan(sd) or sd <= 0:
        return None
    a = alpha / 2 if two_sided else alpha
    n = ((stats.norm.isf(a) + stats.norm.ppf(power)) * sd / abs(effect)) ** 2
    df = max(n - 1, 1)
    n = ((stats.t.isf(a, df) + stats.t.ppf(power, df)) * sd / abs(effect)) ** 2
    return int(math.ceil(n / _efficiency(test)))


def power_at(effect: float, n: int, sd: float, alpha: float, two_sided: bool = False, test: str = "",
             diff: float = 0.0) -> float:
    """Power to detect a true difference of `effect` with n prompts (one-sided by default).

    McNemar exact: the exact conditional power of the binomial test on discordant pairs,
    with the discordant share taken from the data (E[d^2] for d in {-1, 0, 1}).
    Wilcoxon: t-test power at n x 3/pi (its efficiency on normal data). Else: t-test power.
    """
    if n < 2 or math.isnan(sd) or sd <= 0 or not effect or math.isnan(effect):
        return float("nan")
    a = alpha / 2 if two_sided else alpha
    if test.startswith("McNemar"):
        p_disc = max(sd * sd * (n - 1) / n + diff * diff, abs(effect))
        q = min(1.0, (p_disc + abs(effect)) / (2 * p_disc))
        if n <= 20000:
            k = np.arange(1, n + 1)
            crit = stats.binom.isf(a, k, 0.5)                 # reject when worse-count > crit
            return float(np.sum(stats.binom.pmf(k, n, p_disc) * stats.binom.sf(crit, k, q)))
    alt = "two-sided" if two_sided else "larger"
    return float(_power.power(effect_size=abs(effect) / sd, nobs=n * _efficiency(test), alpha=alpha, alternative=alt))
