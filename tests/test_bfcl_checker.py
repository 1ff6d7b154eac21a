"""evaluators/bfcl.py: BFCL's AST-checker rules on hand-written cases, one or more per rule."""

import json

from evaluators import EvalRecord, get_evaluator
from evaluators.bfcl import check, standardize_string


def tool(name, properties, required=()):
    return {"type": "function", "function": {"name": name, "parameters": {"type": "object", "properties": properties, "required": list(required)}}}


WEATHER = tool("get_weather", {"city": {"type": "string"}, "unit": {"type": "string"}, "days": {"type": "integer"}}, ["city"])
AREA = tool("calc_area", {"base": {"type": "number"}, "height": {"type": "number"}})
ROUTE = tool("plan_route", {"stops": {"type": "array", "items": {"type": "string"}}, "filters": {"type": "object"},
                            "legs": {"type": "array", "items": {"type": "object"}}}, ["stops"])
TOOLS = [WEATHER, AREA, ROUTE]

PARIS = {"get_weather": {"city": ["Paris", "Paris, France"], "unit": ["celsius", "fahrenheit", ""], "days": [3, ""]}}
ROME = {"get_weather": {"city": ["Rome"], "unit": ["celsius", ""], "days": [""]}}


def call(name, args):
    return {"id": "c", "type": "function", "function": {"name": name, "arguments": args if isinstance(args, str) else json.dumps(args)}}


def test_correct_call_passes():
    v = check([PARIS], [call("get_weather", {"city": "Paris", "unit": "celsius", "days": 3})], TOOLS)
    assert v.passed, v.reason
    assert v.calls == [{"call": 1, "name": "get_weather", "ok": True, "matches": "expected 1 'get_weather'", "error": None}]


def test_wrong_function_name_fails():
    v = check([PARIS], [call("get_forecast", {"city": "Paris"})], TOOLS)
    assert not v.passed
    assert v.reason == "call 1 'get_forecast': called 'get_forecast', expected 'get_weather'"


def test_dotted_name_may_come_back_with_underscores():
    fact = tool("math.factorial", {"number": {"type": "integer"}}, ["number"])
    assert check([{"math.factorial": {"number": [5]}}], [call("math_factorial", {"number": 5})], [fact]).passed


def test_wrong_value_fails_and_names_parameter():
    v = check([PARIS], [call("get_weather", {"city": "Paris", "unit": "kelvin"})], TOOLS)
    assert not v.passed
    assert v.reason == "call 1 'get_weather': 'unit' = 'kelvin' not in ['celsius', 'fahrenheit'] (or omitted)"


def test_missing_required_parameter_fails():
    v = check([PARIS], [call("get_weather", {"unit": "celsius"})], TOOLS)
    assert not v.passed and v.reason.endswith("missing required parameter 'city'")


def test_parameter_the_ground_truth_needs_but_schema_calls_optional():
    area = [{"calc_area": {"base": [10], "height": [5]}}]
    v = check(area, [call("calc_area", {"base": 10})], TOOLS)
    assert not v.passed and "missing parameter 'height'" in v.reason


def test_unexpected_parameter_fails():
    v = check([PARIS], [call("get_weather", {"city": "Paris", "country": "FR"})], TOOLS)
    assert not v.passed and v.reason.endswith("unexpected parameter 'country' (not in the schema)")
    # Declared by the schema but absent from the ground truth: also unexpected (BFCL).
    v2 = check([{"get_weather": {"city": ["Paris"]}}], [call("get_weather", {"city": "Paris", "days": 2})], TOOLS)
    assert not v2.passed and v2.reason.endswith("unexpected parameter 'days'")


def test_omitted_optional_parameter_passes():
    assert check([PARIS], [call("get_weather", {"city": "Paris, France"})], TOOLS).passed


def test_wrong_type_fails():
    v = check([PARIS], [call("get_weather", {"city": "Paris", "days": "3"})], TOOLS)
    assert not v.passed and v.reason.endswith("'days' = '3' is string, expected integer")
    v2 = check([PARIS], [call("get_weather", {"city": "Paris", "days": 3.0})], TOOLS)
    assert not v2.passed and "expected integer" in v2.reason


