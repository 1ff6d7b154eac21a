"""Terminal (rich), Markdown and JUnit XML renderings of a Report.

Every string from the data goes through harness/report/render/escape.py: `term` for the
terminal, `markdown` (md_cell) for Markdown, and junit.py's writer for XML.
"""

from __future__ import annotations

import math
from typing import Iterable

from rich.console import Console
from rich.table import Table
from rich.text import Text

from harness.experts.panel import IMBALANCE_NOTE, agreement_line, agreements, explain, shown_factor
from harness.experts.stats import factor_key
from harness.report.model import Comparison, Report
from harness.report.render.escape import markdown as md_cell, term
from harness.report.render.junit import Case, Suite, junit_xml

VERDICT_STYLE = {"regression": "bold red", "improvement": "green", "no change": "dim", "inconclusive": "yellow",
                 "insufficient": "yellow"}
VERDICT_MARK = {"regression": "REGRESSION", "improvement": "improvement", "no change": "no change", "inconclusive": "inconclusive",
                "insufficient": "insufficient"}
SEVERITY = {"regression": 0, "insufficient": 1, "improvement": 2, "inconclusive": 3, "no change": 4}
# The report's one-word outcome (terminal, Markdown, HTML): never PASS for a run without data.
OUTCOME_STYLE = {"NO DATA": "bold red", "FAIL": "bold red", "INSUFFICIENT": "bold yellow", "PASS": "bold green"}


def fnum(v: float | None, signed: bool = False) -> str:
    if v is None or (isinstance(v, float) and (math.isnan(v) or math.isinf(v))):
        return "-"
    if v != 0 and abs(v) < 1e-3:
        return f"{v:+.3g}" if signed else f"{v:.3g}"
    return f"{v:+.3f}" if signed else f"{v:.3f}"


def fp(p: float) -> str:
    if p is None or math.isnan(p):
        return "-"
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def diff_text(c: Comparison) -> str:
    lo, hi = c.diff_ci
    if math.isnan(lo):
        return fnum(c.diff, True)
    return f"{fnum(c.diff, True)} [{fnum(lo, True)}, {fnum(hi, True)}]"


def shown_rows(report: Report, candidate: str) -> tuple[list[Comparison], int]:
    """Terminal/Markdown headline rows: every quality row, every serving verdict, serving overall."""
    rows = [c for c in report.comparisons if c.candidate == candidate]
    keep = [c for c in rows if c.kind == "quality" or c.scope == "overall" or c.verdict in ("regression", "improvement")]
    keep.sort(key=lambda c: (c.kind != "quality", SEVERITY[c.verdict], c.scope != "overall", c.cohort, c.metric))
    return keep, len(rows) - len(keep)


def outcome(report: Report) -> str:
    """NO DATA (nothing to judge), FAIL (a regression), INSUFFICIENT (no pre-registered comparison
    had min_samples prompts), else PASS."""
    if report.no_data:
        return "NO DATA"
    if report.regressions():
        return "FAIL"
    judged = [c for c in report.comparisons if c.scope in ("overall", "cohort")]
    if not judged or all(c.verdict == "insufficient" for c in judged):
        return "INSUFFICIENT"
    return "PASS"


def headline(report: Report) -> str:
    if report.no_data:
        return f"{report.no_data[0].upper()}{report.no_data[1:]}."
    regs = report.regressions()
    short = [c for c in report.comparisons if c.scope in ("overall", "cohort") and c.verdict == "insufficient"]
    if not regs:
        if outcome(report) == "INSUFFICIENT":
            return (f"Too few prompts to judge {', '.join(report.candidates)} vs baseline {report.baseline}: every "
                    f"comparison is below min_samples ({report.settings.get('min_samples', '?')}).")
        text = f"No regression found for {', '.join(report.candidates)} vs baseline {report.baseline}."
        return text + (f" {len(short)} comparison(s) had too few prompts to judge (insufficient)." if short else "")
    parts = [f"{c.candidate} / {c.cohort} / {c.metric} ({fnum(c.diff, True)})" for c in regs]
    return f"{len(regs)} regression(s): " + "; ".join(parts)


def capacity_factor_of(report: Report, route: str) -> float | None:
    for r in report.routes:
        if r["name"] == route and r.get("capacity_factor") is not None:
            return float(r["capacity_factor"])
    return None


