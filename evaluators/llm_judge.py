"""llm_judge: a rubric prompt sent to a judge route; the score parsed robustly, reasoning kept.

Options: `route` (name in `routes`, default routes.yaml) or `base_url` + `model`; `rubric`;
`scale_min`/`scale_max` (default 1..5); `pass_threshold` on the normalised score (default 0.7,
so 4/5 passes and 3/5 does not). A reply without a score, or with one outside the scale, is
"not applicable" with the reply kept, never a guessed number.
"""

from __future__ import annotations

from typing import Any

from evaluators.base import EvalRecord, EvalResult
from evaluators.registry import evaluator
from evaluators.judge_client import JudgeClient, parse_score, resolve_judge_route

DEFAULT_RUBRIC = "Rate how well the response answers the user's request: correct, complete, and supported by the context when one is given."

_INSTRUCTIONS = (
    "You are a strict evaluator. Apply the rubric to the response. Think briefly, then reply with "
    'JSON only: {{"reasoning": "<one or two sentences>", "score": <integer from {lo} to {hi}>}}.'
)


def build_prompt(rec: EvalRecord, rubric: str, lo: float, hi: float) -> list[dict[str, Any]]:
    parts = [f"Rubric: {rubric}", f"Scale: {lo:g} (worst) to {hi:g} (best)."]
    if rec.question:
        parts.append(f"User request:\n{rec.question}")
    if rec.evidence:  # the context, and in a trajectory the tool results the model was sent
        parts.append(f"Context:\n{rec.evidence}")
    if isinstance(rec.expected, dict) and rec.expected.get("answer") is not None:
        parts.append(f"Reference answer:\n{rec.expected['answer']}")
    parts.append(f"Response:\n{rec.text or ''}")
    if rec.tool_calls:
        parts.append(f"Tool calls made:\n{rec.tool_calls}")
    return [
        {"role": "system", "content": _INSTRUCTIONS.format(lo=f"{lo:g}", hi=f"{hi:g}")},
        {"role": "user", "content": "\n\n".join(parts)},
    ]


@evaluator("llm_judge", version="1")
class LlmJudge:
    """Rubric score from a judge route, normalised to [0, 1]; the judge's reasoning in details."""

    def __init__(
        self,
        route: str | None = None,
        routes: str = "routes.yaml",
        base_url: str | None = None,
        model: str | None = None,
        rubric: str = DEFAULT_RUBRIC,
        scale_min: float = 1,
        scale_max: float = 5,
        pass_threshold: float = 0.7,
    ):
        if scale_max <= scale_min:
            raise ValueError(f"scale_max ({scale_max}) must exceed scale_min ({scale_min})")
        self.judge = resolve_judge_route(route, routes, base_url, model)  # a bad route fails before scoring
        self.rubric, self.lo, self.hi, self.pass_threshold = rubric, scale_min, scale_max, pass_threshold

    def evaluate(self, records: list[EvalRecord]) -> list[EvalResult]:
        results: list[EvalResult | None] = [None] * len(records)
        todo = []
        for i, rec in enumerate(records):
            if not (rec.text or "").strip() and not rec.tool_calls:
                results[i] = EvalResult.not_applicable("no response to judge")
            else:
                todo.append(i)
        client = JudgeClient(self.judge)
        try:
            replies = client.complete_many([build_prompt(records[i], self.rubric, self.lo, self.hi) for i in todo])
        finally:
            client.close()
        for i, reply in zip(todo, replies):
            results[i] = _result(reply, self.judge.name, self.lo, self.hi, self.pass_threshold)
        return [r for r in results if r is not None]


def _result(reply: str | Exception, judge: str, lo: float, hi: float, pass_threshold: float) -> EvalResult:
    if isinstance(reply, Exception):
        return EvalResult.not_applicable(f"judge call failed: {reply}", judge=judge)
    parsed = parse_score(reply)
    details = {"judge": judge, "reasoning": parsed.reasoning, "raw_reply": reply[:2000], "raw_score": parsed.value}
    if parsed.value is None:
        return EvalResult.not_applicable(f"judge reply unparsed: {parsed.error}", **details)
    top = parsed.scale_max if parsed.scale_max else hi
    low = 0.0 if parsed.scale_max and parsed.scale_max != hi else lo
    if not low <= parsed.value <= top or top <= low:
        return EvalResult.not_applicable(f"judge score {parsed.value:g} outside the scale {low:g}..{top:g}", **details)
    score = (parsed.value - low) / (top - low)
    return EvalResult(score, score >= pass_threshold, reason=f"judge score {parsed.value:g} on {low:g}..{top:g}: {parsed.reasoning[:120]}", details=details)
