"""The report as data: what every renderer (terminal, Markdown, JSON, JUnit, HTML) draws from.

`Report.to_dict()` is the JSON output; its schema is documented in docs/report.md and
versioned by SCHEMA (bump it when a field changes meaning or disappears).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

SCHEMA = "routecheck.report/v1"

# "insufficient": fewer prompts than min_samples (none at all: the note says which route has no data).
VERDICTS = ("regression", "improvement", "no change", "inconclusive", "insufficient")


@dataclass
class Comparison:
    candidate: str
    scope: str                  # overall | cohort | discovered | slice
    cohort: str                 # cohort name, "(all)" for overall, cluster/slice label otherwise
    metric: str
    kind: str                   # quality | serving
    label: str
    higher_is_better: bool
    n_prompts: int
    baseline: float
    baseline_ci: tuple[float, float]
    candidate_value: float
    candidate_ci: tuple[float, float]
    diff: float                 # candidate - baseline
    diff_ci: tuple[float, float]
    se: float
    sd_diff: float
    ci_method: str
    test: str
    p_value: float              # two-sided, unadjusted
    p_worse: float              # one-sided "candidate worse", unadjusted (used by the gate)
    family: str                 # the multiple-testing family this p-value was corrected in
    family_size: int
    p_adjusted: float           # Holm-adjusted within the family
    margin: float               # absolute, in the metric's units (relative margins already applied)
    margin_spec: str            # e.g. "0.05 absolute" or "10% of baseline"
    verdict: str
    mde: float                  # minimal detectable |difference| at 80% power, family-corrected alpha
    prompts_needed: int | None  # prompts to detect `margin` with 80% power
    power_at_margin: float      # power of this test to detect a difference of `margin` (two-sided, alpha / family size)
    note: str = ""


@dataclass
class WorstExample:
    candidate: str
    cohort: str
    metric: str
    prompt_id: str
    baseline_value: float
    candidate_value: float
    prompt_text: str
    baseline_text: str
    candidate_text: str


@dataclass
class Discovery:
    reason: str
    method: str
    k: int
    silhouette: dict[str, float]
    clusters: list[dict[str, Any]]
    comparisons: list[Comparison]
    worst_slices: list[Comparison]
    slices_searched: int
    correction: str


@dataclass
class Report:
    run_id: str
    generated_at: str
    tool_version: str
    baseline: str
    candidates: list[str]
    routes: list[dict[str, Any]]
    settings: dict[str, Any]
    cohorts: list[str]
    comparisons: list[Comparison]
    serving: list[dict[str, Any]]
    server_phases: list[dict[str, Any]]
    server_metrics: list[dict[str, Any]]
    latency_cdf: dict[str, dict[str, list[float]]]
    worst_examples: list[WorstExample]
    discovery: Discovery | None
    warnings: list[str] = field(default_factory=list)
    experts: list[dict[str, Any]] = field(default_factory=list)  # harness.experts.panel.PanelRow dicts
    trajectories: list[dict[str, Any]] = field(default_factory=list)  # agent runs: load.load_trajectories rows
    timings_s: dict[str, float] = field(default_factory=dict)
    # Why the run cannot be judged at all (no responses, a route without calls, every call of the
    # baseline or of every route failed); None when there is data. Renderers say NO DATA, the gate exits 2.
    no_data: str | None = None
    # What data each route has, for saying why a comparison has none: per route, cohort ("(all)"
    # too) and evaluator, the prompts with a pass/fail and with a score (load.score_coverage) ...
    score_coverage: list[dict[str, Any]] = field(default_factory=list)
    # ... and the failed calls per route and error type (load.error_types).
    error_types: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # how serving CIs were made; A/A runs (harness/report/calibration.py)

    def summary(self) -> dict[str, int]:
        counts = {v: 0 for v in VERDICTS}
        for c in self.comparisons:
            counts[c.verdict] = counts.get(c.verdict, 0) + 1
        return counts

    def regressions(self) -> list[Comparison]:
        return [c for c in self.comparisons if c.verdict == "regression"]

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["schema"] = SCHEMA
        d["summary"] = self.summary()
        return _clean(d)


def _clean(x: Any) -> Any:
    """JSON has no NaN: map it to null; tuples become lists."""
    if isinstance(x, float):
        return None if math.isnan(x) or math.isinf(x) else x
    if isinstance(x, dict):
        return {str(k): _clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    if hasattr(x, "item"):  # numpy scalar
        return _clean(x.item())
    return x
