"""Report statistics on small hand-made DuckDB stores whose answers can be worked out by hand."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats as sps

from harness.report.build import build_report
from harness.report.load import ReportError
from harness.testing.synthetic import SyntheticSpec, build_store, deterministic_store
from harness.store import connect, upsert


def _report(path, run_id="run-hand", **kw):
    con = connect(path, read_only=True)
    try:
        return build_report(con, run_id, **kw)
    finally:
        con.close()


def _get(report, metric, cohort):
    return next(c for c in report.comparisons if c.metric == metric and c.cohort == cohort)


def test_planted_cohort_regression_is_flagged_and_no_other_cohort(tmp_path):
    db = deterministic_store(tmp_path / "s.duckdb", failing={"sql": 20})
    r = _report(db)
    sql = _get(r, "task_completion.pass_rate", "sql")
    # Baseline passes 40/40, candidate 20/40: 20 discordant pairs, all against the candidate.
    assert sql.n_prompts == 40
    assert sql.baseline == 1.0 and sql.candidate_value == 0.5 and sql.diff == -0.5
    assert sql.test == "McNemar exact"
    assert sql.p_value == pytest.approx(2 * 0.5 ** 20, rel=1e-9)
    # Holm over the quality family: (overall + 3 cohorts) x (task_completion.pass_rate,
    # groundedness.pass_rate, groundedness.score) = 12 tests. Two p-values equal 2^-19, the rest are 1.
    assert sql.family_size == 12
    assert sql.p_adjusted == pytest.approx(12 * 2 * 0.5 ** 20, rel=1e-9)
    assert sql.verdict == "regression"
    for cohort in ("legal", "chat"):
        c = _get(r, "task_completion.pass_rate", cohort)
        assert c.diff == 0 and c.p_value == 1.0 and c.verdict == "no change"
    regressed_cohorts = {c.cohort for c in r.comparisons if c.verdict == "regression" and c.scope == "cohort"}
    assert regressed_cohorts == {"sql"}
    # task_completion.score duplicates pass/fail, so it is not tested twice.
    assert not any(c.metric == "task_completion.score" for c in r.comparisons)
    # Worst examples come from the regressed cohort only, baseline passed and candidate failed.
    assert r.worst_examples and {w.cohort for w in r.worst_examples} == {"sql"}
    assert all(w.baseline_value == 1.0 and w.candidate_value == 0.0 for w in r.worst_examples)
    assert all(w.prompt_text == f"sql question {int(w.prompt_id.split('-')[1])}" for w in r.worst_examples)
    assert all(int(w.prompt_id.split("-")[1]) < 20 for w in r.worst_examples)


def test_serving_figures_cost_and_server_side_phases(tmp_path):
    db = deterministic_store(tmp_path / "s.duckdb", slow_cohort="legal", with_server_data=True)
    r = _report(db)
    overall = {row["route"]: row for row in r.serving if row["scope"] == "overall"}
    assert overall["dense"]["cost_per_trace_usd"] == pytest.approx(2e-4)
    assert overall["moe"]["cost_per_trace_usd"] == pytest.approx(1e-4)
    assert overall["dense"]["tokens_per_trace"] == 150
    lat = np.array([0.5 + 0.001 * i for i in range(40)] * 3)
    assert overall["dense"]["latency_p99_s"] == pytest.approx(np.quantile(lat, 0.99))
    cost = _get(r, "cost_per_trace_usd", "(all)")
    assert cost.diff == pytest.approx(-1e-4) and cost.verdict == "improvement"
    # The candidate is 3x slower in legal only: p50 latency regresses there, nowhere else; p99 is
    # shown but not judged (40 prompts: fewer than 3 calls beyond it).
    slow = _get(r, "latency_p50_s", "legal")
    assert slow.diff == pytest.approx(2 * np.quantile(0.5 + 0.001 * np.arange(40), 0.5), rel=1e-6)
    assert slow.verdict == "regression"
    tail = _get(r, "latency_p99_s", "legal")
    assert tail.diff == pytest.approx(2 * np.quantile(0.5 + 0.001 * np.arange(40), 0.99), rel=1e-6)
    assert tail.verdict == "insufficient" and "too few for p99" in tail.note
    for cohort in ("sql", "chat"):
        assert _get(r, "latency_p50_s", cohort).diff == 0
        assert _get(r, "latency_p50_s", cohort).verdict != "regression"
    phases = {(p["route"], p["cohort"]): p for p in r.server_phases}
    assert phases[("moe", "(all)")]["queue_mean_s"] == pytest.approx(0.03)
    assert phases[("dense", "(all)")]["decode_mean_s"] == pytest.approx(0.3)
    pre = {m["route"]: m for m in r.server_metrics}
    assert pre["moe"]["delta"] == 5 and pre["moe"]["peak_during"] == 12 and pre["dense"]["delta"] == 0


def test_samples_are_averaged_within_prompt(tmp_path):
    """Three samples per prompt: the unit is still the prompt (n = prompts, Wilcoxon on per-prompt means)."""
    path = tmp_path / "s.duckdb"
    con = connect(path)
    upsert(con, "runs", [{"run_id": "r", "status": "completed",
                          "routes": [{"name": "b", "role": "baseline"}, {"name": "c", "role": "candidate"}]}])
    rng = np.random.default_rng(3)
    base = rng.uniform(0.4, 0.9, size=(30, 3))
    cand = base - 0.1 + rng.normal(0, 0.05, size=(30, 3))
    rows, resp = [], []
    for i in range(30):
        for s in range(3):
            for route, m in (("b", base), ("c", cand)):
                rows.append({"run_id": "r", "prompt_id": f"p{i}", "route": route, "sample": s, "evaluator": "judge",
                             "score": float(m[i, s]), "passed": None, "applicable": True})
                resp.append({"run_id": "r", "prompt_id": f"p{i}", "route": route, "sample": s, "cohort": "only",
                             "role": "baseline" if route == "b" else "candidate", "latency_s": 1.0, "ttft_s": 0.1})
    upsert(con, "scores", rows)
    upsert(con, "responses", resp)
    con.close()
    r = _report(path, run_id="r")
    c = _get(r, "judge.score", "(all)")
    assert c.n_prompts == 30
    d = cand.mean(axis=1) - base.mean(axis=1)
    assert c.diff == pytest.approx(d.mean())
    assert c.test == "Wilcoxon signed-rank"
    assert c.p_value == pytest.approx(sps.wilcoxon(d).pvalue)
    assert c.verdict == "regression"
    # One cohort only: no per-cohort duplicates of the overall row, and discovery is attempted.
    assert [x.cohort for x in r.comparisons if x.metric == "judge.score"] == ["(all)"]


def test_inconclusive_states_minimal_detectable_effect(tmp_path):
    db = deterministic_store(tmp_path / "s.duckdb", cohorts={"a": 12, "b": 12}, failing={"a": 1})
    # 12 prompts are under the default min_samples (30): insufficient, never a verdict.
    assert _get(_report(db), "task_completion.pass_rate", "a").verdict == "insufficient"
    from harness.report.policy import Policy

    r = _report(db, policy=Policy.model_validate({"min_samples": 10, "metrics": {"task_completion.pass_rate": {}}}))
    c = _get(r, "task_completion.pass_rate", "a")
    assert c.verdict == "inconclusive"
    assert c.mde > c.margin and c.prompts_needed and c.prompts_needed > 12
    assert "detectable at this size" in c.note and f"~{c.prompts_needed} prompts" in c.note


def test_discover_cohorts_on_unlabelled_prompts(tmp_path):
    db = build_store(tmp_path / "s.duckdb", SyntheticSpec(cohorts={"legal": 70, "sql": 70, "chat": 70},
                                                           pass_drop={"sql": 0.6}, label_cohorts=False, seed=1))
    r = _report(db, run_id="run-synth")
    assert r.cohorts == ["default"]
    d = r.discovery
    assert d is not None and "no cohort labels" in d.reason
    assert d.k >= 2 and str(d.k) in d.silhouette and d.silhouette[str(d.k)] == max(d.silhouette.values())
    flagged = [c for c in d.comparisons if c.verdict == "regression" and c.metric == "task_completion.pass_rate"]
    assert flagged, "the planted SQL regression should surface in a discovered cluster"
    sql_words = {"select", "table", "join", "query", "index", "column", "group", "schema", "database"}
    assert any(sql_words & set(c.cohort.split(": ")[1].split(", ")) for c in flagged)
    assert d.slices_searched > d.k and str(d.slices_searched) in d.correction
    assert all(c.family_size >= d.slices_searched for c in d.worst_slices)
    # Exploratory rows stay out of the pre-registered comparisons.
    assert all(c.scope in ("overall", "cohort") for c in r.comparisons)


def test_errors_name_the_problem(tmp_path):
    db = deterministic_store(tmp_path / "s.duckdb")
    with pytest.raises(ReportError, match="no run 'nope'"):
        _report(db, run_id="nope")
    con = connect(tmp_path / "s.duckdb")
    con.execute("UPDATE runs SET routes = '[{\"name\": \"dense\", \"role\": \"candidate\"}, {\"name\": \"moe\", \"role\": \"candidate\"}]'")
    con.execute("UPDATE responses SET role = 'candidate'")
    con.close()
    with pytest.raises(ReportError, match="exactly one baseline"):
        _report(db)


def test_json_has_no_nan(tmp_path):
    import json

    db = deterministic_store(tmp_path / "s.duckdb", failing={"sql": 5})
    text = json.dumps(_report(db).to_dict(), allow_nan=False)  # raises on NaN
    assert '"schema": "routecheck.report/v1"' in text
