"""Verdicts need data: what a run, a route or a comparison lacks, said plainly (pure, over a Report).

- `run_no_data`: the run cannot be judged at all (no responses, a route without calls, every
  call of the baseline or of every route failed). The report says NO DATA; the gate exits 2.
- `missing_data`: why one candidate x metric x cohort has no paired data: which route lacks it,
  and whether its calls failed. The gate fails such a check (or marks it insufficient, per
  the policy's on_no_data); the report shows it as "insufficient" with this note.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from harness.report.policy import SERVING_METRICS

# Serving metrics measured on successful calls only (the others count every call).
SUCCESS_ONLY = {"latency_p50_s", "latency_p99_s", "ttft_p99_s", "output_tokens_per_s"}
SERVING_NAMES = {s.name for s in SERVING_METRICS}


@dataclass(frozen=True)
class Missing:
    kind: str      # "no data" (a route lacks it: never a pass) | "not applicable" (neither route has it in this cohort)
    message: str


def _calls(serving: list[dict[str, Any]], route: str, cohort: str) -> tuple[int, int]:
    """(calls, failed calls) of a route in a cohort ("(all)": the route as a whole)."""
    for r in serving:
        if r["route"] == route and r["cohort"] == cohort:
            n = int(r.get("responses") or 0)
            return n, round(n * float(r.get("error_rate") or 0.0))
    return 0, 0


def _types(error_types: list[dict[str, Any]], route: str, limit: int = 3) -> str:
    rows = [e for e in error_types if e["route"] == route]
    shown = ", ".join(f"{e['error_type']} x{e['calls']}" for e in rows[:limit])
    return shown + (f", {len(rows) - limit} more types" if len(rows) > limit else "")


def describe_route(serving: list[dict[str, Any]], error_types: list[dict[str, Any]], route: str, cohort: str = "(all)") -> str:
    calls, failed = _calls(serving, route, cohort)
    if calls == 0:
        return f"{route}: no calls"
    text = f"{route}: {failed} of {calls} calls failed"
    types = _types(error_types, route) if failed else ""
    return text + (f" ({types})" if types else "")


def run_no_data(serving: list[dict[str, Any]], error_types: list[dict[str, Any]], baseline: str,
                candidates: list[str]) -> str | None:
    """Why the run has nothing to judge, or None."""
    routes = [baseline, *candidates]
    calls = {r: _calls(serving, r, "(all)") for r in routes}
    detail = "; ".join(describe_route(serving, error_types, r) for r in routes)
    if all(n == 0 for n, _ in calls.values()):
        return "the run has no responses (nothing was recorded: an empty corpus, or a run that never started)"
    empty = [r for r in routes if calls[r][0] == 0]
    if empty:
        return f"no responses from route{'s' if len(empty) > 1 else ''} {', '.join(empty)} ({detail})"
    if all(failed == n for n, failed in calls.values()):
        return f"every call failed on every route ({detail})"
    n, failed = calls[baseline]
    if failed == n:
        return f"every call to the baseline {baseline} failed, so there is nothing to compare with ({detail})"
    return None


def _coverage(report, route: str, cohort: str, evaluator: str, column: str) -> int:
    key = "pass_prompts" if column == "pass_rate" else "score_prompts"
    for c in report.score_coverage:
        if c["route"] == route and c["cohort"] == cohort and c["evaluator"] == evaluator:
            return int(c[key])
    return 0


def known_metrics(report) -> list[str]:
    """Metrics the run has data for on some route, compared or not (a policy naming one of these
    is not "no such metric", even when a route has none of it)."""
    names = {c.metric for c in report.comparisons}
    for c in report.score_coverage:
        names |= {f"{c['evaluator']}.pass_rate", f"{c['evaluator']}.score"} if c["rows"] else set()
    return sorted(names | (SERVING_NAMES - {"cost_per_trace_usd"}))  # cost exists only with prices


def missing_data(report, candidate: str, metric: str, cohort: str) -> Missing:
    """Why `candidate` has no paired `metric` data in `cohort` ("(all)" for the whole run)."""
    where = "" if cohort == "(all)" else f" in cohort {cohort}"
    base = report.baseline
    if metric in SERVING_NAMES:
        sides = []
        for route in (candidate, base):
            calls, failed = _calls(report.serving, route, cohort)
            if calls == 0:
                sides.append(f"{route} has no calls{where}")
            elif metric in SUCCESS_ONLY and failed == calls:
                types = _types(report.error_types, route)
                if types and where:
                    types = f"{route}'s errors in the run: {types}"
                sides.append(f"every call to {route}{where} failed ({failed} of {calls}{'; ' + types if types else ''})")
        if sides:
            return Missing("no data", "no data: " + "; ".join(sides))
        return Missing("no data", f"no data: no prompt{where} has a successful call on both {candidate} and {base}")
    evaluator, _, column = metric.rpartition(".")
    n_cand = _coverage(report, candidate, cohort, evaluator, column)
    n_base = _coverage(report, base, cohort, evaluator, column)
    if n_cand == 0 and n_base == 0 and cohort != "(all)":
        return Missing("not applicable", f"{evaluator} applies to no prompt{where} on either route")
    sides = []
    for route, n in ((candidate, n_cand), (base, n_base)):
        if n:
            continue
        calls, failed = _calls(report.serving, route, cohort)
        if calls and failed == calls:
            sides.append(f"{route} has no {metric} data{where}: every call failed ({failed} of {calls})")
        else:
            sides.append(f"{route} has no {metric} data{where} ({evaluator} scored none of its responses as applicable)")
    if not sides:
        sides.append(f"no prompt{where} has {metric} on both {candidate} and {base}")
    return Missing("no data", "no data: " + "; ".join(sides))
