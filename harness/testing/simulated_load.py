"""The simulated server load of the gate's calibration (tests/test_stats_simulation.py and
bench/serving_calibration.py): one definition, so the bench measures the load the tests assert on."""

from __future__ import annotations

import numpy as np


def ar1(rng: np.random.Generator, phi: float, sd: float, shape: tuple[int, ...]) -> np.ndarray:
    """A stationary AR(1) series along the last axis with marginal standard deviation `sd`:
    latencies close in time share the server's load (drift, per-server swings)."""
    from scipy.signal import lfilter

    return lfilter([1], [1, -phi], rng.normal(0, sd * np.sqrt(1 - phi**2), shape), axis=-1)
