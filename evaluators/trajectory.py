"""Agent trajectory evaluators: did the agent take the expected tool steps, where did it first
go wrong, and did it take as many steps as it should?

The row's `expected.steps` lists the tool-calling steps expected before the final answer, each in
BFCL's possible-answer form and checked by BFCL's rules (evaluators/bfcl.py, so parallel calls in
one step match in any order). The expected trajectory is those n steps, then a text answer: n + 1
model calls. The final answer itself is scored by `task_completion` (against `expected.answer`)
and `groundedness` / `hallucination` (against the scripted results the agent was sent); both
fail or skip a trajectory that never answered.

- `step_accuracy`: the agent's tool steps aligned in order to the expected ones (the longest
  common subsequence of matching steps, so a wrong step followed by the right ones counts as one
  wrong step, not as a shift). score = steps right / max(tool steps taken, steps expected);
  passed = every expected step right and no other tool step.
- `first_wrong_step`: the first model call (1-based) that differs from the expected trajectory at
  its position: a wrong or missing call, an answer too early, a call where the answer was due, or
  the end of the trajectory (max_steps, an unscripted call) before it. score = share of the n + 1
  expected calls done right before it (1 when none is wrong); details.first_wrong_step.
- `step_count`: model calls taken against n + 1. score = min / max of the two; passed when equal.
  details say which way (too many: a loop when calls repeat; too few: an early stop).
"""

from __future__ import annotations

import json
from typing import Any

from evaluators import bfcl
from evaluators.base import EvalRecord, EvalResult
from evaluators.registry import evaluator


def expected_steps(rec: EvalRecord) -> list[list[dict[str, Any]]] | None:
    steps = rec.expected.get("steps") if isinstance(rec.expected, dict) else None
    if not isinstance(steps, list):
        return None
    return [s if isinstance(s, list) else [s] for s in steps]


def _inputs(rec: EvalRecord) -> tuple[list[list[dict[str, Any]]], list[dict[str, Any]]] | EvalResult:
    if not rec.is_trajectory:
        return EvalResult.not_applicable("not an agent trajectory (the row has no tool_results)")
    expected = expected_steps(rec)
    if expected is None:
        return EvalResult.not_applicable("the row gives no expected.steps")
    return expected, rec.steps or []


def _names(step: dict[str, Any]) -> list[str | None]:
    return [(c.get("function") or c).get("name") for c in step.get("tool_calls") or []]


def _expected_names(step: list[dict[str, Any]]) -> list[str]:
    return [name for call in step for name in call]


def _lcs(ok: list[list[bool]]) -> list[tuple[int, int]]:
    """Pairs (expected i, taken j) of a longest in-order alignment of matching steps."""
    n, m = len(ok), len(ok[0]) if ok else 0
    best = [[0] * (m + 1) for _ in range(n + 1)]
    for i in range(n - 1, -1, -1):
        for j in range(m - 1, -1, -1):
            best[i][j] = best[i + 1][j + 1] + 1 if ok[i][j] else max(best[i + 1][j], best[i][j + 1])
    pairs, i, j = [], 0, 0
    while i < n and j < m:
        if ok[i][j] and best[i][j] == best[i + 1][j + 1] + 1:
            pairs.append((i, j))
            i, j = i + 1, j + 1
        elif best[i + 1][j] >= best[i][j + 1]:
            i += 1
        else:
            j += 1
    return pairs


@evaluator("step_accuracy", version="1")
def step_accuracy(records: list[EvalRecord]) -> list[EvalResult]:
    """Share of tool steps right (BFCL rules per step, in-order alignment); passed = all right."""
    return [_step_accuracy(r) for r in records]


