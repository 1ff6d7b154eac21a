"""score_run / score_command on a real DuckDB file filled through harness.store."""

import json
from datetime import datetime, timedelta, timezone

import pytest
import typer
from typer.testing import CliRunner

from harness.cli.score import score_command
from harness.score import score_run
from harness import store

CTX = "The Eiffel Tower is in Paris. It was completed in 1889."
WEATHER = {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}


def fill(db, run_id="run-a", started=None):
    con = store.connect(db)
    store.upsert(con, "runs", [{"run_id": run_id, "started_at": started or datetime.now(timezone.utc), "status": "completed"}])
    store.upsert(
        con,
        "prompts",
        [
            {"run_id": run_id, "prompt_id": "q1", "cohort": "rag", "messages": [{"role": "user", "content": "Where is the Eiffel Tower?"}], "context": CTX, "expected": {"answer": "Paris"}},
            {"run_id": run_id, "prompt_id": "t1", "cohort": "tools", "messages": [{"role": "user", "content": "Weather in Paris?"}], "tools": [WEATHER], "expected": {"tool": "get_weather", "arguments": {"city": "Paris"}}},
        ],
    )
    call = [{"id": "c0", "type": "function", "function": {"name": "get_weather", "arguments": json.dumps({"city": "Paris"})}}]
    store.upsert(
        con,
        "responses",
        [
            {"run_id": run_id, "prompt_id": "q1", "route": "dense", "sample": 0, "cohort": "rag", "text": "Paris"},
            {"run_id": run_id, "prompt_id": "q1", "route": "moe", "sample": 0, "cohort": "rag", "text": "Lyon"},
            {"run_id": run_id, "prompt_id": "t1", "route": "dense", "sample": 0, "cohort": "tools", "text": None, "tool_calls": call},
            {"run_id": run_id, "prompt_id": "t1", "route": "moe", "sample": 0, "cohort": "tools", "error_type": "timeout", "error_message": "read timed out"},
        ],
    )
    con.close()


def scores(db, run_id="run-a"):
    con = store.connect(db, read_only=True)
    df = con.execute("SELECT * FROM scores WHERE run_id = ? ORDER BY prompt_id, route, evaluator", [run_id]).df()
    con.close()
    return df


def test_score_run_writes_every_response_and_is_idempotent(tmp_path):
    db = tmp_path / "rc.duckdb"
    fill(db)
    evs = ["groundedness", "tool_selection", "task_completion"]
    summary = score_run(db, "run-a", evs)
    assert summary.n_responses == 4 and summary.rows_written == 12
    df = scores(db)
    assert len(df) == 12
    row = lambda p, r, e: df[(df.prompt_id == p) & (df.route == r) & (df.evaluator == e)].iloc[0]  # noqa: E731

    assert row("q1", "dense", "task_completion").passed == True  # noqa: E712
    assert row("q1", "moe", "task_completion").score == 0.0
    assert row("q1", "dense", "groundedness").passed == True  # noqa: E712
    assert row("q1", "moe", "groundedness").passed == False  # noqa: E712
    assert json.loads(row("q1", "moe", "groundedness").details)["unsupported"] == ["Lyon"]
    assert row("t1", "dense", "tool_selection").score == 1.0
    assert row("t1", "dense", "groundedness").applicable == False  # noqa: E712  (no context)
    failed = row("t1", "moe", "tool_selection")
    assert (failed.applicable, failed.reason) == (False, "call failed")
    assert pd_isna(failed.score) and pd_isna(failed.passed)
    assert json.loads(failed.details)["error"] == "timeout: read timed out"
    assert set(df.evaluator_version) == {"1"}
    assert summary.per_evaluator["tool_selection"]["dense"] == {"n": 2, "applicable": 1, "mean_score": 1.0, "pass_rate": 1.0}

    first_scored = df.scored_at.max()
    score_run(db, "run-a", evs)
    again = scores(db)
    assert len(again) == 12
    assert again.scored_at.min() >= first_scored
    assert list(again.score.fillna(-1)) == list(df.score.fillna(-1))


def pd_isna(v):
    import pandas as pd

    return pd.isna(v)


def test_latest_and_unknown_run(tmp_path):
    db = tmp_path / "rc.duckdb"
    fill(db, "old-run", started=datetime.now(timezone.utc) - timedelta(hours=1))
    fill(db, "new-run")
    summary = score_run(db, "latest", ["task_completion"])
    assert summary.run_id == "new-run"
    assert len(scores(db, "new-run")) == 4 and len(scores(db, "old-run")) == 0
    with pytest.raises(LookupError, match="no run 'nope'"):
        score_run(db, "nope", ["task_completion"])


