"""The routecheck command line on a real store: runs, runs --detail, sql, and exit codes."""

from typer.testing import CliRunner

from conftest import write_corpus, write_routes
from harness.cli import app

runner = CliRunner()


def test_mirror_runs_detail_and_sql(tmp_path, stub_server):
    s = stub_server(answer="fine thanks")
    routes = write_routes(tmp_path / "routes.yaml", [
        {"name": "base", "role": "baseline", "model": "a", "base_url": s.base_url},
        {"name": "cand", "role": "candidate", "model": "b", "base_url": s.base_url, "architecture": "moe",
         "num_experts": 8, "active_experts": 2},
    ])
    corpus = write_corpus(tmp_path / "c.jsonl", [{"id": f"p{i}", "cohort": "c", "prompt": "hi"} for i in range(7)])
    db = str(tmp_path / "s.duckdb")
    out = runner.invoke(app, ["mirror", "-c", str(corpus), "-r", str(routes), "--db", db, "--no-progress"])
    assert out.exit_code == 0, out.output
    assert "completed, 7 prompts, 14 calls" in out.output
    run_id = out.output.split("run ")[1].split(":")[0]

    out = runner.invoke(app, ["runs", "--db", db])
    assert out.exit_code == 0 and run_id in out.output and "completed" in out.output

    out = runner.invoke(app, ["runs", "--db", db, "--detail", "latest"])
    assert out.exit_code == 0 and "cand" in out.output and "server metrics" in out.output

    out = runner.invoke(app, ["sql", "--db", db, "select route, sum(output_tokens) as t from measured_responses group by 1 order by 1"])
    assert out.exit_code == 0
    assert [line.split("│")[1:3] for line in out.output.splitlines() if "│ base" in line or "│ cand" in line] == \
        [[" base  ", " 14 "], [" cand  ", " 14 "]]


def test_exit_code_2_on_bad_input(tmp_path):
    out = runner.invoke(app, ["mirror", "-c", str(tmp_path / "none.jsonl"), "-r", str(tmp_path / "none.yaml"), "--db", str(tmp_path / "x.duckdb")])
    assert out.exit_code == 2 and "cannot read routes file" in out.output
    out = runner.invoke(app, ["runs", "--db", str(tmp_path / "missing.duckdb")])
    assert out.exit_code == 2 and "no routecheck store here" in out.output
