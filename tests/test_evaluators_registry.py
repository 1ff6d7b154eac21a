"""The evaluator registry: decorator on functions and classes, options, config files, entry points."""

import textwrap

import pytest

import evaluators.registry as base
from evaluators import EvalRecord, EvalResult, EvaluatorError, evaluator, get_evaluator, load_evaluator_config, parse_cli_spec, registered, resolve_specs


@pytest.fixture
def clean_registry():
    saved = dict(base._REGISTRY)
    loaded = base._ENTRY_POINTS_LOADED
    yield
    base._REGISTRY.clear()
    base._REGISTRY.update(saved)
    base._ENTRY_POINTS_LOADED = loaded


def test_builtins_registered():
    names = set(registered())
    assert {"groundedness", "hallucination", "tool_selection", "task_completion", "llm_judge"} <= names
    assert registered()["groundedness"].version == "1"


def test_function_evaluator_with_options(clean_registry):
    @evaluator("shouting", version="3")
    def shouting(records, min_ratio: float = 0.5):
        out = []
        for r in records:
            if not r.text:
                out.append(EvalResult.not_applicable("no text"))
                continue
            ratio = sum(c.isupper() for c in r.text) / len(r.text)
            out.append(EvalResult(score=ratio, passed=ratio >= min_ratio, reason=f"{ratio:.0%} upper case"))
        return out

    ev = get_evaluator("shouting", {"min_ratio": 0.9}, alias="shout90")
    assert (ev.name, ev.evaluator, ev.version) == ("shout90", "shouting", "3")
    res = ev.evaluate([EvalRecord(text="AB"), EvalRecord(text="Ab"), EvalRecord(text=None)])
    assert [(r.score, r.passed) for r in res] == [(1.0, True), (0.5, False), (None, None)]
    with pytest.raises(EvaluatorError, match="unknown option"):
        get_evaluator("shouting", {"min_ration": 1})


def test_class_evaluator(clean_registry):
    @evaluator("length_cap")
    class LengthCap:
        def __init__(self, max_chars: int = 10):
            self.max_chars = max_chars

        def evaluate(self, records):
            return [EvalResult(score=float(len(r.text) <= self.max_chars), passed=len(r.text) <= self.max_chars) for r in records]

    res = get_evaluator("length_cap", {"max_chars": 3}).evaluate([EvalRecord(text="abc"), EvalRecord(text="abcd")])
    assert [r.passed for r in res] == [True, False]
    with pytest.raises(EvaluatorError, match="bad options"):
        get_evaluator("length_cap", {"nope": 1})


def test_result_count_and_score_range_checked(clean_registry):
    @evaluator("broken")
    def broken(records):
        return []

    with pytest.raises(RuntimeError, match="returned 0 results for 1"):
        get_evaluator("broken").evaluate([EvalRecord()])
    with pytest.raises(ValueError):
        EvalResult(score=1.5, passed=True)


def test_unknown_evaluator_lists_known():
    with pytest.raises(EvaluatorError, match="known: .*groundedness"):
        get_evaluator("nonexistent")


def test_entry_point_plugin(tmp_path, monkeypatch, clean_registry):
    (tmp_path / "rc_plugin_demo.py").write_text(
        textwrap.dedent(
            """
            from evaluators import EvalResult, evaluator

            @evaluator("polite", version="2")
            def polite(records):
                return [EvalResult(score=float("please" in (r.text or "")), passed="please" in (r.text or "")) for r in records]

            def bare(records):  # registered under the entry point's name
                return [EvalResult(score=1.0, passed=True) for r in records]
            """
        )
    )
    dist = tmp_path / "rc_plugin_demo-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: rc-plugin-demo\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[routecheck.evaluators]\npolite = rc_plugin_demo:polite\nalways = rc_plugin_demo:bare\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    base._ENTRY_POINTS_LOADED = False
    names = registered()
    assert names["polite"].version == "2"
    assert names["always"].version == "0"
    res = get_evaluator("polite").evaluate([EvalRecord(text="please help"), EvalRecord(text="help")])
    assert [r.passed for r in res] == [True, False]
    assert get_evaluator("always").evaluate([EvalRecord()])[0].score == 1.0


def test_yaml_config_and_cli_specs(tmp_path):
    cfg = tmp_path / "evaluators.yaml"
    cfg.write_text(
        textwrap.dedent(
            """
            evaluators:
              - groundedness
              - name: task_completion
                as: tc_f1
                options: {match: token_f1, f1_threshold: 0.6}
            """
        )
    )
    specs = load_evaluator_config(cfg)
    assert [(s.name, s.alias, s.options) for s in specs] == [("groundedness", None, {}), ("task_completion", "tc_f1", {"match": "token_f1", "f1_threshold": 0.6})]
    assert specs[1].bind().name == "tc_f1"
    spec = parse_cli_spec("task_completion:match=contains,f1_threshold=0.7")
    assert (spec.name, spec.options) == ("task_completion", {"match": "contains", "f1_threshold": 0.7})
    merged = resolve_specs(["groundedness:threshold=0.5"], cfg)
    assert [(s.name, s.options) for s in merged] == [("task_completion", {"match": "token_f1", "f1_threshold": 0.6}), ("groundedness", {"threshold": 0.5})]
    assert [s.name for s in resolve_specs(None, None)] == ["groundedness", "hallucination", "tool_selection", "task_completion",
                                                       "step_accuracy", "first_wrong_step", "step_count"]


def test_bad_config_errors_name_file_and_entry(tmp_path):
    cfg = tmp_path / "e.yaml"
    cfg.write_text("evaluators:\n  - name: groundedness\n    optons: {}\n")
    with pytest.raises(EvaluatorError, match=r"e.yaml: evaluators\[0\]\.optons: unknown key"):
        load_evaluator_config(cfg)
    cfg.write_text("evaluators: [\n")
    with pytest.raises(EvaluatorError, match="not valid YAML"):
        load_evaluator_config(cfg)
    with pytest.raises(EvaluatorError, match="key=value"):
        parse_cli_spec("groundedness:threshold")
