"""Metric definitions and the gate policy (gate.yaml): margins, alpha, minimum samples.

The report and the gate share these, so `routecheck report --policy gate.yaml` gives the
same margins the gate will use.
"""

from __future__ import annotations

import math

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from harness.config import ConfigError, describe_validation_error, key_text, read_yaml
from harness.experts.panel import CAPACITY_METRICS, SCALAR_METRICS, is_expert_metric, metric_name


@dataclass(frozen=True)
class MetricSpec:
    name: str
    kind: Literal["quality", "serving"]
    stat: Literal["mean", "quantile"]
    higher_is_better: bool
    column: str                 # column of the per-prompt (mean) or per-response (quantile) frame
    default_margin: float
    relative: bool = False      # margin is a share of the baseline's value
    q: float | None = None
    evaluator: str | None = None
    label: str = ""


SERVING_METRICS: tuple[MetricSpec, ...] = (
    MetricSpec("latency_p99_s", "serving", "quantile", False, "latency_s", 0.10, True, 0.99, label="p99 latency (s)"),
    MetricSpec("ttft_p99_s", "serving", "quantile", False, "ttft_s", 0.10, True, 0.99, label="p99 TTFT (s)"),
    MetricSpec("error_rate", "serving", "mean", False, "error", 0.01, label="error rate"),
    MetricSpec("timeout_rate", "serving", "mean", False, "timeout", 0.01, label="timeout rate"),
    MetricSpec("output_tokens_per_s", "serving", "mean", True, "out_tps", 0.10, True, label="output tokens/s"),
    MetricSpec("cost_per_trace_usd", "serving", "mean", False, "cost", 0.05, True, label="cost per trace (USD)"),
    # Last, so adding it left the bootstrap draws of the metrics above (one rng, in this order) unchanged.
    MetricSpec("latency_p50_s", "serving", "quantile", False, "latency_s", 0.10, True, 0.50, label="p50 latency (s)"),
)

QUALITY_MARGIN = 0.05

# Gated for every candidate whatever the policy says: a policy may loosen them (margin, alpha,
# min_samples), never omit or disable them. A candidate whose calls fail must not pass a policy
# that happens to gate only latency or quality (quality is scored on successful calls only).
ALWAYS_GATED = ("error_rate", "timeout_rate")

# Prompts per cohort below which a comparison is "insufficient" (the gate's default, and the
# report's when no policy is given); exploratory clusters and slices use EXPLORATORY_MIN_SAMPLES.
MIN_SAMPLES = 30
EXPLORATORY_MIN_SAMPLES = 10

# A quantile is judged only with at least this many values beyond it: p99 of 30 calls is their
# largest value, and the bootstrap of a sample maximum is inconsistent (it puts ~63 % of its mass
# on the observed maximum), so its p-values are not p-values: the A/A runs on the testbed flagged
# a 30-prompt cohort's p99 at p = 0.03 on a quiet machine. 3 beyond -> p99 needs 300 calls, p95 60.
TAIL_VALUES = 3


def tail_minimum(spec: MetricSpec) -> int:
    """Prompts a quantile metric needs before it can be judged (0 for a mean)."""
    if spec.stat != "quantile" or spec.q is None:
        return 0
    return math.ceil(TAIL_VALUES / (1 - spec.q) - 1e-9)


def quality_metrics(evaluator: str, has_pass: bool, has_score: bool) -> list[MetricSpec]:
    out = []
    if has_pass:
        out.append(MetricSpec(f"{evaluator}.pass_rate", "quality", "mean", True, "pass_rate", QUALITY_MARGIN,
                              evaluator=evaluator, label=f"{evaluator} pass rate"))
    if has_score:
        out.append(MetricSpec(f"{evaluator}.score", "quality", "mean", True, "score", QUALITY_MARGIN,
                              evaluator=evaluator, label=f"{evaluator} mean score"))
    return out


def metric_spec(name: str) -> MetricSpec:
    """The spec of a metric by its name: a serving metric, or `<evaluator>.pass_rate|score`."""
    for spec in SERVING_METRICS:
        if spec.name == name:
            return spec
    evaluator, _, column = name.rpartition(".")
    specs = quality_metrics(evaluator, column == "pass_rate", column == "score")
    if not specs:
        raise KeyError(name)
    return specs[0]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class MetricRule(_Strict):
    """Non-inferiority rule for one metric: a drop of `margin` must be caught."""

    margin: float | None = Field(None, gt=0)          # absolute (pass rate 0.05 = 5 points)
    margin_rel: float | None = Field(None, gt=0)      # share of the baseline value (latency 0.10 = +10%)
    alpha: float | None = Field(None, gt=0, lt=0.5)   # family-wise over the cohorts of this metric (Holm)
    min_samples: int | None = Field(None, ge=2)       # prompts per cohort below which the gate cannot judge
    max: float | None = None                          # absolute limits, for expert routing metrics
    min: float | None = None                          #   (a candidate's own routing: nothing to pair with)
    enabled: bool = True

    @model_validator(mode="after")
    def _one_margin(self) -> "MetricRule":
        if self.margin is not None and self.margin_rel is not None:
            raise ValueError("give 'margin' (absolute) or 'margin_rel' (relative), not both")
        return self


class CohortRule(_Strict):
    """Per-cohort override. No alpha here: alpha belongs to the metric's Holm family."""

    margin: float | None = Field(None, gt=0)
    margin_rel: float | None = Field(None, gt=0)
    min_samples: int | None = Field(None, ge=2)
    enabled: bool = True


