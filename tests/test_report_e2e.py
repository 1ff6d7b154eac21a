"""End to end through real parts: stub servers on 127.0.0.1 -> mirror -> score -> report -> gate.

The candidate's stub answers wrongly in one cohort (the planted regression, like the testbed's);
the report must flag that cohort and no other, and the gate must fail on it.
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET

from typer.testing import CliRunner

from conftest import write_corpus, write_routes
from harness.score import score_run
from harness.cli import app
from harness.config import load_routes
from harness.mirror.runner import MirrorOptions, run_mirror

COHORTS = ["billing", "legal", "multilingual"]


def test_stub_run_flags_the_planted_cohort_only(tmp_path, stub_server):
    dense = stub_server(answer="The answer is 42.")
    moe = stub_server(answer="The answer is 42.", answers={"[multilingual]": "La respuesta es cuarenta y dos."})
    routes = write_routes(tmp_path / "routes.yaml", [
        {"name": "dense", "role": "baseline", "model": "dense", "base_url": dense.base_url,
         "prices": {"input_per_mtok": 1.0, "output_per_mtok": 2.0}},
        {"name": "moe", "role": "candidate", "model": "moe", "base_url": moe.base_url, "architecture": "moe",
         "num_experts": 8, "active_experts": 2, "prices": {"input_per_mtok": 0.4, "output_per_mtok": 0.8}},
    ])
    corpus = write_corpus(tmp_path / "corpus.jsonl", [
        {"id": f"p{i:03d}", "cohort": COHORTS[i % 3], "prompt": f"[{COHORTS[i % 3]}] question {i}: what is six times seven?",
         "expected": {"answer": "42"}}
        for i in range(120)
    ])
    db = tmp_path / "store.duckdb"
    summary = run_mirror(load_routes(routes), MirrorOptions(corpus=corpus, db=db))
    assert summary.status == "completed"
    score_run(db, summary.run_id, ["task_completion:match=contains"])

    runner = CliRunner()
    out = tmp_path / "report"
    res = runner.invoke(app, ["report", "latest", "--db", str(db), "--out-dir", str(out)])
    assert res.exit_code == 0, res.output
    report = json.loads((out / "report.json").read_text())
    flagged = {(c["cohort"], c["metric"]) for c in report["comparisons"]
               if c["verdict"] == "regression" and c["scope"] == "cohort" and c["kind"] == "quality"}
    assert flagged == {("multilingual", "task_completion.pass_rate")}
    ml = next(c for c in report["comparisons"] if c["cohort"] == "multilingual" and c["metric"] == "task_completion.pass_rate")
    assert (ml["baseline"], ml["candidate_value"], ml["n_prompts"]) == (1.0, 0.0, 40)
    assert {w["cohort"] for w in report["worst_examples"]} == {"multilingual"}
    assert "La respuesta" in report["worst_examples"][0]["candidate_text"]
    assert (out / "report.html").exists() and "report.html" in res.output

    policy = tmp_path / "gate.yaml"
    policy.write_text("min_samples: 20\nmetrics:\n  task_completion.pass_rate: {margin: 0.05}\n")
    res = runner.invoke(app, ["gate", "latest", "--db", str(db), "--policy", str(policy), "--out-dir", str(out)])
    assert res.exit_code == 1, res.output
    cases = ET.parse(out / "gate.junit.xml").getroot().iter("testcase")
    assert {c.get("name") for c in cases if c.find("failure") is not None} == {
        "multilingual :: task_completion.pass_rate", "(all) :: task_completion.pass_rate"}
