"""A/A runs: a candidate that serves the same checkpoint as the baseline.

Such a run is supported as calibration (docs/report.md, "A/A calibration"): every verdict it
raises is a false alarm of the method, or a difference between the two servers rather than the
checkpoint (two CPU servers on shared cores do not get equal CPU). The second shows in the
server's own timings, so the report compares queue, prefill and decode time per mirror group and
warns when they differ. Pure functions of loaded frames.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from harness.report import stats
from harness.report.load import SERVER_PHASES, RouteInfo
from harness.report.model import Comparison


def aa_candidates(baseline: RouteInfo, candidates: list[RouteInfo]) -> list[RouteInfo]:
    """Candidates answering from the baseline's checkpoint (same serve.model and engine args, or
    for endpoints routecheck does not start, the same model name)."""
    return [c for c in candidates if c.checkpoint is not None and c.checkpoint == baseline.checkpoint]


def aa_note(baseline: RouteInfo, cand: RouteInfo, comparisons: list[Comparison]) -> str:
    flagged = [c for c in comparisons if c.candidate == cand.name and c.verdict in ("regression", "improvement")]
    kinds = {k: sum(1 for c in flagged if c.kind == k) for k in ("quality", "serving")}
    return (f"A/A run: {cand.name} serves the same checkpoint as the baseline {baseline.name} ({baseline.checkpoint}). "
            f"Any verdict here is a false alarm or a difference between the two servers, not the checkpoint: "
            f"{kinds['quality']} quality and {kinds['serving']} serving cells flagged at alpha. "
            "Repeat it to calibrate this machine (docs/report.md, 'A/A calibration').")


# Differences smaller than these are not worth a warning, however significant.
MIN_RATIO = 1.10          # prefill, decode: per-request time ratio between the servers
MIN_QUEUE_S = 0.010       # queue: mean difference in seconds (queues are usually ~0)


def server_phase_warnings(baseline: RouteInfo, cand: RouteInfo, phases: pd.DataFrame, alpha: float,
                          rng: np.random.Generator) -> list[str]:
    """For an A/A pair: a warning per server-side phase (queue, prefill, decode) whose paired
    per-group difference is significant (time-aware CI, Holm over the phases) and material.
    Prefill and decode compare per-request log ratios (the same prompt and answer on both
    servers, so the ratio is their speed ratio); queue compares seconds."""
    results = []
    for phase in SERVER_PHASES:
        b, c = f"{phase}_base", f"{phase}_cand"
        if b not in phases or c not in phases:
            continue
        sub = phases[[b, c]].dropna()
        if phase != "queue":
            sub = sub[(sub[b] > 0) & (sub[c] > 0)]
        if len(sub) < 10:
            continue
        bv, cv = sub[b].to_numpy(dtype=float), sub[c].to_numpy(dtype=float)
        if phase == "queue":
            block = stats.time_series_block_length(bv, cv, positive=False)
            r = stats.paired_mean_in_time(bv, cv, False, rng, block)
            material = abs(r.diff) >= MIN_QUEUE_S
            size = f"{r.baseline.value * 1000:.1f} ms vs {r.candidate.value * 1000:.1f} ms mean"
        else:
            lb, lc = np.log(bv), np.log(cv)
            r = stats.paired_mean_in_time(lb, lc, False, rng, stats.time_series_block_length(lb, lc, positive=False))
            ratio = math.exp(r.diff)
            material = max(ratio, 1 / ratio) >= MIN_RATIO
            size = f"{cand.name} takes {ratio:.2f}x the time of {baseline.name} per request"
        results.append((phase, r, material, size))
    adjusted = stats.holm([r.p_two_sided for _, r, _, _ in results], alpha)
    out = []
    for (phase, r, material, size), p in zip(results, adjusted):
        if math.isnan(p) or p >= alpha or not material:
            continue
        out.append(f"A/A run {cand.name} vs {baseline.name}: server-side {phase} time differs ({size}, "
                   f"Holm p = {p:.2g}, n = {r.n}) although both serve one checkpoint: the servers did not get equal "
                   "resources (CPU share, placement, a noisy neighbour), so serving verdicts in this run measure "
                   "the machine, not the model. Give each server its own cores (routecheck pins vLLM CPU servers "
                   "when the machine has a core per server) and run nothing else beside it.")
    return out