def expert_notes(report: Report, candidate: str) -> list[str]:
    """Beside the candidate's regressions: each regressed cohort's routing against its other cohorts."""
    cohorts = []
    for c in report.regressions():
        if c.candidate == candidate and c.scope in ("cohort", "overall") and c.cohort not in cohorts:
            cohorts.append(c.cohort)
    cf = capacity_factor_of(report, candidate)
    return [explain(p, cf) for cohort in cohorts for p in report.experts
            if p["route"] == candidate and p["cohort"] == cohort and cohort != "(all)"]


def expert_agreement(report: Report) -> list[str]:
    """Per MoE route recorded by more than one source (live, returned, probe): how far apart they are."""
    found = agreements(report.experts)
    routes = list(dict.fromkeys(p["route"] for p in report.experts))
    return [line for r in routes if (line := agreement_line(r, found))]


EXPERT_HEADER = ["route", "source", "cohort", "responses", "tokens", "util. entropy", "router entropy", "top-k mass",
                 "imbalance CV", "max/mean", "overflow", "dropped tokens", "cf"]


def expert_rows(report: Report) -> list[list[str]]:
    """The expert panel as table cells (layer means; capacity at the route's factor, else 1.25)."""
    out = []
    for p in report.experts:
        m = p["metrics"]
        f = shown_factor(p, capacity_factor_of(report, p["route"]))
        k = factor_key(f) if f is not None else ""
        out.append([p["route"], p["source"], p["cohort"], str(p["responses"]), f"{p['tokens']:,}",
                    fnum(m.get("utilization_entropy")), fnum(m.get("router_entropy")), fnum(m.get("top_k_mass")),
                    fnum(m.get("imbalance_cv")), fnum(m.get("max_over_mean")),
                    fnum(m.get(f"assignment_overflow_rate@{k}")), fnum(m.get(f"dropped_token_rate@{k}")),
                    "-" if f is None else f"{f:g}"])
    return out


# ---------------------------------------------------------------- terminal

def print_report(report: Report, console: Console | None = None, html_path: str | None = None) -> None:
    console = console or Console()
    s = report.settings
    console.print(term(f"routecheck report  run {report.run_id}  baseline {report.baseline}  "
                       f"candidates {', '.join(report.candidates)}", style="bold"))
    console.print(Text(f"alpha {s['alpha']}, {s['correction']}; unit: prompt; CI 95%", style="dim"))
    for note in report.notes:
        console.print(Text(f"note: {note}", style="dim"))
    for cand in report.candidates:
        rows, hidden = shown_rows(report, cand)
        t = Table(title=term(f"{cand} vs {report.baseline}"), show_lines=False, header_style="bold")
        for col in ("cohort", "metric", "n", "baseline", "candidate", "diff [95% CI]", "p (Holm)", "verdict", "note"):
            t.add_column(col, overflow="fold")
        for c in rows:
            t.add_row(term(c.cohort), term(c.metric), str(c.n_prompts), fnum(c.baseline), fnum(c.candidate_value),
                      diff_text(c), fp(c.p_adjusted), Text(VERDICT_MARK[c.verdict], style=VERDICT_STYLE[c.verdict]),
                      term(c.note, style="dim"))
        console.print(t)
        if hidden:
            console.print(Text(f"  {hidden} more serving rows per cohort (no verdict change) in the Markdown/HTML/JSON report", style="dim"))
        for note in expert_notes(report, cand):
            console.print(term(f"  experts: {note}", style="magenta"))
    console.print(serving_table(report))
    if report.trajectories:
        t = Table(title="Agent trajectories per cohort (tokens and cost summed over each trajectory's steps)", header_style="bold")
        for col in TRAJECTORY_HEADER:
            t.add_column(col, justify="left" if col in ("route", "cohort") else "right")
        for row in trajectory_rows(report):
            t.add_row(*[term(c) for c in row])
        console.print(t)
    if report.experts:
        t = Table(title="Expert routing per cohort (layer means; docs/experts.md)", header_style="bold")
        for col in EXPERT_HEADER:
            t.add_column(col, justify="left" if col in ("route", "source", "cohort") else "right")
        for row in expert_rows(report):
            t.add_row(*[term(c) for c in row])
        console.print(t)
        for line in expert_agreement(report):
            console.print(term(f"sources agree: {line}", style="magenta"))
        console.print(Text(IMBALANCE_NOTE, style="dim"))
    if report.discovery:
        d = report.discovery
        t = Table(title=term(f"Exploratory: discovered cohorts (k={d.k}) and worst slices — not pre-registered; {d.correction}"))
        for col in ("slice", "metric", "n", "diff [95% CI]", "p (Holm)", "verdict"):
            t.add_column(col, overflow="fold")
        for c in sorted(d.comparisons, key=lambda c: SEVERITY[c.verdict])[:12] + d.worst_slices:
            t.add_row(term(c.cohort), term(c.metric), str(c.n_prompts), diff_text(c), fp(c.p_adjusted),
                      Text(VERDICT_MARK[c.verdict], style=VERDICT_STYLE[c.verdict]))
        console.print(t)
    for w in report.warnings:
        console.print(term(f"warning: {w}", style="yellow"))
    console.print(term(f"{outcome(report)}: {headline(report)}", style=OUTCOME_STYLE[outcome(report)]))
    if html_path:
        console.print(term(f"HTML report: {html_path}"))