def test_no_call_when_one_expected_fails():
    v = check([PARIS], [], TOOLS)
    assert not v.passed and v.reason == "no tool call made; expected ['get_weather']"
    assert not check([PARIS], None, TOOLS).passed


def test_too_many_calls_fails():
    v = check([PARIS], [call("get_weather", {"city": "Paris"}), call("get_weather", {"city": "Paris"})], TOOLS)
    assert not v.passed and v.reason.startswith("wrong number of calls: 2 made, 1 expected")


def test_too_few_calls_fails():
    v = check([PARIS, ROME], [call("get_weather", {"city": "Rome"})], TOOLS)
    assert not v.passed and v.reason.startswith("wrong number of calls: 1 made, 2 expected")


def test_parallel_calls_in_another_order_pass():
    v = check([PARIS, ROME], [call("get_weather", {"city": "rome"}), call("get_weather", {"city": "Paris"})], TOOLS)
    assert v.passed, v.reason
    assert [c["matches"] for c in v.calls] == ["expected 2 'get_weather'", "expected 1 'get_weather'"]


def test_parallel_one_bad_call_is_named():
    v = check([PARIS, ROME], [call("get_weather", {"city": "Rome"}), call("get_weather", {"city": "Paris", "unit": "kelvin"})], TOOLS)
    assert not v.passed
    assert v.reason == "call 2 'get_weather': 'unit' = 'kelvin' not in ['celsius', 'fahrenheit'] (or omitted)"
    assert [c["ok"] for c in v.calls] == [True, False]


def test_parallel_matching_is_one_to_one_not_greedy():
    # Call 1 fits both expected calls, call 2 only the first: greedy first-fit would fail.
    loose = {"get_weather": {"city": ["Paris", "Rome"]}}
    strict = {"get_weather": {"city": ["Rome"]}}
    assert check([loose, strict], [call("get_weather", {"city": "Rome"}), call("get_weather", {"city": "Paris"})], TOOLS).passed


def test_call_when_none_expected_fails_and_no_call_passes():
    v = check([], [call("get_weather", {"city": "Paris"})], TOOLS)
    assert not v.passed and "no tool call was expected" in v.reason
    assert check([], [], TOOLS).passed


def test_int_accepted_for_number():
    assert check([{"calc_area": {"base": [10.0], "height": [5.0]}}], [call("calc_area", {"base": 10, "height": 5})], TOOLS).passed
    assert not check([{"calc_area": {"base": [10.0], "height": [5.0]}}], [call("calc_area", {"base": 10, "height": 6})], TOOLS).passed


def test_bool_is_not_a_number():
    v = check([{"calc_area": {"base": [1], "height": [1]}}], [call("calc_area", {"base": True, "height": 1})], TOOLS)
    assert not v.passed and "is boolean, expected number" in v.reason


def test_string_normalisation():
    assert standardize_string("April 1, 2024") == standardize_string("april 1 2024") == "april12024"
    assert standardize_string("New-York_City.") == "newyorkcity"
    assert standardize_string("it's") == 'it"s'
    assert check([PARIS], [call("get_weather", {"city": " paris,  FRANCE "})], TOOLS).passed
    assert not check([PARIS], [call("get_weather", {"city": "Pariss"})], TOOLS).passed


def test_list_values_element_wise_in_order():
    gt = [{"plan_route": {"stops": [["Santa Barbara", "Monterey"], ["Monterey", "Santa Barbara"]], "filters": [""], "legs": [""]}}]
    assert check(gt, [call("plan_route", {"stops": ["santa barbara", "MONTEREY"]})], TOOLS).passed
    assert check(gt, [call("plan_route", {"stops": ["Monterey", "Santa Barbara"]})], TOOLS).passed
    v = check(gt, [call("plan_route", {"stops": ["Monterey"]})], TOOLS)
    assert not v.passed and "'stops' = ['Monterey'] not in" in v.reason
    v2 = check(gt, [call("plan_route", {"stops": ["Monterey", 3]})], TOOLS)
    assert not v2.passed and "'stops'[1] = 3 is integer, expected string" in v2.reason


