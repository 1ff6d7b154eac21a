"""The testbed does what it is for: the whole bundled corpus on both real vLLM routes.

Issue 4: on that run the report flags a quality regression in the planted cohort and in no other
cohort. Issue 3: the planted regression is real (MoE at least 20 points below dense in that
cohort), and every other cohort of both models reaches 80 % (testbed/MODEL_CARD.md has the table).
Slow: two vLLM CPU servers start (about 95 s), then 650 prompts x 2 routes (about 2 minutes).
"""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from harness.cli import app
from harness.config import load_routes
from harness.mirror.runner import MirrorOptions, run_mirror
from harness.score.run import score_run
from testbed.build import PLANTED_COHORT
from testbed.measure import accuracy_table, load_results
from test_vllm_e2e import CORPUS, ROUTES, _model_processes, _testbed_missing

pytestmark = [pytest.mark.slow, pytest.mark.vllm,
              pytest.mark.skipif(_testbed_missing() is not None, reason=str(_testbed_missing()))]


@pytest.fixture(scope="module")
def testbed_run(tmp_path_factory) -> tuple:
    db = tmp_path_factory.mktemp("testbed-run") / "store.duckdb"
    summary = run_mirror(load_routes(ROUTES), MirrorOptions(corpus=CORPUS, db=db))
    assert summary.status == "completed" and summary.prompts == 650
    assert not _model_processes(), "vLLM processes left after the run"
    score_run(db, summary.run_id, progress=False)  # the default evaluators, as `routecheck score` runs them
    return db, summary.run_id


def test_planted_gap_and_the_80_percent_targets(testbed_run) -> None:
    db, run_id = testbed_run
    _, df = load_results(db, run_id)
    table = accuracy_table(df)
    print(table.to_string())
    dense, moe = table["dense-baseline"], table["moe-candidate"]
    assert len([c for c in table.index if c != "all"]) == 5
    assert dense[PLANTED_COHORT] - moe[PLANTED_COHORT] >= 20, table.to_string()
    met = [(route, cohort) for route in ("dense-baseline", "moe-candidate") for cohort in table.index
           if cohort != "all" and (route, cohort) != ("moe-candidate", PLANTED_COHORT)]
    assert all(table[route][cohort] >= 80 for route, cohort in met), table.to_string()


def test_report_flags_the_planted_cohort_only(testbed_run, tmp_path) -> None:
    db, run_id = testbed_run
    res = CliRunner().invoke(app, ["report", run_id, "--db", str(db), "--out-dir", str(tmp_path), "--quiet"])
    assert res.exit_code == 0, res.output
    report = json.loads((tmp_path / "report.json").read_text())
    flagged = {(c["cohort"], c["metric"]) for c in report["comparisons"]
               if c["verdict"] == "regression" and c["scope"] == "cohort" and c["kind"] == "quality"}
    assert {cohort for cohort, _ in flagged} == {PLANTED_COHORT}, sorted(flagged)
    assert (PLANTED_COHORT, "task_completion.pass_rate") in flagged
