"""BFCL-grade tool-call checking: OpenAI tool calls against BFCL's possible-answer ground truth.

Pure functions, no I/O. `check(possible_answer, tool_calls, tools)` returns a `Verdict`.

Ground truth (BFCL's `possible_answer`): a list with one `{function_name: {param: [accepted values]}}`
per expected call; `""` among a parameter's accepted values means it may be left out; `[]` as the
whole list means no call is expected. Calls are OpenAI-style
`[{"function": {"name": ..., "arguments": "<json string>"}}]`; tools are the OpenAI tools offered
(`[{"type": "function", "function": {"name", "parameters": <JSON Schema>}}]`), used for each
function's declared parameters, `required` list and types.

Written from the rules of BFCL's AST checker (ShishirPatil/gorilla, Apache-2.0,
`berkeley-function-call-leaderboard/bfcl_eval/eval_checker/ast_eval/ast_checker.py`, read at
commit 6ea57973), not from its code. Rules followed, in BFCL's order:

- `simple_function_checker`: the name must match; every parameter in the schema's `required`
  must be present; every given parameter must be declared by the schema *and* appear in the
  possible answer ("unexpected parameter"); each value must pass the type check and then be among
  the accepted values; finally every possible-answer parameter that was left out must accept `""`.
  The first broken rule is the verdict.
- `type_checker`: the value's JSON type must be the schema's (`integer` is an int and never a
  bool, `number` a float, `boolean` a bool, `string`, `array`, `object`); an int is accepted for a
  `number` (BFCL: "python auto conversion from int to float"). BFCL's "variable" escape is kept:
  when the accepted values are of another type than the schema says (ground truth that gives
  `null` or a string where the schema says integer), a value of the accepted values' type passes
  the type check and is then compared exactly, without string normalisation. Arrays are type-checked
  one level deep against `items.type`, as BFCL does.
- `standardize_string` / `string_checker`: strings are compared after removing spaces and the
  characters `, . / - _ * ^`, lower-casing, and turning `'` into `"` ("April 1, 2024" ==
  "april 1 2024"), against the accepted values that are strings.
- `list_checker`: arrays are compared element by element, in order, string elements standardised.
- `dict_checker`: an object passes when, for one accepted object (whose values are themselves
  lists of accepted values), every given key is in it with an accepted (standardised) value and
  every key left out accepts `""`. `list_dict_checker`: an array of objects has the accepted
  length and each object passes against the accepted object at its position.
- `parallel_function_checker_no_order` (parallel), `multiple_function_checker` and the
  single-call path of `ast_checker`: the number of calls must equal the number expected ("Wrong
  number of functions"), and calls match expected calls one-to-one in any order.
- `convert_func_name`: a called name with `.` replaced by `_` (what OpenAI-style APIs force on
  `math.factorial`) is accepted for the dotted name, unless an offered tool has that exact name.

Where this differs from BFCL:

- Parallel matching is a true one-to-one (bipartite) matching; BFCL takes, for each expected call
  in turn, the first unmatched call that fits, which can fail when a perfect matching exists.
- BFCL applies the dotted-name conversion per model (its model config); here it is always allowed.
- A bool never equals a number (Python's `True == 1` lets BFCL accept `true` for `[1]` after a
  "variable" escape); numbers compare by value (`1 == 1.0`).
- An int is accepted for a `number` inside arrays and objects too, not only at the top level.
- `""` among accepted values only ever means "may be omitted": BFCL's `list_checker` also lets an
  empty array match it, and its nested type check is skipped when `""` is accepted.
- Strings inside objects and arrays nested deeper than BFCL looks are standardised as well.
- Arguments that are not a JSON object fail with their own reason (BFCL works on parsed Python
  calls, so it has no such case); a call when none was expected fails (BFCL's irrelevance
  category counts a decodable call as a failure).
- Types BFCL's JSON Schema conversion dropped (`any`): no type check; strings standardised.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

_STRIP = re.compile(r"[ ,./\-_*^]")


def standardize_string(s: str) -> str:
    """BFCL's string normal form: no spaces or `,./-_*^`, lower case, `'` as `"`."""
    return _STRIP.sub("", s).lower().replace("'", '"')


@dataclass
class Verdict:
    passed: bool
    reason: str
    calls: list[dict[str, Any]] = field(default_factory=list)  # one per call made, in order
    expected: list[str] = field(default_factory=list)  # expected function names, in ground-truth order


# ---------------------------------------------------------------- parsing


def _parse_calls(tool_calls: list[dict[str, Any]] | None) -> list[dict[str, Any]]:
    out = []
    for call in tool_calls or []:
        fn = call.get("function") or call
        raw = fn.get("arguments")
        args, error = raw, None
        if isinstance(raw, str):
            try:
                args = json.loads(raw) if raw.strip() else {}
            except json.JSONDecodeError:
                args, error = None, f"arguments are not valid JSON: {raw[:80]!r}"
        elif raw is None:
            args = {}
        if error is None and not isinstance(args, dict):
            args, error = None, f"arguments are not a JSON object: {str(raw)[:80]!r}"
        out.append({"name": fn.get("name"), "args": args, "error": error})
    return out