class Policy(_Strict):
    version: Literal[1] = 1
    alpha: float = Field(0.05, gt=0, lt=0.5)
    min_samples: int = Field(MIN_SAMPLES, ge=2)
    on_insufficient: Literal["warn", "fail"] = "warn"
    on_no_data: Literal["fail", "insufficient"] = "fail"   # a gated metric with no data on a route
    on_inconclusive: Literal["pass", "fail"] = "pass"
    include_overall: bool = True
    metrics: dict[str, MetricRule] = Field(min_length=1)
    # cohort name -> metric name (or "*") -> override
    cohorts: dict[str, dict[str, CohortRule]] = Field(default_factory=dict)

    def rule(self, metric: str, cohort: str | None) -> tuple[float | None, bool, float, int, bool]:
        """(margin, relative, alpha, min_samples, enabled) for one metric in one cohort."""
        base = self.metrics[metric]
        margin, relative = (base.margin, False) if base.margin_rel is None else (base.margin_rel, True)
        min_samples = base.min_samples or self.min_samples
        enabled = base.enabled
        over = self.cohorts.get(cohort or "", {})
        for key in ("*", metric):
            o = over.get(key)
            if o is None:
                continue
            if o.margin is not None:
                margin, relative = o.margin, False
            if o.margin_rel is not None:
                margin, relative = o.margin_rel, True
            if o.min_samples is not None:
                min_samples = o.min_samples
            if not (key == "*" and metric in ALWAYS_GATED):  # "*": {enabled: false} leaves them gated
                enabled = enabled and o.enabled
        return margin, relative, base.alpha or self.alpha, min_samples, enabled

    def min_samples_for(self, metric: str, cohort: str | None) -> int:
        return self.rule(metric, cohort)[3] if metric in self.metrics else self.min_samples


def with_always_gated(policy: Policy) -> Policy:
    """The policy as the gate applies it: ALWAYS_GATED metrics added (default margins) if absent."""
    missing = {m: MetricRule() for m in ALWAYS_GATED if m not in policy.metrics}
    return policy.model_copy(update={"metrics": {**policy.metrics, **missing}}) if missing else policy


def load_policy(path: str | Path) -> Policy:
    path = Path(path)
    data = read_yaml(path, "policy file")
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping with a 'metrics' section, got {type(data).__name__}")
    try:
        policy = Policy.model_validate(data)
    except ValidationError as e:
        raise ConfigError(describe_validation_error(path, e, "docs/report.md 'Gate policy'")) from None
    problems = []
    for name in ALWAYS_GATED:
        if name in policy.metrics and not policy.metrics[name].enabled:
            problems.append(f"{path}: metrics.{key_text(name)}.enabled: {name} is always gated; loosen it with a margin "
                            "(e.g. {margin: 0.05}), it cannot be disabled")
        for cohort, rules in policy.cohorts.items():
            if name in rules and not rules[name].enabled:
                problems.append(f"{path}: cohorts.{key_text(cohort)}.{key_text(name)}.enabled: {key_text(name)} is always gated; loosen it with a "
                                "margin, it cannot be disabled")
    for name, rule in policy.metrics.items():
        limits = rule.max is not None or rule.min is not None
        if name.partition("@")[0] in SCALAR_METRICS + CAPACITY_METRICS and not is_expert_metric(name):
            try:
                metric_name(name)
            except ValueError as e:  # a misspelt expert metric: say what is expected
                problems.append(f"{path}: metrics.{key_text(name)}: {e}")
        elif is_expert_metric(name):
            if not limits or rule.margin is not None or rule.margin_rel is not None or rule.alpha is not None:
                problems.append(f"{path}: metrics.{key_text(name)}: an expert routing metric takes an absolute limit "
                                "('max' and/or 'min', e.g. {max: 0.05}), not a margin or alpha")
        elif limits:
            problems.append(f"{path}: metrics.{key_text(name)}: 'max'/'min' are for expert routing metrics "
                            "(e.g. dropped_token_rate@1.25); a paired metric takes 'margin' or 'margin_rel'")
    if problems:
        raise ConfigError("\n".join(problems))
    return with_always_gated(policy)


def expert_policy_metrics(policy: Policy) -> list[str]:
    return [name for name in policy.metrics if is_expert_metric(name)]


def check_policy_metrics(policy: Policy, path: Path | str, available: list[str], cohorts: list[str],
                         known: list[str] = ()) -> None:
    """Metrics or cohorts the run does not have are config errors, not silent passes. `known`:
    metrics the run has but cannot compare (no data on a route): the gate fails them, so they are
    not "no such metric"; neither are the ALWAYS_GATED ones."""
    problems = []
    for name in policy.metrics:
        if name in known or name in ALWAYS_GATED or is_expert_metric(name):  # expert metrics: per route, in the gate
            continue
        if name not in available:
            hint = ""
            if name.rpartition(".")[2] in ("pass_rate", "score"):
                hint = f" (no scores from {name.rpartition('.')[0]} in this run: was it scored? `routecheck score RUN -e ...`)"
            problems.append(f"{path}: metrics.{key_text(name)}: no such metric in this run{hint}; available: {', '.join(map(key_text, available))}")
    for cohort, rules in policy.cohorts.items():
        if cohort not in cohorts:
            problems.append(f"{path}: cohorts.{key_text(cohort)}: no such cohort in this run; cohorts: {', '.join(map(key_text, cohorts))}")
        for name in rules:
            if name != "*" and name not in policy.metrics:
                problems.append(f"{path}: cohorts.{key_text(cohort)}.{key_text(name)}: metric is not in 'metrics' (add a rule there first)")
    if problems:
        raise ConfigError("\n".join(problems))


def margins_from_policy(policy: Policy | None) -> dict[str, Any]:
    return {} if policy is None else {k: v.model_dump(exclude_none=True) for k, v in policy.metrics.items()}
