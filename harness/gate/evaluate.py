"""The gate stage: a CI verdict on a run from non-inferiority rules (gate.yaml).

Per candidate, gated metric and cohort (plus "overall" unless switched off):
- the one-sided test "candidate is worse" (McNemar exact / Wilcoxon / bootstrap, as in the
  report) is Holm-corrected across the cohorts of that metric at the metric's alpha, so a
  gate run on data with no effect fails with probability <= alpha per gated metric (the
  per-run bound is the sum of the gated metrics' alphas; the output states it);
- "regression" = significant after correction and non-inferiority not shown (the one-sided
  (1 - alpha) bound of the difference reaches past -margin);
- "pass" = non-inferiority shown (the bound stays inside the margin);
- "inconclusive" = neither; passes unless on_inconclusive: fail;
- "insufficient" = fewer prompts than min_samples; warns unless on_insufficient: fail;
- "no data" = no paired prompt at all, because a route has no data for the metric in that scope
  (its calls failed, it was not scored): a failure unless on_no_data: insufficient. Never a pass;
- "skipped" = disabled by the policy, or a quality metric that applies to no prompt of a cohort on
  either route.
Every cohort of the run is checked (a missing comparison is "no data", not left out), and the
candidate's error and timeout rates are always gated (policy.ALWAYS_GATED, added by load_policy).
A run with no usable data at all (Report.no_data) gives no checks and exit 2.
Expert routing metrics (`dropped_token_rate@1.25: {max: 0.05}`) are absolute limits on the
candidate's own routing per cohort (`expert_checks`): nothing to pair, so no test and no alpha.
Exit codes: 0 pass, 1 regression (or a failing no data/inconclusive/insufficient check), 2 bad
input, config, or a run without data (EXIT_*; the CLI adds 3 for an internal error).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path

from scipy import stats as sps

from harness.report import stats
from harness.report.compare import power_figures
from harness.report.coverage import known_metrics, missing_data
from harness.report.model import Comparison, Report
from harness.experts.panel import SOURCE_ORDER, is_expert_metric, lookup
from harness.report.policy import MetricRule, Policy, check_policy_metrics, load_policy, metric_spec
from harness.report.render.text import fnum, fp

EXIT_PASS, EXIT_REGRESSION, EXIT_BAD_INPUT = 0, 1, 2
EXIT_NO_DATA = 2
STATUSES = ("regression", "no data", "insufficient", "inconclusive", "pass", "skipped")


@dataclass
class GateCheck:
    candidate: str
    cohort: str
    metric: str
    n_prompts: int
    min_samples: int
    diff: float
    bound: float            # one-sided (1 - alpha) bound on the worse side
    margin: float
    alpha: float
    p_worse: float
    p_adjusted: float
    family_size: int
    power_at_margin: float  # chance this check catches a true drop of `margin` (Bonferroni bound for Holm)
    prompts_for_80_power: int | None
    status: str
    message: str


@dataclass
class GateResult:
    run_id: str
    policy_path: str
    checks: list[GateCheck]
    exit_code: int
    false_alarm_bound: float
    summary: str
    no_data: str | None = None   # the run has nothing to judge (exit 2): why


def evaluate_gate(report: Report, policy: Policy, policy_path: str = "gate.yaml") -> GateResult:
    """Apply the policy to the report's comparisons (pre-registered cohorts only)."""
    if report.no_data:
        return GateResult(report.run_id, str(policy_path), [], EXIT_NO_DATA, 0.0,
                          f"NO DATA: {report.no_data}; nothing was gated", no_data=report.no_data)
    by_key: dict[tuple[str, str, str], Comparison] = {
        (c.candidate, c.metric, c.cohort): c for c in report.comparisons if c.scope in ("overall", "cohort")}
    checks: list[GateCheck] = []
    fa_bound = 0.0
    for cand in report.candidates:
        for metric, rule in policy.metrics.items():
            if not rule.enabled:
                continue
            if is_expert_metric(metric):
                checks += expert_checks(report, policy, cand, metric, rule)
                continue
            alpha = rule.alpha or policy.alpha
            fa_bound += alpha
            # Every cohort the run has (one cohort: the run as a whole), whether compared or not.
            scopes = ((["(all)"] if policy.include_overall else []) + report.cohorts) if len(report.cohorts) > 1 else ["(all)"]
            pending: list[tuple[GateCheck, Comparison]] = []
            for cohort in scopes:
                comp = by_key.get((cand, metric, cohort))
                margin, _, _, min_samples, enabled = policy.rule(metric, None if cohort == "(all)" else cohort)
                nan = float("nan")
                check = GateCheck(cand, cohort, metric, comp.n_prompts if comp else 0, min_samples,
                                  comp.diff if comp else nan, nan, comp.margin if comp else nan, alpha,
                                  comp.p_worse if comp else nan, nan, 0, nan, None, "", "")
                if not enabled:
                    check.status, check.message = "skipped", "disabled for this cohort by the policy"
                elif comp is None or comp.n_prompts == 0:
                    missing = missing_data(report, cand, metric, cohort)
                    if missing.kind == "not applicable":
                        check.status, check.message = "skipped", missing.message
                    else:
                        check.status = "no data" if policy.on_no_data == "fail" else "insufficient"
                        check.message = missing.message
                elif comp.n_prompts < min_samples:
                    check.status = "insufficient"
                    check.message = f"{comp.n_prompts} prompts < min_samples {min_samples}"
                else:
                    pending.append((check, comp))
                checks.append(check)
            adjusted = stats.holm([c.p_worse for c, _ in pending], alpha)
            m = max(1, len(pending))
            z = sps.norm.ppf(1 - alpha)
            for (check, comp), p_adj in zip(pending, adjusted):
                _decide(check, comp, p_adj, alpha, m, z)
    regressions = [c for c in checks if c.status == "regression"]
    failing = regressions + [c for c in checks if c.status == "no data"]
    if policy.on_insufficient == "fail":
        failing += [c for c in checks if c.status == "insufficient"]
    if policy.on_inconclusive == "fail":
        failing += [c for c in checks if c.status == "inconclusive"]
    counts = {s: sum(c.status == s for c in checks) for s in STATUSES}
    if failing:
        summary = f"FAIL: {len(regressions)} regression(s), {len(failing) - len(regressions)} other failing check(s)"
    elif not checks or counts["pass"] + counts["inconclusive"] == 0:
        summary = "PASS with nothing shown: no check had enough data to judge"
    else:
        summary = "PASS: no regression"
    summary += " (" + ", ".join(f"{v} {k}" for k, v in counts.items() if v) + ")"
    return GateResult(report.run_id, str(policy_path), checks, EXIT_REGRESSION if failing else EXIT_PASS, fa_bound, summary)


