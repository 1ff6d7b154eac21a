"""tool_selection on hand-written cases with exact expected outcomes."""

import json

import pytest

from evaluators import EvalRecord, get_evaluator

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "days": {"type": "integer", "minimum": 1}},
            "required": ["city"],
            "additionalProperties": False,
        },
    },
}
TIME = {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object", "properties": {"tz": {"type": "string"}}, "required": ["tz"]}}}
TOOLS = [WEATHER, TIME]


def call(name, args, i=0):
    return {"id": f"call_{i}", "type": "function", "function": {"name": name, "arguments": args if isinstance(args, str) else json.dumps(args)}}


def score(expected, tool_calls, tools=TOOLS, text=None):
    rec = EvalRecord(prompt_id="p", tools=tools, expected=expected, tool_calls=tool_calls, text=text)
    return get_evaluator("tool_selection").evaluate([rec])[0]


def test_right_tool_and_arguments_passes():
    r = score({"tool": "get_weather", "arguments": {"city": "Paris", "days": 2}}, [call("get_weather", {"city": "Paris", "days": 2})])
    assert (r.score, r.passed, r.applicable) == (1.0, True, True)
    assert r.details["name_accuracy"] == 1.0 and r.details["argument_accuracy"] == 1.0 and r.details["schema_validity"] == 1.0


def test_no_call_when_one_expected_fails():
    r = score({"tool": "get_weather", "arguments": {"city": "Paris"}}, None, text="It is sunny in Paris.")
    assert (r.score, r.passed) == (0.0, False)
    assert "no tool call made" in r.reason
    assert r.details["name_accuracy"] == 0.0


def test_call_when_none_expected_fails():
    r = score({"tool": None}, [call("get_weather", {"city": "Paris"})])
    assert (r.score, r.passed) == (0.0, False)
    assert "no tool call was expected" in r.reason


def test_no_call_when_none_expected_passes():
    r = score({"tool_calls": []}, [], text="Hello!")
    assert (r.score, r.passed) == (1.0, True)


def test_hallucinated_tool_name_flagged():
    r = score({"tool": "get_weather", "arguments": {"city": "Paris"}}, [call("fetch_forecast", {"city": "Paris"})])
    assert r.passed is False
    assert r.details["hallucinated_tools"] == ["fetch_forecast"]
    assert r.details["name_accuracy"] == 0.0
    assert r.score == 0.0
    assert "hallucinated tool" in r.reason


def test_arguments_normalised_types_whitespace_key_order():
    args = '{"days": "2",   "city": "  paris "}'
    r = score({"tool": "get_weather", "arguments": {"city": "Paris", "days": 2}}, [call("get_weather", args)])
    assert r.details["argument_accuracy"] == 1.0
    # "2" is a string where the schema wants an integer: the arguments agree but are schema-invalid.
    assert r.details["schema_validity"] == 0.0
    assert r.passed is False
    assert r.score == pytest.approx(0.5)


def test_wrong_argument_value_partial_credit():
    r = score({"tool": "get_weather", "arguments": {"city": "Paris", "days": 2}}, [call("get_weather", {"city": "Lyon", "days": 2})])
    assert r.details["argument_accuracy"] == pytest.approx(0.5)
    assert r.details["schema_validity"] == 1.0
    assert r.score == pytest.approx(0.75)
    assert r.passed is False


def test_schema_invalid_arguments():
    r = score({"tool": "get_weather"}, [call("get_weather", {"city": "Paris", "days": 0, "units": "C"})])
    assert r.details["argument_accuracy"] is None  # no expected arguments given
    assert r.details["schema_validity"] == 0.0
    assert r.details["schema_errors"] and r.details["schema_errors"][0].startswith("get_weather:")
    assert (r.score, r.passed) == (0.0, False)


def test_arguments_not_json():
    r = score({"tool": "get_weather", "arguments": {"city": "Paris"}}, [call("get_weather", '{"city": "Par')])
    assert r.details["schema_validity"] == 0.0
    assert r.details["argument_accuracy"] == 0.0
    assert "not valid JSON" in r.details["schema_errors"][0]


def test_parallel_calls_order_insensitive():
    expected = {"tool": ["get_weather", "get_time"], "arguments": [{"city": "Paris"}, {"tz": "Europe/Paris"}]}
    r = score(expected, [call("get_time", {"tz": "Europe/Paris"}, 0), call("get_weather", {"city": "Paris"}, 1)])
    assert (r.score, r.passed) == (1.0, True)


def test_parallel_same_tool_matched_by_arguments():
    expected = {"tool_calls": [{"name": "get_weather", "arguments": {"city": "Paris"}}, {"name": "get_weather", "arguments": {"city": "Rome"}}]}
    r = score(expected, [call("get_weather", {"city": "Rome"}, 0), call("get_weather", {"city": "Paris"}, 1)])
    assert (r.score, r.passed) == (1.0, True)


def test_missing_one_of_two_parallel_calls():
    expected = {"tool": ["get_weather", "get_time"]}
    r = score(expected, [call("get_weather", {"city": "Paris"})])
    assert r.details["name_accuracy"] == 0.5
    assert r.passed is False


def test_not_applicable_without_tools_or_expectation():
    r = score({"answer": "4"}, None, tools=None, text="4")
    assert (r.applicable, r.score, r.passed) == (False, None, None)
    r2 = score(None, None, tools=TOOLS, text="hi")
    assert r2.applicable is False and "no expected tool call" in r2.reason
