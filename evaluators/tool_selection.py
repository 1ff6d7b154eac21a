"""tool_selection: did the route call the expected tool(s) with the expected arguments?

Expected forms (in the corpus row's `expected`):
- `{"tool": "get_weather", "arguments": {"city": "Paris"}}`
- `{"tool": ["a", "b"], "arguments": [{...}, {...}]}`  parallel calls, order-insensitive
- `{"tool_calls": [{"name": "a", "arguments": {...}}, ...]}`
- `{"tool": null}` (or `"none"`, or `"tool_calls": []`): the right behaviour is not to call a tool.
- `{"possible_answer": [{"fn": {"param": [accepted values]}}, ...]}`: BFCL ground truth, checked
  by BFCL's AST rules (evaluators/bfcl.py): score 1 or 0, details.calls has the per-call verdicts.

A call when none was expected and no call when one was expected both fail (score 0): "no call"
is never free credit. Sub-scores in details: name_accuracy, argument_accuracy, schema_validity.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from itertools import permutations
from typing import Any

from jsonschema import validators

from evaluators import bfcl
from evaluators.base import EvalRecord, EvalResult, parse_json_field
from evaluators.registry import evaluator


def _expected_calls(expected: dict[str, Any] | None) -> list[dict[str, Any]] | None:
    """Expected calls as [{"name", "arguments" (dict or None)}]; [] = no call; None = no expectation."""
    if not isinstance(expected, dict):
        return None
    if "tool_calls" in expected:
        calls = expected["tool_calls"] or []
        return [{"name": c.get("name") or (c.get("function") or {}).get("name"), "arguments": parse_json_field(c.get("arguments", (c.get("function") or {}).get("arguments")))} for c in calls]
    if "tool" not in expected:
        return None
    tool = expected["tool"]
    if tool is None or (isinstance(tool, str) and tool.lower() in ("", "none")):
        return []
    names = tool if isinstance(tool, list) else [tool]
    args = expected.get("arguments")
    arg_list = args if isinstance(args, list) else [args] * len(names) if len(names) == 1 else [None] * len(names)
    return [{"name": n, "arguments": parse_json_field(a)} for n, a in zip(names, arg_list)]



def _actual_calls(tool_calls: list[dict[str, Any]] | None) -> list[dict[str, Any]]:
    out = []
    for call in tool_calls or []:
        fn = call.get("function") or call
        raw = fn.get("arguments")
        parsed, ok = raw, True
        if isinstance(raw, str):
            try:
                parsed = json.loads(raw) if raw.strip() else {}
            except json.JSONDecodeError:
                parsed, ok = None, False
        out.append({"name": fn.get("name"), "arguments": parsed, "json_ok": ok, "raw": raw})
    return out


def normalise(value: Any) -> Any:
    """Compare values, not spellings: numbers by value ("5" == 5 == 5.0), booleans by truth
    ("true" == True), strings case- and whitespace-insensitive, dict key order ignored."""
    if isinstance(value, dict):
        return {str(k).strip(): normalise(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [normalise(v) for v in value]
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        s = re.sub(r"\s+", " ", value.strip()).lower()
        if s in ("true", "false"):
            return s == "true"
        try:
            return float(s)
        except ValueError:
            return s
    return value


def argument_match(expected: dict[str, Any], actual: Any) -> float:
    """Share of keys (union of expected and given) whose normalised values agree."""
    if not isinstance(actual, dict):
        return 0.0
    exp, act = normalise(expected), normalise(actual)
    keys = set(exp) | set(act)
    if not keys:
        return 1.0
    return sum(k in exp and k in act and exp[k] == act[k] for k in keys) / len(keys)


def _pair(expected: list[dict[str, Any]], actual: list[dict[str, Any]]) -> list[tuple[dict, dict]]:
    """Match expected to actual calls by name, then by best argument agreement (order-insensitive)."""
    pairs = []
    for name in {e["name"] for e in expected}:
        exp = [e for e in expected if e["name"] == name]
        act = [a for a in actual if a["name"] == name]
        if not act:
            continue
        k = min(len(exp), len(act))
        best, best_score = None, -1.0
        small = len(act) <= 6
        candidates = permutations(act, k) if small else [tuple(act[:k])]
        for perm in candidates:
            s = sum(argument_match(e["arguments"], a["arguments"]) if isinstance(e["arguments"], dict) else 0 for e, a in zip(exp, perm))
            if s > best_score:
                best, best_score = list(zip(exp, perm)), s
        pairs.extend(best or [])
    return pairs


def _validator_for(tools: list[dict[str, Any]] | None) -> dict[str, Any]:
    out = {}
    for t in tools or []:
        fn = t.get("function") or t
        if fn.get("name"):
            schema = fn.get("parameters") or {"type": "object"}
            out[fn["name"]] = validators.validator_for(schema)(schema)
    return out


@evaluator("tool_selection", version="1")
def tool_selection(records: list[EvalRecord]) -> list[EvalResult]:
    """Right tool names (order-insensitive), arguments after normalisation, JSON-schema validity."""
    return [_score(r) for r in records]


def _score_bfcl(rec: EvalRecord) -> EvalResult:
    v = bfcl.check(rec.expected["possible_answer"], rec.tool_calls, rec.tools)
    details = {"checker": "bfcl", "expected_tools": v.expected,
               "called_tools": [(c.get("function") or c).get("name") for c in rec.tool_calls or []], "calls": v.calls}
    return EvalResult(1.0 if v.passed else 0.0, v.passed, reason=v.reason, details=details)


def _score(rec: EvalRecord) -> EvalResult:
    if isinstance(rec.expected, dict) and isinstance(rec.expected.get("possible_answer"), list):
        return _score_bfcl(rec)
    expected = _expected_calls(rec.expected)
    if expected is None:
        if not rec.tools:
            return EvalResult.not_applicable("no tools offered and no expected tool call")
        return EvalResult.not_applicable("tools offered but the row gives no expected tool call (expected.tool)")
    actual = _actual_calls(rec.tool_calls)
    offered = _validator_for(rec.tools)
    hallucinated = sorted({a["name"] for a in actual if rec.tools and a["name"] not in offered})
    details: dict[str, Any] = {
        "expected_tools": [e["name"] for e in expected],
        "called_tools": [a["name"] for a in actual],
        "hallucinated_tools": hallucinated,
    }
    if not expected:
        details.update(name_accuracy=1.0 if not actual else 0.0, argument_accuracy=None, schema_validity=None)
        if not actual:
            return EvalResult(1.0, True, reason="correctly made no tool call", details=details)
        return EvalResult(0.0, False, reason=f"called {details['called_tools']} but no tool call was expected", details=details)
    if not actual:
        details.update(name_accuracy=0.0, argument_accuracy=0.0, schema_validity=None)
        return EvalResult(0.0, False, reason=f"no tool call made; expected {details['expected_tools']}", details=details)

    exp_names, act_names = Counter(e["name"] for e in expected), Counter(a["name"] for a in actual)
    name_acc = sum((exp_names & act_names).values()) / max(len(expected), len(actual))
    pairs = _pair(expected, actual)
    with_args = [e for e in expected if isinstance(e["arguments"], dict)]
    arg_acc = None
    if with_args:
        matched = {id(e): argument_match(e["arguments"], a["arguments"]) for e, a in pairs if isinstance(e["arguments"], dict)}
        arg_acc = sum(matched.get(id(e), 0.0) for e in with_args) / len(with_args)
    schema_errors = []
    for a in actual:
        if not a["json_ok"]:
            schema_errors.append(f"{a['name']}: arguments are not valid JSON: {str(a['raw'])[:80]!r}")
        elif a["name"] in offered:
            err = next(iter(offered[a["name"]].iter_errors(a["arguments"])), None)
            if err is not None:
                schema_errors.append(f"{a['name']}: {err.message}")
        elif rec.tools:
            schema_errors.append(f"{a['name']}: not an offered tool, no schema")
    schema_validity = 1.0 - len(schema_errors) / len(actual) if rec.tools or any(not a["json_ok"] for a in actual) else None
    details.update(name_accuracy=name_acc, argument_accuracy=arg_acc, schema_validity=schema_validity, schema_errors=schema_errors)
    rest = [s for s in (arg_acc, schema_validity) if s is not None]
    score = name_acc * (sum(rest) / len(rest) if rest else 1.0)
    passed = name_acc == 1.0 and arg_acc in (None, 1.0) and schema_validity in (None, 1.0) and not hallucinated
    problems = []
    if name_acc < 1:
        problems.append(f"tools {details['called_tools']} != expected {details['expected_tools']}")
    if hallucinated:
        problems.append(f"hallucinated tool(s) {hallucinated}")
    if arg_acc is not None and arg_acc < 1:
        problems.append(f"argument accuracy {arg_acc:.2f}")
    if schema_errors:
        problems.append(schema_errors[0])
    return EvalResult(score, passed, reason="; ".join(problems) or "right tools and arguments", details=details)