def _step_accuracy(rec: EvalRecord) -> EvalResult:
    got = _inputs(rec)
    if isinstance(got, EvalResult):
        return got
    expected, steps = got
    taken = [s for s in steps if s.get("tool_calls")]
    verdicts = [[bfcl.check(e, s["tool_calls"], rec.tools) for s in taken] for e in expected]
    pairs = _lcs([[v.passed for v in row] for row in verdicts])
    matched_of = {j: i for i, j in pairs}
    rows, problems = [], []
    for j, s in enumerate(taken):
        if j in matched_of:
            rows.append({"step": s["step"], "calls": _names(s), "ok": True, "matches_expected": matched_of[j] + 1, "reason": "right"})
            continue
        # What it should have been: the expected step after the last one done before it.
        todo = max((i for i, jj in pairs if jj < j), default=-1) + 1
        todo = todo if todo < len(expected) else None
        reason = (f"expected step {todo + 1} {_expected_names(expected[todo])}: {verdicts[todo][j].reason}" if todo is not None
                  else "an extra tool step (every expected step was already done)")
        rows.append({"step": s["step"], "calls": _names(s), "ok": False, "matches_expected": None, "reason": reason})
        problems.append(f"step {s['step']} {_names(s)}: {reason}")
    done = {i for i, _ in pairs}
    missing = [i + 1 for i in range(len(expected)) if i not in done]
    if missing:
        problems.append(f"expected step(s) {missing} never made ({rec.stop_reason})")
    denominator = max(len(taken), len(expected))
    score = len(pairs) / denominator if denominator else 1.0
    passed = len(pairs) == len(expected) == len(taken)
    reason = f"{len(pairs)}/{denominator} steps right" + (f"; {problems[0]}" if problems else "")
    return EvalResult(score, passed, reason=reason, details={
        "right": len(pairs), "tool_steps": len(taken), "expected_steps": len(expected), "missing_expected_steps": missing,
        "steps": rows, "stop_reason": rec.stop_reason})


def first_wrong(rec: EvalRecord, expected: list[list[dict[str, Any]]], steps: list[dict[str, Any]]) -> tuple[int | None, str]:
    """(1-based model call that first leaves the expected trajectory, why); (None, "") if none does."""
    n = len(expected)
    for p, s in enumerate(steps, start=1):
        calls = s.get("tool_calls") or []
        if p <= n:
            if not calls:
                return p, f"answered at step {p}; expected {_expected_names(expected[p - 1])}"
            v = bfcl.check(expected[p - 1], calls, rec.tools)
            if not v.passed:
                return p, f"step {p}: {v.reason}"
        elif calls:
            return p, f"step {p} called {_names(s)}; expected the final answer"
    if len(steps) < n + 1:
        return len(steps) + 1, f"the trajectory ended ({rec.stop_reason}) after {len(steps)} step(s), before step {len(steps) + 1}"
    return None, ""


@evaluator("first_wrong_step", version="1")
def first_wrong_step(records: list[EvalRecord]) -> list[EvalResult]:
    """Share of the expected trajectory done right before its first wrong step; passed = none wrong."""
    out = []
    for rec in records:
        got = _inputs(rec)
        if isinstance(got, EvalResult):
            out.append(got)
            continue
        expected, steps = got
        k, why = first_wrong(rec, expected, steps)
        total = len(expected) + 1
        details = {"first_wrong_step": k, "expected_calls": total, "steps_taken": len(steps), "stop_reason": rec.stop_reason}
        if k is None:
            out.append(EvalResult(1.0, True, reason=f"all {total} steps as expected", details=details))
        else:
            out.append(EvalResult((k - 1) / total, False, reason=f"first wrong step {k} of {total}: {why}", details=details))
    return out


def _call_key(call: dict[str, Any]) -> str:
    fn = call.get("function") or call
    args = fn.get("arguments")
    try:
        args = json.loads(args) if isinstance(args, str) else args
    except json.JSONDecodeError:
        pass
    return json.dumps([fn.get("name"), args], sort_keys=True, default=str)


@evaluator("step_count", version="1")
def step_count(records: list[EvalRecord]) -> list[EvalResult]:
    """Model calls taken against the expected count (tool steps + the answer): loops and early stops."""
    out = []
    for rec in records:
        got = _inputs(rec)
        if isinstance(got, EvalResult):
            out.append(got)
            continue
        expected, steps = got
        want, taken = len(expected) + 1, len(steps)
        seen: set[str] = set()
        repeated = 0
        for s in steps:
            keys = sorted(_call_key(c) for c in s.get("tool_calls") or [])
            if keys:
                key = "|".join(keys)
                repeated += key in seen
                seen.add(key)
        if taken == want:
            verdict = "as expected"
        elif taken > want:
            verdict = f"too many steps (a loop: {repeated} repeated call step(s))" if repeated else "too many steps"
        else:
            verdict = "too few steps (early stop)"
        details = {"steps_taken": taken, "steps_expected": want, "repeated_call_steps": repeated,
                   "stop_reason": rec.stop_reason, "verdict": verdict}
        reason = f"{taken} steps taken, {want} expected: {verdict}" + ("" if rec.answered else f" ({rec.stop_reason})")
        out.append(EvalResult(min(taken, want) / max(taken, want), taken == want, reason=reason, details=details))
    return out
