"""task_completion: each match mode and JSON-schema validity, with exact outcomes."""

import pytest

from evaluators import EvalRecord, EvaluatorError, get_evaluator


def run(expected, text, **options):
    return get_evaluator("task_completion", options).evaluate([EvalRecord(expected=expected, text=text)])[0]


@pytest.mark.parametrize(
    "expected,text,score,passed",
    [
        ({"answer": "Paris", "match": "exact"}, "Paris", 1.0, True),
        ({"answer": "Paris", "match": "exact"}, "paris.", 0.0, False),
        ({"answer": "Paris"}, "  the PARIS! ", 1.0, True),  # default: normalized
        ({"answer": "Paris"}, "It is Paris", 0.0, False),
        ({"answer": "Paris", "match": "contains"}, "It is Paris, of course.", 1.0, True),
        ({"answer": r"\b\d{4}-\d{2}-\d{2}\b", "match": "regex"}, "Due 2024-05-01.", 1.0, True),
        ({"answer": r"^\d+$", "match": "regex"}, "42 apples", 0.0, False),
        ({"answer": ["NYC", "New York City"]}, "new york city", 1.0, True),
    ],
)
def test_match_modes(expected, text, score, passed):
    r = run(expected, text)
    assert (r.score, r.passed, r.applicable) == (score, passed, True)


def test_token_f1_partial():
    r = run({"answer": "the quick brown fox", "match": "token_f1"}, "quick brown dog")
    # normalised tokens: [quick, brown, fox] vs [quick, brown, dog]: P = R = 2/3
    assert r.score == pytest.approx(2 / 3)
    assert r.passed is True  # default f1_threshold 0.5
    assert run({"answer": "quick brown fox", "match": "token_f1"}, "slow dog").passed is False


def test_config_match_is_default_and_row_overrides():
    assert run({"answer": "Paris"}, "It is Paris", match="contains").passed is True
    assert run({"answer": "Paris", "match": "exact"}, "It is Paris", match="contains").passed is False


SCHEMA = {"type": "object", "properties": {"name": {"type": "string"}, "age": {"type": "integer"}}, "required": ["name", "age"]}


def test_json_schema_valid_in_fence():
    r = run({"json_schema": SCHEMA}, 'Here:\n```json\n{"name": "Ada", "age": 36}\n```')
    assert (r.score, r.passed) == (1.0, True)


def test_json_schema_invalid_type():
    r = run({"json_schema": SCHEMA}, '{"name": "Ada", "age": "36"}')
    assert (r.score, r.passed) == (0.0, False)
    assert r.details["json_error"].startswith("age:")


def test_json_not_json():
    r = run({"json_schema": SCHEMA}, "name: Ada")
    assert (r.score, r.passed) == (0.0, False)
    assert "not JSON" in r.details["json_error"]


def test_answer_and_schema_both_count():
    r = run({"answer": "ada", "match": "contains", "json_schema": SCHEMA}, '{"name": "Ada", "age": "x"}')
    assert r.score == 0.5 and r.passed is False


def test_not_applicable_and_empty():
    assert run({"tool": "x"}, "hello").applicable is False
    assert run(None, "hello").applicable is False
    r = run({"answer": "Paris"}, "")
    assert (r.score, r.passed, r.applicable) == (0.0, False, True)


def test_bad_match_option():
    with pytest.raises(ValueError):
        run({"answer": "x"}, "x", match="fuzzy")
    with pytest.raises(EvaluatorError):
        get_evaluator("task_completion", {"matchh": "exact"})