def _schemas(tools: list[dict[str, Any]] | None) -> dict[str, dict[str, Any]]:
    out = {}
    for t in tools or []:
        fn = t.get("function") or t
        if isinstance(fn, dict) and fn.get("name"):
            out[fn["name"]] = fn.get("parameters") or {}
    return out


# ---------------------------------------------------------------- values


def _kind(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "boolean"
    if isinstance(v, int):
        return "integer"
    if isinstance(v, float):
        return "number"
    if isinstance(v, str):
        return "string"
    if isinstance(v, list):
        return "array"
    if isinstance(v, dict):
        return "object"
    return type(v).__name__


def _fits(v: Any, schema_type: str) -> bool:
    k = _kind(v)
    return k == schema_type or (schema_type == "number" and k == "integer")


def _same_kind(a: str, b: str) -> bool:
    nums = ("integer", "number")
    return a == b or (a in nums and b in nums)


def _equal(a: Any, b: Any) -> bool:
    """Exact value equality: numbers by value, a bool is never a number, containers element-wise."""
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return float(a) == float(b)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_equal(a[k], b[k]) for k in a)
    return type(a) is type(b) and a == b


def _std(v: Any) -> Any:
    """Standardise every string in a value (list and dict elements too)."""
    if isinstance(v, str):
        return standardize_string(v)
    if isinstance(v, list):
        return [_std(x) for x in v]
    if isinstance(v, dict):
        return {k: _std(x) for k, x in v.items()}
    return v


def _among(value: Any, accepted: list[Any]) -> bool:
    """`value` equals one accepted value (not `""`) after string standardisation."""
    sv = _std(value)
    return any(_equal(sv, _std(a)) for a in accepted if not (isinstance(a, str) and a == "" and value != ""))


def _show(accepted: list[Any]) -> str:
    vals = [a for a in accepted if a != ""]
    return repr(vals) + (" (or omitted)" if len(vals) < len(accepted) else "")


def _dict_error(where: str, value: dict, accepted: list[Any]) -> str | None:
    """BFCL's dict_checker: passes against one accepted object; else the first object's error."""
    first = None
    for acc in accepted:
        if not isinstance(acc, dict):
            continue
        err = None
        for k, v in value.items():
            if k not in acc:
                err = f"{where} has unexpected key {k!r}"
                break
            vals = acc[k] if isinstance(acc[k], list) else [acc[k]]
            if not _among(v, vals):
                err = f"{where}[{k!r}] = {v!r} not in {_show(vals)}"
                break
        if err is None:
            for k, vals in acc.items():
                if k not in value and "" not in (vals if isinstance(vals, list) else [vals]):
                    err = f"{where} is missing key {k!r}"
                    break
        if err is None:
            return None
        first = first or err
    return first or f"{where} = {value!r} not in {_show(accepted)}"


def _list_dict_error(where: str, value: list, accepted: list[Any]) -> str | None:
    """BFCL's list_dict_checker: same length, object i against accepted object i."""
    first = None
    for acc in accepted:
        if not isinstance(acc, list):
            continue
        if len(acc) != len(value):
            err = f"{where} has {len(value)} objects, expected {len(acc)}"
        else:
            err = next((e for i, (v, a) in enumerate(zip(value, acc))
                        if (e := (_dict_error(f"{where}[{i}]", v, [a]) if isinstance(v, dict) else f"{where}[{i}] = {v!r} is not an object"))), None)
        if err is None:
            return None
        first = first or err
    return first or f"{where} = {value!r} not in {_show(accepted)}"


def _param_error(param: str, value: Any, accepted: list[Any], spec: dict[str, Any]) -> str | None:
    """Type check, then value check, of one given parameter (None = passes)."""
    where = repr(param)
    schema_type = spec.get("type") if isinstance(spec.get("type"), str) else None
    answer_kind = next((_kind(a) for a in accepted if not (isinstance(a, str) and a == "")), None)
    # BFCL's "variable" case: the ground truth's values are of another type than the schema's.
    variable = answer_kind is not None and schema_type is not None and not _same_kind(answer_kind, schema_type)
    if schema_type is not None:
        if _fits(value, schema_type):
            items = spec.get("items") if schema_type == "array" else None
            item_type = items.get("type") if isinstance(items, dict) and isinstance(items.get("type"), str) else None
            if item_type and not variable:
                inner = [_kind(a[0]) for a in accepted if isinstance(a, list) and a]
                for i, x in enumerate(value):
                    if not _fits(x, item_type) and not any(_same_kind(_kind(x), k) for k in inner):
                        return f"{where}[{i}] = {x!r} is {_kind(x)}, expected {item_type}"
        elif answer_kind is not None and _kind(value) == answer_kind:
            variable = True
        else:
            return f"{where} = {value!r} is {_kind(value)}, expected {schema_type}"
    if variable:
        ok = any(_equal(value, a) for a in accepted if a != "")
        return None if ok else f"{where} = {value!r} not in {_show(accepted)}"
    if isinstance(value, dict) and schema_type in ("object", None):
        return _dict_error(where, value, accepted)
    if isinstance(value, list) and value and all(isinstance(x, dict) for x in value) and (
            schema_type is None or (spec.get("items") or {}).get("type") == "object"):
        return _list_dict_error(where, value, accepted)
    return None if _among(value, accepted) else f"{where} = {value!r} not in {_show(accepted)}"


