"""llm_judge against the real stub OpenAI server on 127.0.0.1, and the score parser."""

import pytest
from conftest import write_routes

from evaluators import EvalRecord, get_evaluator
from evaluators.judge_client import parse_score


@pytest.mark.parametrize(
    "reply,value,scale",
    [
        ('{"reasoning": "fine", "score": 4}', 4.0, None),
        ('```json\n{"score": 3, "reasoning": "meh"}\n```', 3.0, None),
        ("The answer is correct.\nScore: 4/5", 4.0, 5.0),
        ("Scale is 1-5. Final score: 2 out of 5", 2.0, 5.0),
        ("8/10", 8.0, 10.0),
        ("reasoning...\n5\n", 5.0, None),
        ("**Score**: 4.5", 4.5, None),
    ],
)
def test_parse_score(reply, value, scale):
    parsed = parse_score(reply)
    assert (parsed.value, parsed.scale_max) == (value, scale)


def test_parse_score_none():
    parsed = parse_score("I cannot judge this.")
    assert parsed.value is None and parsed.error


def records():
    texts = ["Paris", "Lyon", "Mars", "nothing", "Tokyo"]
    return [EvalRecord(prompt_id=t, messages=[{"role": "user", "content": "Capital of France?"}], text=t) for t in texts] + [EvalRecord(prompt_id="empty", text="")]


def test_llm_judge_on_stub_server(stub_server, tmp_path):
    stub = stub_server(
        answers={
            "Response:\nParis": '{"reasoning": "Correct capital.", "score": 5}',
            "Response:\nLyon": "Lyon is a French city but not the capital. Score: 2/5",
            "Response:\nMars": "Score: 9/5",
            "Response:\nnothing": "I refuse to grade.",
            "Response:\nTokyo": "Completely wrong. 2/10",
        }
    )
    routes = write_routes(tmp_path / "routes.yaml", [{"name": "judge", "role": "baseline", "model": "stub", "base_url": stub.base_url}])
    res = get_evaluator("llm_judge", {"route": "judge", "routes": str(routes)}).evaluate(records())
    paris, lyon, mars, nothing, tokyo, empty = res
    assert (paris.score, paris.passed) == (1.0, True)
    assert paris.details["reasoning"] == "Correct capital."
    assert (lyon.score, lyon.passed) == (0.25, False)
    assert "not the capital" in lyon.details["reasoning"]
    assert (mars.applicable, mars.score) == (False, None)
    assert "outside the scale" in mars.reason
    assert nothing.applicable is False and "unparsed" in nothing.reason
    assert nothing.details["raw_reply"] == "I refuse to grade."
    assert tokyo.score == pytest.approx(0.2)  # 2 on the judge's own 0..10 scale
    assert empty.applicable is False


def test_llm_judge_failed_call_not_applicable(stub_server):
    stub = stub_server(fail_on={"Paris": 400})
    res = get_evaluator("llm_judge", {"base_url": stub.base_url, "model": "stub"}).evaluate(records()[:1])
    assert res[0].applicable is False and "judge call failed" in res[0].reason


def test_groundedness_llm_backend_on_stub(stub_server):
    stub = stub_server(answer="1: SUPPORTED\n2: CONTRADICTED")
    rec = EvalRecord(context="The Eiffel Tower is in Paris.", text="The tower is in Paris. It is in Rome.")
    g = get_evaluator("groundedness", {"backend": "llm", "base_url": stub.base_url, "model": "stub"}).evaluate([rec])[0]
    assert g.score == 0.5 and g.passed is False
    h = get_evaluator("hallucination", {"backend": "llm", "base_url": stub.base_url, "model": "stub"}).evaluate([rec])[0]
    assert h.details["contradicted"] == ["It is in Rome."]


def test_bad_options_fail_before_scoring(tmp_path):
    from evaluators import EvaluatorError

    routes = write_routes(tmp_path / "routes.yaml", [{"name": "judge", "role": "baseline", "model": "m", "base_url": "http://127.0.0.1:9/v1"}])
    with pytest.raises(EvaluatorError, match="no route named 'nope'"):
        get_evaluator("llm_judge", {"route": "nope", "routes": str(routes)})
    with pytest.raises(EvaluatorError, match="give 'route'"):
        get_evaluator("llm_judge")
    with pytest.raises(EvaluatorError, match="do not apply to backend 'lexical'"):
        get_evaluator("groundedness", {"model_dir": "x"})
    with pytest.raises(EvaluatorError, match="is not a directory"):
        get_evaluator("hallucination", {"backend": "nli", "model_dir": str(tmp_path / "missing")})
    with pytest.raises(EvaluatorError, match="bad options"):
        get_evaluator("groundedness", {"treshold": 0.5})
