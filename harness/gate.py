"""`routecheck gate RUN --policy gate.yaml`: a CI gate from non-inferiority rules.

Per candidate, gated metric and cohort (plus "overall" unless switched off):
- the one-sided test "candidate is worse" (McNemar exact / Wilcoxon / bootstrap, as in the
  report) is Holm-corrected across the cohorts of that metric at the metric's alpha, so a
  gate run on data with no effect fails with probability <= alpha per gated metric (the
  per-run bound is the sum of the gated metrics' alphas; the output states it);
- "regression" = significant after correction and non-inferiority not shown (the one-sided
  (1 - alpha) bound of the difference reaches past -margin);
- "pass" = non-inferiority shown (the bound stays inside the margin);
- "inconclusive" = neither; passes unless on_inconclusive: fail;
- "insufficient" = fewer prompts than min_samples; warns unless on_insufficient: fail.
Exit codes: 0 pass, 1 regression (or a failing inconclusive/insufficient), 2 bad input or config.
"""

from __future__ import annotations

import math
import os
import sys
import xml.etree.ElementTree as ET
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text
from scipy import stats as sps

from harness.config import ConfigError
from harness.report import stats
from harness.report.build import BINARY_COLUMNS
from harness.report.load import ReportError
from harness.report.model import Comparison, Report
from harness.report.policy import SERVING_METRICS, Policy, check_policy_metrics, load_policy
from harness.report.render_text import fnum, fp, md_cell
from harness.store import DEFAULT_DB

STATUS_STYLE = {"pass": "green", "regression": "bold red", "inconclusive": "yellow", "insufficient": "yellow", "skipped": "dim"}


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


def _spec_column(metric: str) -> str:
    for s in SERVING_METRICS:
        if s.name == metric:
            return s.column
    return metric.rsplit(".", 1)[-1]


def evaluate_gate(report: Report, policy: Policy, policy_path: str = "gate.yaml") -> GateResult:
    """Apply the policy to the report's comparisons (pre-registered cohorts only)."""
    by_key: dict[tuple[str, str, str], Comparison] = {
        (c.candidate, c.metric, c.cohort): c for c in report.comparisons if c.scope in ("overall", "cohort")}
    checks: list[GateCheck] = []
    fa_bound = 0.0
    for cand in report.candidates:
        for metric, rule in policy.metrics.items():
            if not rule.enabled:
                continue
            alpha = rule.alpha or policy.alpha
            fa_bound += alpha
            scopes = [c for c in ([("(all)")] if policy.include_overall else []) + report.cohorts
                      if (cand, metric, c) in by_key]
            if len(report.cohorts) <= 1:
                scopes = [s for s in scopes if s == "(all)"] or scopes
            pending: list[tuple[GateCheck, Comparison]] = []
            for cohort in scopes:
                comp = by_key[(cand, metric, cohort)]
                margin, _, _, min_samples, enabled = policy.rule(metric, None if cohort == "(all)" else cohort)
                check = GateCheck(cand, cohort, metric, comp.n_prompts, min_samples, comp.diff, float("nan"), comp.margin,
                                  alpha, comp.p_worse, float("nan"), 0, float("nan"), None, "", "")
                if not enabled:
                    check.status, check.message = "skipped", "disabled for this cohort by the policy"
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
    failing = list(regressions)
    if policy.on_insufficient == "fail":
        failing += [c for c in checks if c.status == "insufficient"]
    if policy.on_inconclusive == "fail":
        failing += [c for c in checks if c.status == "inconclusive"]
    if failing:
        summary = f"FAIL: {len(regressions)} regression(s), {len(failing) - len(regressions)} other failing check(s)"
    else:
        summary = "PASS: no regression"
    counts = {s: sum(c.status == s for c in checks) for s in ("pass", "inconclusive", "insufficient", "skipped")}
    summary += " (" + ", ".join(f"{v} {k}" for k, v in counts.items() if v) + ")"
    return GateResult(report.run_id, str(policy_path), checks, 1 if failing else 0, fa_bound, summary)


def _decide(check: GateCheck, comp: Comparison, p_adj: float, alpha: float, m: int, z: float) -> None:
    hib = comp.higher_is_better
    se = comp.se if not math.isnan(comp.se) else 0.0
    worse = -comp.diff if hib else comp.diff           # positive = candidate worse
    check.bound = comp.diff - z * se if hib else comp.diff + z * se
    worst_case = worse + z * se                         # one-sided bound of the drop
    ni_shown = not math.isnan(worst_case) and not math.isnan(comp.margin) and worst_case < comp.margin
    check.p_adjusted, check.family_size = p_adj, m
    a_each = alpha / m
    if comp.sd_diff == comp.sd_diff:  # mean metric (sd_diff is NaN for quantiles)
        sd = stats.planning_sd(comp.sd_diff, _spec_column(comp.metric) in BINARY_COLUMNS)
        check.power_at_margin = stats.power_at(comp.margin, comp.n_prompts, sd, a_each, test=comp.test, diff=comp.diff)
        check.prompts_for_80_power = stats.prompts_needed(comp.margin, sd, a_each, two_sided=False, test=comp.test)
    elif se > 0:
        check.power_at_margin = float(sps.norm.cdf(comp.margin / se - sps.norm.ppf(1 - a_each)))
        mde = (sps.norm.ppf(1 - a_each) + sps.norm.ppf(stats.POWER)) * se
        check.prompts_for_80_power = int(math.ceil(comp.n_prompts * (mde / comp.margin) ** 2)) if comp.margin else None
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


# ---------------------------------------------------------------- outputs

