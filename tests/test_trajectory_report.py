"""The report on a trajectory run shows per-cohort step accuracy and cost per trace, and the gate
fails a regression planted in one cohort's step accuracy and in no other cohort."""

from __future__ import annotations

import json
from pathlib import Path

import duckdb
import jsonschema
import pytest

from agent_scenarios import SCRIPTS, row
from conftest import write_corpus, write_routes
from harness.config import load_routes
from harness.gate import run_gate
from harness.mirror.runner import MirrorOptions, run_mirror
from harness.report.build import make_report
from harness.report.render.text import to_markdown
from harness.score import score_run

COHORTS = ("billing", "refunds", "accounts")
BAD = "refunds"  # the candidate's planted regression: a wrong first call in every trajectory here
N = 30  # at the default min_samples, so per-cohort verdicts are judged, not "insufficient"


def _scripts(candidate: bool) -> dict:
    out = {}
    for cohort in COHORTS:
        for i in range(N):
            key = f"{cohort}-{i}"
            if cohort == BAD:
                out[key] = SCRIPTS["recover" if candidate else "three"]
            elif i == 0:  # noise in the other cohorts, one prompt each way
                out[key] = SCRIPTS["recover" if candidate else "three"]
            elif i == 1:
                out[key] = SCRIPTS["three" if candidate else "recover"]
            else:
                out[key] = SCRIPTS["three"]
    return out


def test_report_and_gate_on_a_trajectory_run(tmp_path, stub_server):
    base, cand = stub_server(scripted_tool_calls=_scripts(False)), stub_server(scripted_tool_calls=_scripts(True))
    routes = write_routes(tmp_path / "routes.yaml", [
        {"name": "dense", "role": "baseline", "model": "d", "base_url": base.base_url, "prices": {"input_per_mtok": 1.0, "output_per_mtok": 4.0}},
        {"name": "moe", "role": "candidate", "model": "m", "base_url": cand.base_url, "architecture": "moe", "num_experts": 8,
         "active_experts": 2, "prices": {"input_per_mtok": 0.5, "output_per_mtok": 2.0}},
    ])
    corpus = write_corpus(tmp_path / "agent.jsonl", [row(f"{c}-{i}", f"{c}-{i}", cohort=c) for c in COHORTS for i in range(N)])
    db = tmp_path / "store.duckdb"
    run_mirror(load_routes(routes), MirrorOptions(corpus=corpus, db=db, warmup=0))  # exact row counts: no warm-up calls
    score_run(db, "latest", progress=False)

    report = make_report(db, "latest")
    # Per cohort: step accuracy (all right = 1, the recovering agent 2/3) and cost per trace.
    panel = {(t["route"], t["cohort"]): t for t in report.trajectories}
    assert panel[("moe", BAD)]["step_accuracy"] == pytest.approx(2 / 3)
    assert panel[("dense", BAD)]["step_accuracy"] == pytest.approx(1.0)
    assert panel[("moe", "billing")]["step_accuracy"] == pytest.approx(1 - 1 / (3 * N))
    assert panel[("moe", BAD)]["steps_mean"] == 4 and panel[("dense", BAD)]["steps_mean"] == 3
    con = duckdb.connect(str(db), read_only=True)
    cost = con.execute("""
        SELECT route, cohort, avg(c) FROM (
            SELECT s.route, r.cohort, s.prompt_id,
                   sum(s.input_tokens * CASE s.route WHEN 'dense' THEN 1.0 ELSE 0.5 END
                       + s.output_tokens * CASE s.route WHEN 'dense' THEN 4.0 ELSE 2.0 END) / 1e6 AS c
            FROM steps s JOIN responses r USING (run_id, prompt_id, route, sample) GROUP BY ALL)
        GROUP BY ALL""").fetchall()
    con.close()
    for route, cohort, usd in cost:
        assert panel[(route, cohort)]["cost_per_trace_usd"] == pytest.approx(usd)
    assert panel[("moe", BAD)]["cost_per_trace_usd"] > panel[("moe", "billing")]["cost_per_trace_usd"]  # one more step

    by = {(c.metric, c.cohort): c for c in report.comparisons}
    assert by[("step_accuracy.score", BAD)].verdict == "regression"
    assert by[("step_accuracy.score", BAD)].diff == pytest.approx(-1 / 3)
    for cohort in COHORTS:
        assert (f"cost_per_trace_usd", cohort) in by  # priced routes: cost per trace compared per cohort
        if cohort != BAD:
            assert by[("step_accuracy.score", cohort)].verdict != "regression"
    schema = json.loads((Path(__file__).resolve().parents[1] / "harness/report/report.schema.json").read_text())
    jsonschema.validate(json.loads(json.dumps(report.to_dict())), schema)  # the JSON output carries the panel
    md = to_markdown(report)
    assert "## Agent trajectories" in md
    bad_row = next(line for line in md.splitlines() if line.startswith(f"| moe | {BAD} |"))
    assert "0.667" in bad_row and f"{panel[('moe', BAD)]['cost_per_trace_usd']:.3g}" in bad_row

    policy = tmp_path / "gate.yaml"
    policy.write_text("version: 1\nalpha: 0.05\nmin_samples: 10\nmetrics:\n  step_accuracy.score: {margin: 0.05}\n")
    result, _ = run_gate(db, "latest", policy)
    assert result.exit_code == 1
    status = {c.cohort: c.status for c in result.checks if c.metric == "step_accuracy.score"}  # error and timeout rates are gated too
    assert status[BAD] == "regression"
    assert all(status[c] == "pass" for c in COHORTS if c != BAD), status
    # pooled over the cohorts the drop is 1/9 > the margin: the overall check fails with it
    assert status["(all)"] == "regression"
