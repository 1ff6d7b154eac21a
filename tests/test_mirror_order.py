"""Sending order (--order, --seed) and warm-up calls (--warmup): recorded in the run, warm-up stored
but left out of every figure. Real stub servers, real DuckDB files; ~10 s."""

from __future__ import annotations

import json

import duckdb
import pytest
from typer.testing import CliRunner

from conftest import write_corpus, write_routes
from harness.cli import app
from harness.config import load_routes
from harness.corpus import read_corpus
from harness.mirror.order import ordered
from harness.mirror.runner import MirrorOptions, run_mirror
from harness.report.build import make_report
from harness.store import views

COHORTS = ["billing", "legal", "sql", "multilingual"]


def _corpus(tmp_path, n=40):
    # Sorted by cohort, as the bundled corpus is: file order gives each cohort its own time window.
    rows = [{"id": f"{c}-{i}", "cohort": c, "prompt": f"q {c} {i}"} for c in COHORTS for i in range(n // len(COHORTS))]
    return write_corpus(tmp_path / "c.jsonl", rows)


def _routes(tmp_path, url):
    # One slot per route: groups go one at a time, so the store's start times give the sending order.
    return load_routes(write_routes(tmp_path / "routes.yaml", [
        {"name": "base", "role": "baseline", "model": "a", "base_url": url, "max_concurrency": 1},
        {"name": "cand", "role": "candidate", "model": "b", "base_url": url, "max_concurrency": 1},
    ]))


def _sent_order(db, run_id, route="base"):
    con = duckdb.connect(str(db), read_only=True)
    try:
        return [r[0] for r in con.execute(
            f"SELECT prompt_id FROM {views.MEASURED_RESPONSES} WHERE run_id = ? AND route = ? ORDER BY started_at",
            [run_id, route]).fetchall()]
    finally:
        con.close()


def test_ordered_is_a_seeded_permutation_and_interleave_takes_cohorts_in_turn(tmp_path):
    records = list(read_corpus(_corpus(tmp_path, 12)))
    ids = [r.id for r in records]
    a = [r.id for r in ordered(records, "shuffle", 3)]
    assert sorted(a) == sorted(ids) and a != ids
    assert a == [r.id for r in ordered(records, "shuffle", 3)]
    assert a != [r.id for r in ordered(records, "shuffle", 4)]
    assert [r.id for r in ordered(iter(records), "file", None)] == ids
    inter = [r.cohort for r in ordered(records, "interleave-cohorts", None)]
    assert inter == COHORTS * 3
    with pytest.raises(ValueError, match="unknown order"):
        list(ordered(records, "random", 0))


def test_shuffled_by_default_with_seed_recorded_and_warmup_left_out(tmp_path, stub_server):
    stub = stub_server()
    corpus = _corpus(tmp_path)
    routes = _routes(tmp_path, stub.base_url)
    db = tmp_path / "s.duckdb"
    summary = run_mirror(routes, MirrorOptions(corpus=corpus, db=db, seed=11))
    assert summary.status == "completed" and summary.prompts == 40 and summary.calls == 80
    assert summary.per_route["base"].done == 40  # warm-up calls are not counted as progress

    expected = [r.id for r in ordered(read_corpus(corpus), "shuffle", 11)]
    assert _sent_order(db, summary.run_id, "base") == expected == _sent_order(db, summary.run_id, "cand")

    con = duckdb.connect(str(db), read_only=True)
    options = json.loads(con.execute("SELECT options FROM runs").fetchone()[0])
    assert (options["order"], options["seed"], options["warmup"]) == ("shuffle", 11, 2)
    warm = con.execute("SELECT route, prompt_id, sample, started_at FROM responses WHERE warmup ORDER BY ALL").fetchall()
    # Two warm-up calls per route, on the first prompts of the order, with negative samples.
    assert sorted((r[0], r[1], r[2]) for r in warm) == sorted(
        (route, expected[i], -1 - i) for route in ("base", "cand") for i in range(2))
    first_measured = con.execute("SELECT min(started_at) FROM responses WHERE NOT warmup").fetchone()[0]
    assert max(r[3] for r in warm) < first_measured
    assert con.execute("SELECT count(*) FROM responses").fetchone()[0] == 84
    assert con.execute("SELECT count(*) FROM measured_responses").fetchone()[0] == 80
    # Warm-up spans are marked too.
    marked = con.execute("SELECT count(*) FROM spans WHERE name = 'mirror' AND attributes->>'routecheck.warmup' = 'true'").fetchone()[0]
    assert marked == 2
    summary_rows = views.route_summary(con, summary.run_id)
    con.close()
    assert list(summary_rows["calls"]) == [40, 40]

    # The report sees only measured calls.
    report = make_report(db, summary.run_id)
    assert {c.n_prompts for c in report.comparisons if c.scope == "overall"} == {40}
    assert {s["responses"] for s in report.serving if s["scope"] == "overall"} == {40}


def test_cli_order_file_and_fresh_seed(tmp_path, stub_server):
    stub = stub_server()
    corpus = _corpus(tmp_path, 8)
    routes = tmp_path / "routes.yaml"
    _routes(tmp_path, stub.base_url)
    db = tmp_path / "s.duckdb"
    runner = CliRunner()
    out = runner.invoke(app, ["mirror", "-c", str(corpus), "-r", str(routes), "--db", str(db), "--no-progress",
                              "--order", "file", "--warmup", "0"])
    assert out.exit_code == 0, out.output
    file_run = out.output.split("run ")[1].split(":")[0]
    assert _sent_order(db, file_run) == [r.id for r in read_corpus(corpus)]
    out = runner.invoke(app, ["mirror", "-c", str(corpus), "-r", str(routes), "--db", str(db), "--no-progress"])
    assert out.exit_code == 0, out.output
    shuffled = out.output.split("run ")[1].split(":")[0]
    con = duckdb.connect(str(db), read_only=True)
    options = json.loads(con.execute("SELECT options FROM runs WHERE run_id = ?", [shuffled]).fetchone()[0])
    warm = con.execute("SELECT count(*) FROM responses WHERE warmup AND run_id = ?", [shuffled]).fetchone()[0]
    con.close()
    assert options["order"] == "shuffle" and isinstance(options["seed"], int) and warm == 4
    assert _sent_order(db, shuffled) == [r.id for r in ordered(read_corpus(corpus), "shuffle", options["seed"])]
    bad = runner.invoke(app, ["mirror", "-c", str(corpus), "-r", str(routes), "--db", str(db), "--order", "random"])
    assert bad.exit_code == 2