def gate_markdown(result: GateResult) -> str:
    lines = [f"# routecheck gate: run `{md_cell(result.run_id)}`", "",
             f"**{md_cell(result.summary)}** — policy `{md_cell(result.policy_path)}`, exit code {result.exit_code}.", "",
             f"One-sided tests of \"candidate worse\", Holm-corrected across cohorts per metric; "
             f"per-run false-alarm bound (sum of gated metrics' alpha): {result.false_alarm_bound:.3g}.", "",
             "| candidate | cohort | metric | n | diff | bound | margin | p (Holm) | power at margin | status | detail |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    order = {"regression": 0, "insufficient": 1, "inconclusive": 2, "pass": 3, "skipped": 4}
    for c in sorted(result.checks, key=lambda c: (order[c.status], c.candidate, c.metric, c.cohort != "(all)", c.cohort)):
        status = "**REGRESSION**" if c.status == "regression" else c.status
        lines.append(f"| {md_cell(c.candidate)} | {md_cell(c.cohort)} | {md_cell(c.metric)} | {c.n_prompts} | {fnum(c.diff, True)} | "
                     f"{fnum(c.bound, True)} | {fnum(c.margin)} | {fp(c.p_adjusted)} | {fnum(c.power_at_margin)} | {status} | {md_cell(c.message)} |")
    return "\n".join(lines) + "\n"


def gate_junit(result: GateResult) -> str:
    root = ET.Element("testsuites", name="routecheck.gate")
    suite = ET.SubElement(root, "testsuite", name=f"routecheck gate {result.run_id}", tests=str(len(result.checks)),
                          failures=str(sum(c.status == "regression" for c in result.checks)),
                          skipped=str(sum(c.status in ("skipped", "insufficient", "inconclusive") for c in result.checks)),
                          errors="0")
    for c in result.checks:
        case = ET.SubElement(suite, "testcase", classname=f"routecheck.gate.{c.candidate}", name=f"{c.cohort} :: {c.metric}")
        if c.status == "regression":
            ET.SubElement(case, "failure", type="regression", message=c.message).text = c.message
        elif c.status in ("skipped", "insufficient", "inconclusive"):
            ET.SubElement(case, "skipped", message=f"{c.status}: {c.message}")
        ET.SubElement(case, "system-out").text = f"{c.status}: {c.message}"
    ET.indent(root)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"


def print_gate(result: GateResult, console: Console) -> None:
    t = Table(title=f"routecheck gate {result.run_id} ({result.policy_path})", header_style="bold")
    for col in ("candidate", "cohort", "metric", "n", "diff", "margin", "p (Holm)", "power", "status", "detail"):
        t.add_column(col, overflow="fold")
    for c in result.checks:
        t.add_row(Text(c.candidate), Text(c.cohort), Text(c.metric), str(c.n_prompts), fnum(c.diff, True), fnum(c.margin),
                  fp(c.p_adjusted), fnum(c.power_at_margin), Text(c.status, style=STATUS_STYLE[c.status]), Text(c.message, style="dim"))
    console.print(t)
    console.print(Text(f"per-run false-alarm bound: {result.false_alarm_bound:.3g}", style="dim"))
    console.print(Text(result.summary, style="bold red" if result.exit_code else "bold green"))


def run_gate(db: Path | str, run_id: str, policy_path: Path | str, seed: int = 0) -> tuple[GateResult, Report]:
    """Load, report with the policy's margins, check policy against the run, evaluate. Raises ConfigError/ReportError."""
    from harness.report.command import make_report

    policy = load_policy(policy_path)
    report = make_report(db, run_id, policy=policy, seed=seed)
    available = sorted({c.metric for c in report.comparisons})
    check_policy_metrics(policy, policy_path, available, report.cohorts)
    return evaluate_gate(report, policy, str(policy_path)), report


def gate_command(
    run_id: str = typer.Argument(..., help="Run id, a unique prefix, or 'latest'.", metavar="RUN_ID"),
    policy: Path = typer.Option(Path("gate.yaml"), "--policy", help="Gate policy (see docs/report.md).", metavar="PATH"),
    db: Path = typer.Option(DEFAULT_DB, "--db", help="DuckDB store.", metavar="PATH"),
    out_dir: Optional[Path] = typer.Option(None, "--out-dir", help="Where gate.md and gate.junit.xml go (default reports/RUN/).", metavar="DIR"),
    seed: int = typer.Option(0, "--seed", help="Bootstrap seed.", metavar="INT"),
) -> None:
    """Exit 0 if every gated cohort x metric passes the policy, 1 on a regression, 2 on bad input."""
    err = Console(stderr=True, soft_wrap=True)
    try:
        result, report = run_gate(db, run_id, policy, seed)
    except (ConfigError, ReportError, LookupError, FileNotFoundError) as e:
        err.print(f"[bold red]error:[/] {e}", highlight=False, markup=True)
        raise typer.Exit(2)
    out = out_dir or Path("reports") / report.run_id
    out.mkdir(parents=True, exist_ok=True)
    md = gate_markdown(result)
    (out / "gate.md").write_text(md, encoding="utf-8")
    (out / "gate.junit.xml").write_text(gate_junit(result), encoding="utf-8")
    summary_file = os.environ.get("GITHUB_STEP_SUMMARY")
    if summary_file:
        with open(summary_file, "a", encoding="utf-8") as f:
            f.write(md + "\n")
    console = Console(soft_wrap=True, width=None if sys.stdout.isatty() else 160)
    print_gate(result, console)
    console.print(f"markdown: {out / 'gate.md'}\njunit: {out / 'gate.junit.xml'}", highlight=False)
    raise typer.Exit(result.exit_code)


def result_dict(result: GateResult) -> dict:
    return asdict(result)