def test_dict_values_key_by_key():
    gt = [{"plan_route": {"stops": [["A"]], "filters": [{"department": ["Science"], "school": ["Bluebird High School", "Bluebird HS"], "year": ["", 2024]}], "legs": [""]}}]
    ok = {"stops": ["A"], "filters": {"school": "bluebird hs", "department": "science"}}
    assert check(gt, [call("plan_route", ok)], TOOLS).passed
    bad_value = {"stops": ["A"], "filters": {"department": "Maths", "school": "Bluebird HS"}}
    v = check(gt, [call("plan_route", bad_value)], TOOLS)
    assert not v.passed and v.reason.endswith("'filters'['department'] = 'Maths' not in ['Science']")
    v2 = check(gt, [call("plan_route", {"stops": ["A"], "filters": {"department": "Science"}})], TOOLS)
    assert not v2.passed and v2.reason.endswith("'filters' is missing key 'school'")
    v3 = check(gt, [call("plan_route", {"stops": ["A"], "filters": {"department": "Science", "school": "Bluebird HS", "x": 1}})], TOOLS)
    assert not v3.passed and v3.reason.endswith("'filters' has unexpected key 'x'")


def test_list_of_dicts_matched_position_by_position():
    gt = [{"plan_route": {"stops": [["A"]], "filters": [""],
                          "legs": [[{"field": ["age"], "op": [">"]}, {"field": ["job"], "op": ["="]}]]}}]
    good = {"stops": ["A"], "legs": [{"field": "age", "op": ">"}, {"field": "job", "op": "="}]}
    assert check(gt, [call("plan_route", good)], TOOLS).passed
    swapped = {"stops": ["A"], "legs": [{"field": "job", "op": "="}, {"field": "age", "op": ">"}]}
    assert not check(gt, [call("plan_route", swapped)], TOOLS).passed
    short = {"stops": ["A"], "legs": [{"field": "age", "op": ">"}]}
    v = check(gt, [call("plan_route", short)], TOOLS)
    assert not v.passed and "has 1 objects, expected 2" in v.reason


def test_ground_truth_of_another_type_than_the_schema():
    # BFCL's "variable" case: the schema says string, the ground truth accepts null (or omission).
    gt = [{"get_weather": {"city": ["Paris"], "unit": ["", None]}}]
    assert check(gt, [call("get_weather", {"city": "Paris", "unit": None})], TOOLS).passed
    assert check(gt, [call("get_weather", {"city": "Paris"})], TOOLS).passed
    assert not check(gt, [call("get_weather", {"city": "Paris", "unit": "celsius"})], TOOLS).passed


def test_arguments_not_json_fail():
    v = check([PARIS], [call("get_weather", '{"city": "Par')], TOOLS)
    assert not v.passed and "not valid JSON" in v.reason


def test_without_schema_the_ground_truth_decides():
    gt = [{"lookup": {"q": ["cats"], "limit": ["", 10]}}]
    assert check(gt, [call("lookup", {"q": "Cats"})], None).passed
    assert not check(gt, [call("lookup", {"limit": 10})], None).passed


def test_through_the_tool_selection_evaluator():
    ev = get_evaluator("tool_selection")
    recs = [
        EvalRecord(prompt_id="a", tools=TOOLS, expected={"possible_answer": [PARIS, ROME]},
                   tool_calls=[call("get_weather", {"city": "Rome"}), call("get_weather", {"city": "Paris", "unit": "fahrenheit"})]),
        EvalRecord(prompt_id="b", tools=TOOLS, expected={"possible_answer": [PARIS]},
                   tool_calls=[call("get_weather", {"city": "Paris", "unit": "kelvin"})]),
        EvalRecord(prompt_id="c", tools=TOOLS, expected={"tool": None}, text="I cannot help with that."),
    ]
    good, bad, irrelevant = ev.evaluate(recs)
    assert (good.score, good.passed, good.applicable) == (1.0, True, True)
    assert good.details["checker"] == "bfcl" and [c["ok"] for c in good.details["calls"]] == [True, True]
    assert (bad.score, bad.passed) == (0.0, False)
    assert bad.reason == "call 1 'get_weather': 'unit' = 'kelvin' not in ['celsius', 'fahrenheit'] (or omitted)"
    assert bad.details["calls"][0]["error"].startswith("'unit' = 'kelvin'")
    assert (irrelevant.score, irrelevant.passed) == (1.0, True)