SERVING_COLUMNS = (
    ("latency_p50_s", "lat p50"), ("latency_p95_s", "lat p95"), ("latency_p99_s", "lat p99"),
    ("ttft_p50_s", "TTFT p50"), ("ttft_p99_s", "TTFT p99"), ("output_tokens_per_s", "out tok/s"),
    ("tokens_per_trace", "tok/trace"), ("cost_per_trace_usd", "USD/trace"), ("error_rate", "errors"),
    ("timeout_rate", "timeouts"),
)
PHASE_COLUMNS = (("queue_mean_s", "queue"), ("prefill_mean_s", "prefill"), ("decode_mean_s", "decode"))


def serving_rows(report: Report, overall_only: bool = True) -> list[dict]:
    phases = {(p["route"], p["cohort"]): p for p in report.server_phases}
    out = []
    for r in report.serving:
        if overall_only and r["scope"] != "overall":
            continue
        row = dict(r)
        ph = phases.get((r["route"], r["cohort"]), {})
        for key, _ in PHASE_COLUMNS:
            row[key] = ph.get(key)
        out.append(row)
    return sorted(out, key=lambda r: (r["cohort"] != "(all)", r["cohort"], r["route"] != report.baseline, r["route"]))


TRAJECTORY_COLUMNS = (
    ("trajectories", "n"), ("steps_mean", "steps"), ("answered", "answered"), ("max_steps", "max_steps"),
    ("unscripted_tool", "unscripted"), ("error", "failed"), ("step_accuracy", "step acc"),
    ("tokens_per_trace", "tok/trace"), ("cost_per_trace_usd", "USD/trace"),
)
TRAJECTORY_HEADER = ["route", "cohort"] + [label for _, label in TRAJECTORY_COLUMNS]


def trajectory_rows(report: Report) -> list[list[str]]:
    """The trajectory panel's rows: all cohorts first, then per cohort; the baseline first in each."""
    rows = sorted(report.trajectories, key=lambda r: (r["cohort"] != "(all)", r["cohort"], r["route"] != report.baseline, r["route"]))
    return [[str(r["route"]), str(r["cohort"])] + [str(r[k]) if isinstance(r.get(k), int) else fnum(r.get(k)) for k, _ in TRAJECTORY_COLUMNS]
            for r in rows]


def serving_table(report: Report) -> Table:
    t = Table(title="Serving (all cohorts; server-side phases are means from vLLM spans where recorded)", header_style="bold")
    t.add_column("route")
    t.add_column("n")
    for _, label in SERVING_COLUMNS + PHASE_COLUMNS:
        t.add_column(label, justify="right")
    for r in serving_rows(report):
        t.add_row(term(r["route"]), str(r["responses"]), *[fnum(r.get(k)) for k, _ in SERVING_COLUMNS + PHASE_COLUMNS])
    return t


# ---------------------------------------------------------------- markdown