def expert_checks(report: Report, policy: Policy, cand: str, metric: str, rule: MetricRule) -> list[GateCheck]:
    """Absolute limits on a candidate's own routing (no baseline to pair with, so no test and no
    alpha): per cohort, from the most trusted source recorded (live, returned, probe)."""
    rows: dict[str, dict] = {}
    for p in sorted((p for p in report.experts if p["route"] == cand), key=lambda p: SOURCE_ORDER.index(p["source"])):
        rows.setdefault(p["cohort"], p)
    scopes = (["(all)"] if policy.include_overall else []) + report.cohorts
    out = []
    for cohort in scopes:
        _, _, _, min_samples, enabled = policy.rule(metric, None if cohort == "(all)" else cohort)
        p = rows.get(cohort)
        value = lookup(p["metrics"], metric) if p else None
        limit = rule.max if rule.max is not None else rule.min
        check = GateCheck(cand, cohort, metric, p["responses"] if p else 0, min_samples, float("nan") if value is None else value,
                          float(limit), float(limit), float("nan"), float("nan"), float("nan"), 0, float("nan"), None, "", "")
        if not enabled:
            check.status, check.message = "skipped", "disabled for this cohort by the policy"
        elif value is None:
            check.status = "insufficient"
            check.message = ("no expert statistics for this route and cohort (run `routecheck experts RUN --probe`, or "
                             "mirror with expert_capture)" if p is None else f"{metric} is not recorded (not simulated at that factor, or no router probabilities)")
        elif p["responses"] < min_samples:
            check.status, check.message = "insufficient", f"{p['responses']} responses < min_samples {min_samples}"
        else:
            over = rule.max is not None and value > rule.max
            under = rule.min is not None and value < rule.min
            where = f"({p['source']}, {p['tokens']:,} tokens)"
            if over or under:
                check.status = "regression"
                check.message = f"{fnum(value)} {'>' if over else '<'} {'max' if over else 'min'} {fnum(rule.max if over else rule.min)} {where}"
            else:
                bounds = " and ".join(f"{k} {fnum(v)}" for k, v in (("max", rule.max), ("min", rule.min)) if v is not None)
                check.status, check.message = "pass", f"{fnum(value)} within {bounds} {where}"
        out.append(check)
    return out


def _decide(check: GateCheck, comp: Comparison, p_adj: float, alpha: float, m: int, z: float) -> None:
    hib = comp.higher_is_better
    se = comp.se if not math.isnan(comp.se) else 0.0
    worse = -comp.diff if hib else comp.diff           # positive = candidate worse
    check.bound = comp.diff - z * se if hib else comp.diff + z * se
    worst_case = worse + z * se                         # one-sided bound of the drop
    ni_shown = not math.isnan(worst_case) and not math.isnan(comp.margin) and worst_case < comp.margin
    check.p_adjusted, check.family_size = p_adj, m
    a_each = alpha / m
    _, needed, power = power_figures(metric_spec(comp.metric), comp.n_prompts, comp.sd_diff, comp.se, comp.test,
                                     comp.diff, comp.margin, a_each, two_sided=False)
    check.power_at_margin, check.prompts_for_80_power = power, needed
    if not math.isnan(p_adj) and p_adj < alpha and worse > 0 and not ni_shown:
        check.status = "regression"
        check.message = f"worse by {fnum(worse)} (margin {fnum(comp.margin)}), p(Holm) {fp(p_adj)}"
    elif ni_shown:
        check.status = "pass"
        check.message = f"non-inferior: worst plausible drop {fnum(worst_case)} < margin {fnum(comp.margin)}"
    else:
        check.status = "inconclusive"
        need = f"; ~{check.prompts_for_80_power} prompts for 80% power" if check.prompts_for_80_power else ""
        check.message = f"not worse at alpha, but non-inferiority not shown (drop could be {fnum(worst_case)}){need}"


def run_gate(db: Path | str, run_id: str, policy_path: Path | str, seed: int = 0) -> tuple[GateResult, Report]:
    """Load, report with the policy's margins, check policy against the run, evaluate. Raises ConfigError/ReportError."""
    from harness.report.build import make_report

    policy = load_policy(policy_path)
    report = make_report(db, run_id, policy=policy, seed=seed)
    if not report.no_data:  # no data: exit 2 for that reason, not for the names
        available = sorted({c.metric for c in report.comparisons})
        check_policy_metrics(policy, policy_path, available, report.cohorts, known_metrics(report))
    return evaluate_gate(report, policy, str(policy_path)), report


def result_dict(result: GateResult) -> dict:
    return asdict(result)
