"""Serving verdicts that hold up (issue 19), on the real testbed (vLLM CPU):

- A/A: the dense checkpoint served twice (examples/routes-aa.yaml), two runs on one pair of
  servers: no regression and no improvement at alpha 0.05, quality and serving alike, and the
  report says it is an A/A run.
- Replication: dense vs MoE (routes.yaml), two runs on one pair of servers: every serving verdict
  flagged in either run has the same sign in the other or is inconclusive there; quality verdicts
  are identical.

A per-cohort subset of the bundled corpus (PER_COHORT prompts of each cohort, shuffled per run)
keeps the cost down. Slow: two server start-ups (~95 s each) and four runs of 150 prompts x 2
routes (~30 s each): about 5-6 minutes on the 2-core machine.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from harness.config import load_routes
from harness.mirror.runner import MirrorOptions, run_mirrors
from harness.report.build import make_report
from harness.report.replicate import FLAGS, compare_reports, counts, replicates, table
from harness.score.run import score_run
from test_vllm_e2e import CORPUS, REPO, ROUTES, _model_processes, _testbed_missing

pytestmark = [pytest.mark.slow, pytest.mark.vllm,
              pytest.mark.skipif(_testbed_missing() is not None, reason=str(_testbed_missing()))]

PER_COHORT = 30
AA_ROUTES = REPO / "examples" / "routes-aa.yaml"


def _subset(path: Path) -> Path:
    taken: dict[str, int] = {}
    with open(CORPUS) as src, open(path, "w") as out:
        for line in src:
            cohort = json.loads(line).get("cohort")
            if taken.get(cohort, 0) < PER_COHORT:
                taken[cohort] = taken.get(cohort, 0) + 1
                out.write(line)
    return path


def _two_runs(tmp: Path, routes: Path) -> tuple[Path, list[dict]]:
    db = tmp / "store.duckdb"
    summaries = run_mirrors(load_routes(routes), MirrorOptions(corpus=_subset(tmp / "corpus.jsonl"), db=db), repeat=2)
    assert [s.status for s in summaries] == ["completed", "completed"]
    assert all(s.prompts == 5 * PER_COHORT for s in summaries)
    assert not _model_processes(), "vLLM processes left after the runs"
    reports = []
    for s in summaries:
        score_run(db, s.run_id, progress=False)
        reports.append(make_report(db, s.run_id).to_dict())
    return db, reports


def _flagged(report: dict) -> list[tuple]:
    return [(c["kind"], c["cohort"], c["metric"], c["verdict"], c["diff"], c["p_adjusted"])
            for c in report["comparisons"] if c["verdict"] in FLAGS]


def test_aa_twice_raises_nothing(tmp_path_factory) -> None:
    db, reports = _two_runs(tmp_path_factory.mktemp("aa"), AA_ROUTES)
    for r in reports:
        print(f"\nA/A run {r['run_id']}: flagged {_flagged(r)}; warnings {r['warnings']}")
    for r in reports:
        assert r["settings"]["aa_candidates"] == ["dense-b"]
        assert any(n.startswith("A/A run: dense-b") for n in r["notes"])
        assert any("time order" in n for n in r["notes"])
        assert {c["kind"] for c in r["comparisons"]} == {"quality", "serving"}
        assert [f for f in _flagged(r) if f[0] == "quality"] == [], _flagged(r)
    # A flagged serving cell must come with the report's own explanation: the two servers' timings
    # differed (unequal CPU on a shared machine). Anything else is a false alarm of the method.
    unexplained = [(r["run_id"], _flagged(r)) for r in reports if _flagged(r) and not _machine_warning(r)]
    assert unexplained == []
    if any(_flagged(r) for r in reports):
        pytest.xfail("A/A serving cells flagged, each run with the server-timing warning: the two servers did not "
                     f"get equal CPU on this machine ({[len(_flagged(r)) for r in reports]} cells per run)")


def _machine_warning(report: dict) -> bool:
    return any("server-side" in w and "time differs" in w for w in report["warnings"])


def test_dense_vs_moe_replicates(tmp_path_factory) -> None:
    db, (a, b) = _two_runs(tmp_path_factory.mktemp("replication"), ROUTES)
    cells = compare_reports(a, b)
    print("\n" + table(cells, only_flagged=True))
    print(json.dumps(counts(cells)))
    assert a["settings"]["aa_candidates"] == []
    assert len(cells) == len(a["comparisons"]) > 0
    assert replicates(cells), table(cells, only_flagged=True)