def _md_table(header: list[str], rows: Iterable[list[str]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return out


def _comparison_rows(rows: list[Comparison]) -> list[list[str]]:
    return [[md_cell(c.cohort), md_cell(c.metric), str(c.n_prompts), fnum(c.baseline), fnum(c.candidate_value),
             diff_text(c), fp(c.p_adjusted), ("**REGRESSION**" if c.verdict == "regression" else c.verdict), md_cell(c.note)]
            for c in rows]


HEADER = ["cohort", "metric", "n", "baseline", "candidate", "diff [95% CI]", "p (Holm)", "verdict", "note"]


def to_markdown(report: Report, html_name: str | None = None) -> str:
    s = report.settings
    lines = [f"# routecheck report: run {md_cell(report.run_id)}", ""]
    lines += [f"**{outcome(report)}** — " + md_cell(headline(report)), ""]
    lines += [f"Baseline **{md_cell(report.baseline)}**; candidates: {', '.join(f'**{md_cell(c)}**' for c in report.candidates)}. "
              f"alpha = {s['alpha']}, p-values corrected with {s['correction']} ({s['families']}). "
              f"Unit: {s['unit']}. Verdict: {s['verdict_rule']}.", ""]
    for note in report.notes:  # plain paragraphs: the report's own structure is headings, tables and lists
        lines += [f"Note: {md_cell(note)}", ""]
    for cand in report.candidates:
        rows, hidden = shown_rows(report, cand)
        lines += [f"## {md_cell(cand)} vs {md_cell(report.baseline)}", ""]
        lines += _md_table(HEADER, _comparison_rows(rows))
        rest = [c for c in report.comparisons if c.candidate == cand and c not in rows]
        if rest:
            lines += ["", f"<details><summary>{hidden} more serving rows per cohort</summary>", ""]
            lines += _md_table(HEADER, _comparison_rows(rest))
            lines += ["", "</details>"]
        notes = expert_notes(report, cand)
        if notes:
            lines += ["", "Expert routing in the regressed cohorts:", ""] + [f"- {md_cell(n)}" for n in notes]
        lines.append("")
    lines += ["## Serving", ""]
    cols = SERVING_COLUMNS + PHASE_COLUMNS
    lines += _md_table(["route", "n"] + [l for _, l in cols],
                       [[md_cell(r["route"]), str(r["responses"])] + [fnum(r.get(k)) for k, _ in cols] for r in serving_rows(report)])
    lines.append("")
    if report.trajectories:
        lines += ["## Agent trajectories", "", "Per cohort: steps taken, why trajectories stopped, mean step accuracy, "
                  "and tokens and cost per trace summed over the steps.", ""]
        lines += _md_table(TRAJECTORY_HEADER, [[md_cell(c) for c in row[:2]] + row[2:] for row in trajectory_rows(report)])
        lines.append("")
    if report.experts:
        lines += ["## Expert routing", "", "Per cohort, layer means; capacity at the route's factor, else 1.25 "
                  "(docs/experts.md). " + md_cell(IMBALANCE_NOTE), ""]
        lines += _md_table(EXPERT_HEADER, [[md_cell(c) for c in row] for row in expert_rows(report)])
        agree = expert_agreement(report)
        if agree:
            lines += ["", "Sources compared (same responses, the most trusted source first):", ""]
            lines += [f"- {md_cell(a)}" for a in agree]
        lines.append("")
    if report.discovery:
        d = report.discovery
        lines += [f"## Exploratory cohorts (not pre-registered)", "",
                  f"{md_cell(d.reason)}. {md_cell(d.method)}; chosen k = {d.k}. {md_cell(d.correction)}.", ""]
        lines += _md_table(HEADER, _comparison_rows(d.comparisons + d.worst_slices))
        lines.append("")
    if report.warnings:
        lines += ["## Warnings", ""] + [f"- {md_cell(w)}" for w in report.warnings] + [""]
    if html_name:
        lines += [f"Full report with plots and worst examples: {md_cell(html_name)}", ""]
    return "\n".join(lines)


# ---------------------------------------------------------------- junit

def to_junit(report: Report, suite_name: str = "routecheck.report") -> str:
    suites = []
    for cand in report.candidates:
        suite = Suite(f"{cand} vs {report.baseline}")
        for c in (c for c in report.comparisons if c.candidate == cand):
            detail = (f"{c.metric} in {c.cohort}: baseline {fnum(c.baseline)}, candidate {fnum(c.candidate_value)}, "
                      f"diff {diff_text(c)}, p(Holm) {fp(c.p_adjusted)}, n {c.n_prompts}, margin {fnum(c.margin)}")
            case = Case(f"routecheck.{cand}.{c.scope}", f"{c.cohort} :: {c.metric}", "passed", output=f"{c.verdict}: {detail}")
            if c.verdict == "regression":
                case.outcome, case.message, case.text = "failed", f"regression: {detail}", detail
            elif c.verdict in ("inconclusive", "insufficient"):
                case.outcome, case.message = "skipped", f"{c.verdict}: {c.note or detail}"
            suite.cases.append(case)
        suites.append(suite)
    if report.no_data:
        suites.insert(0, Suite("run", [Case("routecheck.run", "data", "error", message=f"no data: {report.no_data}",
                                            text=report.no_data, failure_type="no_data")]))
    return junit_xml(suite_name, suites)
