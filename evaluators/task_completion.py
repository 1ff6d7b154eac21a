"""task_completion: does the response give the expected answer, or valid structured output?

Per row (`expected`): `answer` (a string or a list of acceptable strings), optional `match`
(exact | normalized | token_f1 | regex | contains; the evaluator's `match` option is the
default, itself defaulting to normalized), and/or `json_schema` (the response must be JSON valid
against it; a ```json fence is allowed). For an agent trajectory the response is its final answer;
a trajectory that ended without one (max_steps, an unscripted call) fails.
"""

from __future__ import annotations

import json
import re
import string
from collections import Counter
from typing import Any

from jsonschema import validators

from evaluators.base import EvalRecord, EvalResult
from evaluators.registry import evaluator

MATCHES = ("exact", "normalized", "token_f1", "regex", "contains")


def normalize_answer(text: str) -> str:
    """SQuAD-style: lower case, no punctuation, no articles, single spaces."""
    text = text.lower()
    text = "".join(ch for ch in text if ch not in set(string.punctuation))
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def token_f1(prediction: str, reference: str) -> float:
    pred, ref = normalize_answer(prediction).split(), normalize_answer(reference).split()
    if not pred or not ref:
        return float(pred == ref)
    common = sum((Counter(pred) & Counter(ref)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(pred), common / len(ref)
    return 2 * precision * recall / (precision + recall)


def match_score(match: str, text: str, reference: str) -> float:
    if match == "exact":
        return float(text.strip() == reference.strip())
    if match == "normalized":
        return float(normalize_answer(text) == normalize_answer(reference))
    if match == "token_f1":
        return token_f1(text, reference)
    if match == "regex":
        return float(re.search(reference, text, re.S) is not None)
    if match == "contains":
        return float(normalize_answer(reference) in normalize_answer(text))
    raise ValueError(f"unknown match {match!r}; use one of {', '.join(MATCHES)}")


def parse_json_output(text: str) -> Any:
    fenced = re.search(r"```(?:json)?\s*(.*?)```", text, re.S)
    return json.loads(fenced.group(1) if fenced else text.strip())


@evaluator("task_completion", version="1")
def task_completion(records: list[EvalRecord], match: str = "normalized", f1_threshold: float = 0.5) -> list[EvalResult]:
    """Expected answer by exact/normalized/token-F1/regex/contains match; JSON-schema validity."""
    if match not in MATCHES:
        raise ValueError(f"task_completion: unknown match {match!r}; use one of {', '.join(MATCHES)}")
    return [_score(r, match, f1_threshold) for r in records]


def _score(rec: EvalRecord, default_match: str, f1_threshold: float) -> EvalResult:
    exp = rec.expected if isinstance(rec.expected, dict) else {}
    answers = exp.get("answer")
    schema = exp.get("json_schema")
    if answers is None and schema is None:
        return EvalResult.not_applicable("no expected answer or json_schema")
    if not rec.answered:  # an agent trajectory that never gave its final answer
        return EvalResult(0.0, False, reason=f"the trajectory ended without a final answer ({rec.stop_reason})",
                          details={"stop_reason": rec.stop_reason, "steps": len(rec.steps or [])})
    if rec.text is None or not rec.text.strip():
        if rec.tool_calls:
            return EvalResult.not_applicable("response is a tool call, not an answer")
        return EvalResult(0.0, False, reason="empty response", details={})
    parts: dict[str, float] = {}
    passes: list[bool] = []
    details: dict[str, Any] = {}
    if answers is not None:
        match = exp.get("match", default_match)
        if match not in MATCHES:
            return EvalResult.not_applicable(f"expected.match {match!r} is not one of {', '.join(MATCHES)}")
        refs = answers if isinstance(answers, list) else [answers]
        try:
            scores = [match_score(match, rec.text, str(r)) for r in refs]
        except re.error as e:
            return EvalResult.not_applicable(f"expected.answer is not a valid regex: {e}")
        best = max(scores)
        parts["answer"] = best
        passes.append(best >= f1_threshold if match == "token_f1" else best == 1.0)
        details.update(match=match, answer_score=best, best_reference=str(refs[scores.index(best)]))
    if schema is not None:
        try:
            value = parse_json_output(rec.text)
            err = next(iter(validators.validator_for(schema)(schema).iter_errors(value)), None)
            details["json_error"] = None if err is None else f"{'/'.join(map(str, err.absolute_path)) or '(root)'}: {err.message}"
        except json.JSONDecodeError as e:
            details["json_error"] = f"not JSON: {e.msg} at line {e.lineno} column {e.colno}"
        parts["json_schema"] = float(details["json_error"] is None)
        passes.append(details["json_error"] is None)
    score = sum(parts.values()) / len(parts)
    details["sub_scores"] = parts
    reasons = []
    if "answer" in parts:
        reasons.append(f"{details['match']} match {parts['answer']:.2f} vs {details['best_reference'][:60]!r}")
    if "json_schema" in parts:
        reasons.append(f"JSON invalid: {details['json_error']}" if details["json_error"] else "JSON valid")
    reason = "; ".join(reasons)
    return EvalResult(score, all(passes), reason=reason, details=details)