def test_score_command_cli(tmp_path):
    db = tmp_path / "rc.duckdb"
    fill(db)
    cfg = tmp_path / "evaluators.yaml"
    cfg.write_text("evaluators:\n  - name: task_completion\n    as: tc_contains\n    options: {match: contains}\n")
    app = typer.Typer()
    app.command("score")(score_command)
    app.command("other")(lambda: None)  # two commands, so `score` is a sub-command as in routecheck
    runner = CliRunner()
    result = runner.invoke(app, ["score", "latest", "--db", str(db), "--config", str(cfg), "-e", "tool_selection"])
    assert result.exit_code == 0, result.output
    assert "tc_contains" in result.output and "tool_selection" in result.output
    assert set(scores(db).evaluator) == {"tc_contains", "tool_selection"}

    bad = runner.invoke(app, ["score", "latest", "--db", str(db), "-e", "no_such_evaluator"])
    assert bad.exit_code == 2
    assert "unknown evaluator 'no_such_evaluator'" in bad.output
    missing = runner.invoke(app, ["score", "latest", "--db", str(tmp_path / "none.duckdb")])
    assert missing.exit_code == 2 and "no routecheck store" in missing.output


def test_mirror_then_score_every_response(tmp_path, stub_server):
    """The whole path: the runner mirrors a corpus to two stub routes, then scoring fills `scores`."""
    from conftest import write_corpus, write_routes
    from harness.config import load_routes
    from harness.mirror.runner import MirrorOptions, run_mirror

    good = stub_server(answers={"Eiffel": "Paris"}, tool_arguments={"city": "Paris"})
    bad = stub_server(answers={"Eiffel": "Lyon"}, fail_on={"broken": 400})
    routes = write_routes(tmp_path / "routes.yaml", [
        {"name": "dense", "role": "baseline", "model": "d", "base_url": good.base_url, "max_retries": 0},
        {"name": "moe", "role": "candidate", "model": "m", "base_url": bad.base_url, "max_retries": 0,
         "architecture": "moe", "num_experts": 8, "active_experts": 2},
    ])
    corpus = write_corpus(tmp_path / "corpus.jsonl", [
        {"id": "rag", "cohort": "rag", "prompt": "Where is the Eiffel Tower?", "context": CTX, "expected": {"answer": "Paris"}},
        {"id": "tool", "cohort": "tools", "prompt": "Weather in Paris?", "tools": [WEATHER],
         "expected": {"tool": "get_weather", "arguments": {"city": "Paris"}}},
        {"id": "err", "cohort": "rag", "prompt": "This one is broken: where is the Eiffel Tower?", "context": CTX},
    ])
    db = tmp_path / "store.duckdb"
    run_mirror(load_routes(routes), MirrorOptions(corpus=corpus, db=db))
    summary = score_run(db, "latest", None)
    from evaluators.config import DEFAULT_EVALUATORS

    assert summary.n_responses == 6 and summary.rows_written == 6 * len(DEFAULT_EVALUATORS)

    df = scores(db, summary.run_id).set_index(["prompt_id", "route", "evaluator"])
    assert df.loc[("rag", "dense", "groundedness")].passed == True  # noqa: E712
    assert df.loc[("rag", "moe", "groundedness")].passed == False  # noqa: E712
    assert df.loc[("rag", "dense", "task_completion")].score == 1.0
    assert df.loc[("rag", "moe", "task_completion")].score == 0.0
    assert df.loc[("tool", "dense", "tool_selection")].passed == True  # noqa: E712
    moe_tool = df.loc[("tool", "moe", "tool_selection")]
    assert (moe_tool.score, moe_tool.passed) == (0.0, False) and "no tool call made" in moe_tool.reason
    assert df.loc[("err", "moe", "hallucination")].reason == "call failed"
    assert df.loc[("err", "dense", "hallucination")].applicable == True  # noqa: E712


def test_summary_names_evaluators_that_applied_to_nothing():
    """The trajectory evaluators on a single-call run: listed on one line, not as empty table rows."""
    from io import StringIO

    from rich.console import Console

    from harness.cli.score import print_summary
    from harness.score.run import ScoreSummary

    row = {"applicable": 3, "n": 4, "mean_score": 0.5, "pass_rate": 0.25}
    idle = {"applicable": 0, "n": 4, "mean_score": None, "pass_rate": None}
    buf = StringIO()
    print_summary(ScoreSummary("r1", 4, 8, {"groundedness": {"a": row}, "step_count": {"a": idle}}),
                  Console(file=buf, width=200))
    text = buf.getvalue()
    assert "groundedness" in text and "3/4" in text
    assert "not applicable to any response of this run: step_count" in text
