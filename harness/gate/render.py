"""Gate outputs: Markdown (also the GitHub step summary), JUnit XML, and the terminal table.

Names and messages go through harness/report/render/escape.py (md_cell, term, the JUnit writer)."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table
from rich.text import Text

from harness.gate.evaluate import STATUSES, GateResult
from harness.report.render.junit import Case, Suite, junit_xml
from harness.report.render.escape import term
from harness.report.render.text import fnum, fp, md_cell

STATUS_STYLE = {"pass": "green", "regression": "bold red", "no data": "bold red", "inconclusive": "yellow",
                "insufficient": "yellow", "skipped": "dim"}
ORDER = {s: i for i, s in enumerate(STATUSES)}


def gate_markdown(result: GateResult) -> str:
    lines = [f"# routecheck gate: run {md_cell(result.run_id)}", "",
             f"**{md_cell(result.summary)}** — policy {md_cell(result.policy_path)}, exit code {result.exit_code}.", "",
             f"One-sided tests of \"candidate worse\", Holm-corrected across cohorts per metric; "
             f"per-run false-alarm bound (sum of gated metrics' alpha): {result.false_alarm_bound:.3g}.", "",
             "| candidate | cohort | metric | n | diff | bound | margin | p (Holm) | power at margin | status | detail |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    if result.no_data:
        lines[4:] = [f"**No data**: {md_cell(result.no_data)}. Nothing was gated (exit code 2)."]
    for c in sorted(result.checks, key=lambda c: (ORDER[c.status], c.candidate, c.metric, c.cohort != "(all)", c.cohort)):
        status = {"regression": "**REGRESSION**", "no data": "**NO DATA**"}.get(c.status, c.status)
        lines.append(f"| {md_cell(c.candidate)} | {md_cell(c.cohort)} | {md_cell(c.metric)} | {c.n_prompts} | {fnum(c.diff, True)} | "
                     f"{fnum(c.bound, True)} | {fnum(c.margin)} | {fp(c.p_adjusted)} | {fnum(c.power_at_margin)} | {status} | {md_cell(c.message)} |")
    return "\n".join(lines) + "\n"


def gate_junit(result: GateResult) -> str:
    suite = Suite(f"routecheck gate {result.run_id}")
    for c in result.checks:
        case = Case(f"routecheck.gate.{c.candidate}", f"{c.cohort} :: {c.metric}", "passed", output=f"{c.status}: {c.message}")
        if c.status in ("regression", "no data"):
            case.outcome, case.message, case.text = "failed", c.message, c.message
            case.failure_type = "regression" if c.status == "regression" else "no_data"
        elif c.status in ("skipped", "insufficient", "inconclusive"):
            case.outcome, case.message = "skipped", f"{c.status}: {c.message}"
        suite.cases.append(case)
    if result.no_data:
        suite.cases.append(Case("routecheck.gate", "data", "error", message=f"no data: {result.no_data}",
                                text=result.no_data, failure_type="no_data"))
    return junit_xml("routecheck.gate", [suite])


def print_gate(result: GateResult, console: Console) -> None:
    if result.no_data:
        console.print(term(result.summary, style="bold red"))
        return
    t = Table(title=term(f"routecheck gate {result.run_id} ({result.policy_path})"), header_style="bold")
    for col in ("candidate", "cohort", "metric", "n", "diff", "margin", "p (Holm)", "power", "status", "detail"):
        t.add_column(col, overflow="fold")
    for c in result.checks:
        t.add_row(term(c.candidate), term(c.cohort), term(c.metric), str(c.n_prompts), fnum(c.diff, True), fnum(c.margin),
                  fp(c.p_adjusted), fnum(c.power_at_margin), Text(c.status, style=STATUS_STYLE[c.status]), term(c.message, style="dim"))
    console.print(t)
    console.print(Text(f"per-run false-alarm bound: {result.false_alarm_bound:.3g}", style="dim"))
    console.print(term(result.summary, style="bold red" if result.exit_code else "bold green"))


