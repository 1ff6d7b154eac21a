"""Calibration of the serving comparisons: how often they reject with no difference between routes.

The paired serving tests (harness/report/stats.py: circular block bootstrap over mirror groups in
time order) on the simulated load of tests/test_stats_simulation.py, with no effect: log latency =
prompt difficulty + a shared slow drift (AR(1) phi 0.995) + each server's own swings (AR(1), phi
below) + noise; 1,200 groups, 4 cohorts of 300 in random order. Prints, per scenario, the share
of runs with two-sided p < 0.05 for the mean tokens/s difference and the p99 latency difference,
over the whole run and within one cohort (alpha 0.05: a calibrated test rejects ~5 %).

    python bench/serving_calibration.py [--seeds 2000] [--p99-seeds 300]
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from harness.report import stats  # noqa: E402
from harness.testing.simulated_load import ar1  # noqa: E402  (the tests' load: one definition)

SCENARIOS = {  # name: (shared drift sd, per-server swing sd, swing phi)
    "no dependence": (0.0, 0.0, 0.9),
    "the tests' correlated load": (0.5, 0.15, 0.9),
    "longer swings (phi 0.97)": (0.0, 0.15, 0.97),
}


def _latencies(rng: np.random.Generator, drift_sd: float, swing_sd: float, phi: float, n: int = 1200):
    mu = rng.normal(np.log(0.5), 0.3, n)
    drift = ar1(rng, 0.995, drift_sd, (n,)) if drift_sd else 0.0
    swings = ar1(rng, phi, swing_sd, (2, n)) if swing_sd else np.zeros((2, n))
    base = np.exp(mu + drift + swings[0] + rng.normal(0, 0.2, n))
    cand = np.exp(mu + drift + swings[1] + rng.normal(0, 0.2, n))
    return base, cand, rng.integers(0, 4, n) == 0


def _p_mean(b, c, rng):
    return stats.paired_mean_in_time(b, c, True, rng, stats.time_series_block_length(b, c, positive=True)).p_two_sided


def _p_p99(b, c, rng):
    blk = stats.time_series_block_length(b, c, positive=True)
    return stats.paired_quantile(b, c, 0.99, False, rng, block=blk).p_two_sided


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=2000, help="runs per scenario for the means")
    ap.add_argument("--p99-seeds", type=int, default=300, help="runs per scenario for p99 (1,000 resamples each)")
    args = ap.parse_args()
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
          f"load average {os.getloadavg()[0]:.1f}")
    print(f"{'scenario':30s} {'figure':16s} {'runs':>5s} {'whole run':>10s} {'one cohort':>11s}")
    for name, (drift, swing, phi) in SCENARIOS.items():
        for figure, p_of, seeds in (("mean tokens/s", _p_mean, args.seeds), ("p99 latency", _p_p99, args.p99_seeds)):
            t0, whole, cohort = time.perf_counter(), [], []
            for seed in range(seeds):
                rng = np.random.default_rng(10**6 + seed)
                b, c, one = _latencies(rng, drift, swing, phi)
                tps_b, tps_c = (64 / b, 64 / c) if figure.startswith("mean") else (b, c)
                whole.append(p_of(tps_b, tps_c, rng))
                cohort.append(p_of(tps_b[one], tps_c[one], rng))
            rate = lambda p: float(np.mean(np.asarray(p) < 0.05))  # noqa: E731
            print(f"{name:30s} {figure:16s} {seeds:5d} {rate(whole):10.3f} {rate(cohort):11.3f}"
                  f"   ({time.perf_counter() - t0:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