# ---------------------------------------------------------------- calls


def _name_matches(called: Any, expected: str, offered: dict[str, Any]) -> bool:
    if called == expected:
        return True
    return isinstance(called, str) and "." in expected and called == expected.replace(".", "_") and called not in offered


def call_error(call: dict[str, Any], name: str, answer: dict[str, list[Any]], schemas: dict[str, dict[str, Any]]) -> str | None:
    """One parsed call against one expected call (BFCL's simple_function_checker); None = passes."""
    if not _name_matches(call["name"], name, schemas):
        return f"called {call['name']!r}, expected {name!r}"
    if call["error"]:
        return call["error"]
    args = call["args"]
    schema = schemas.get(name)
    props = (schema or {}).get("properties") or {}
    if schema is not None:
        required = schema.get("required") or []
    else:  # no schema offered: the ground truth says what may be omitted
        required = [p for p, acc in answer.items() if "" not in acc]
    for p in required:
        if p not in args:
            return f"missing required parameter {p!r}"
    for p, value in args.items():
        if (schema is not None and p not in props) or p not in answer:
            return f"unexpected parameter {p!r}" + ("" if p in props or schema is None else " (not in the schema)")
        err = _param_error(p, value, answer[p], props.get(p) or {})
        if err:
            return err
    for p, accepted in answer.items():
        if p not in args and "" not in accepted:
            return f"missing parameter {p!r} (the ground truth does not let it be omitted)"
    return None


def _max_matching(ok: list[list[bool]]) -> list[int | None]:
    """Kuhn's augmenting paths: match[i] = call index for expected call i (None = unmatched)."""
    n_calls = len(ok[0]) if ok else 0
    owner: list[int | None] = [None] * n_calls

    def augment(i: int, seen: set[int]) -> bool:
        for j in range(n_calls):
            if ok[i][j] and j not in seen:
                seen.add(j)
                if owner[j] is None or augment(owner[j], seen):
                    owner[j] = i
                    return True
        return False

    for i in range(len(ok)):
        augment(i, set())
    match: list[int | None] = [None] * len(ok)
    for j, i in enumerate(owner):
        if i is not None:
            match[i] = j
    return match


def check(possible_answer: list[dict[str, dict[str, list[Any]]]], tool_calls: list[dict[str, Any]] | None,
          tools: list[dict[str, Any]] | None = None) -> Verdict:
    """BFCL's AST check of `tool_calls` against `possible_answer`; the reason names the first rule broken."""
    expected = [(name, params or {}) for entry in possible_answer or [] for name, params in entry.items()]
    names = [n for n, _ in expected]
    calls = _parse_calls(tool_calls)
    schemas = _schemas(tools)
    called = [c["name"] for c in calls]

    def per_call(match: list[int | None], errors: dict[int, str]) -> list[dict[str, Any]]:
        by_call = {j: i for i, j in enumerate(match) if j is not None}
        return [{"call": j + 1, "name": c["name"], "ok": j in by_call,
                 "matches": (f"expected {by_call[j] + 1} {names[by_call[j]]!r}" if j in by_call else None),
                 "error": None if j in by_call else errors.get(j)} for j, c in enumerate(calls)]

    if not expected:
        if not calls:
            return Verdict(True, "correctly made no tool call")
        return Verdict(False, f"called {called} but no tool call was expected",
                       per_call([], {j: "no call was expected" for j in range(len(calls))}))
    if not calls:
        return Verdict(False, f"no tool call made; expected {names}", [], names)
    if len(calls) != len(expected):
        verdict_calls = [{"call": j + 1, "name": c["name"], "ok": None, "matches": None, "error": None} for j, c in enumerate(calls)]
        return Verdict(False, f"wrong number of calls: {len(calls)} made, {len(expected)} expected ({called} vs {names})",
                       verdict_calls, names)

    errs = [[call_error(c, n, a, schemas) for c in calls] for n, a in expected]
    match = _max_matching([[e is None for e in row] for row in errs])
    if all(j is not None for j in match):
        return Verdict(True, "calls match the ground truth" + (" (any order)" if len(expected) > 1 else ""), per_call(match, {}), names)

    used = {j for j in match if j is not None}
    free = [j for j in range(len(calls)) if j not in used]
    # Each unmatched call's error: against the first unmatched expected call of its name, if any.
    open_expected = [i for i, j in enumerate(match) if j is None]
    errors = {}
    for j in free:
        i = next((i for i in open_expected if _name_matches(calls[j]["name"], names[i], schemas)), open_expected[0])
        errors[j] = errs[i][j]
    i = open_expected[0]
    j = next((j for j in free if _name_matches(calls[j]["name"], names[i], schemas)), free[0])
    return Verdict(False, f"call {j + 1} {calls[j]['name']!r}: {errs[i][j]}", per_call(match, errors), names)
