"""Agent trajectories mirrored through stub routes that answer with scripted tool calls per step:
one finishes in three steps, one loops until max_steps, one calls an unscripted tool, one makes a
wrong first call and recovers. Checks the stored steps, the spans, summed tokens and cost."""

from __future__ import annotations

import json
import math
from pathlib import Path

import duckdb
import pandas as pd
import pytest

from agent_scenarios import ACCOUNT, GOOD_ANSWER, INVOICE, SCRIPTS, row
from conftest import write_corpus, write_routes
from harness.config import load_routes
from harness.corpus import PromptRecord
from harness.mirror.runner import MirrorOptions, run_mirror
from harness.mirror.trajectory import scripted_result
from harness.report.build import make_report

PRICES = {"baseline": (1.0, 3.0), "candidate": (2.0, 5.0)}  # USD per million input / output tokens
CASES = {"t-three": ("three", 3, "answer"), "t-loop": ("loop", 4, "max_steps"),
         "t-unscripted": ("unscripted", 2, "unscripted_tool"), "t-recover": ("recover", 4, "answer")}


def _mirror(tmp_path, stub_server, scripts_base=SCRIPTS, scripts_cand=SCRIPTS, rows=None):
    a = stub_server(scripted_tool_calls=scripts_base)
    b = stub_server(scripted_tool_calls=scripts_cand)
    routes = write_routes(tmp_path / "routes.yaml", [
        {"name": "base", "role": "baseline", "model": "dense", "base_url": a.base_url,
         "prices": {"input_per_mtok": PRICES["baseline"][0], "output_per_mtok": PRICES["baseline"][1]}},
        {"name": "cand", "role": "candidate", "model": "moe", "base_url": b.base_url, "architecture": "moe", "num_experts": 8, "active_experts": 2,
         "prices": {"input_per_mtok": PRICES["candidate"][0], "output_per_mtok": PRICES["candidate"][1]}},
    ])
    rows = rows or [row(pid, key) for pid, (key, _, _) in CASES.items()]
    corpus = write_corpus(tmp_path / "agent.jsonl", rows)
    db = tmp_path / "store.duckdb"
    summary = run_mirror(load_routes(routes), MirrorOptions(corpus=corpus, db=db, warmup=0))  # exact row counts: no warm-up calls
    assert summary.status == "completed"
    return db, summary


def _words(text):
    return len((text or "").split())


def _pieces(arguments: str) -> int:
    """The stub streams each call's arguments in 8-character pieces, one token each."""
    return math.ceil(max(len(arguments), 1) / 8)


def test_trajectories_stored_traced_and_summed(tmp_path, stub_server):
    db, summary = _mirror(tmp_path, stub_server)
    assert summary.per_route["base"].done == 4 and summary.per_route["base"].requests == 13
    con = duckdb.connect(str(db), read_only=True)
    resp = con.execute("SELECT * FROM responses ORDER BY route, prompt_id").df()
    steps = con.execute("SELECT * FROM steps ORDER BY route, prompt_id, step").df()
    assert len(resp) == 8 and resp["error_type"].isna().all()
    for r in resp.itertuples():
        key, n_steps, stop = CASES[r.prompt_id]
        assert (r.steps, r.stop_reason) == (n_steps, stop), r.prompt_id
        mine = steps[(steps.route == r.route) & (steps.prompt_id == r.prompt_id)]
        assert list(mine.step) == list(range(1, n_steps + 1))
        # the response row is the whole trajectory: tokens and latency summed over the steps
        assert r.input_tokens == mine.input_tokens.sum() and r.output_tokens == mine.output_tokens.sum()
        assert r.total_tokens == mine.total_tokens.sum()
        assert r.latency_s == pytest.approx(mine.latency_s.sum())
        assert r.ttft_s == pytest.approx(mine.ttft_s.iloc[0])
        assert r.text == (GOOD_ANSWER if stop == "answer" else "")

    # The stub's token rule, step by step: input = words of every message so far, output = call pieces or words.
    three = steps[(steps.route == "base") & (steps.prompt_id == "t-three")]
    user = row("t-three", "three")["prompt"]
    tool_words = [sum(_words(t["content"]) for t in json.loads(s)) for s in three.tool_results]
    assert list(three.input_tokens) == [_words(user), _words(user) + tool_words[0], _words(user) + tool_words[0] + tool_words[1]]
    calls = [json.loads(c) for c in three.tool_calls]
    assert [c[0]["function"]["name"] for c in calls[:2]] == ["lookup_account", "get_invoice"] and calls[2] == []
    assert list(three.output_tokens) == [_pieces(calls[0][0]["function"]["arguments"]),
                                         _pieces(calls[1][0]["function"]["arguments"]), _words(GOOD_ANSWER)]
    # scripted results answer each call, with the call's id
    results = [json.loads(t) for t in three.tool_results]
    assert [(r[0]["tool_call_id"], json.loads(r[0]["content"]), r[0]["scripted"]) for r in results[:2]] == [
        (calls[0][0]["id"], ACCOUNT, True), (calls[1][0]["id"], INVOICE, True)]
    assert results[2] == [] and list(three.finish_reason) == ["tool_calls", "tool_calls", "stop"]

    # the recovering agent: its wrong first call got the script's default, then it went the right way
    rec = steps[(steps.route == "base") & (steps.prompt_id == "t-recover")]
    first = json.loads(rec.tool_results.iloc[0])[0]
    assert json.loads(first["content"]) == {"error": "no such account"} and first["scripted"]
    # the unscripted call is recorded, with no result, and the loop stopped there
    last = json.loads(steps[(steps.route == "base") & (steps.prompt_id == "t-unscripted")].tool_results.iloc[-1])[0]
    assert (last["name"], last["content"], last["scripted"]) == ("refund_invoice", None, False)
    loop = steps[(steps.route == "base") & (steps.prompt_id == "t-loop")]
    assert all(json.loads(c)[0]["function"]["name"] == "lookup_account" for c in loop.tool_calls)

    # Spans: mirror group -> one trajectory span per route -> one call span per step, one trace per group.
    spans = con.execute("SELECT * FROM spans").df()
    groups = spans[spans.name == "mirror"].set_index("span_id")
    trajs = spans[spans.name == "trajectory"].set_index("span_id")
    calls_sp = spans[spans.kind == "CLIENT"]
    assert len(groups) == 4 and len(trajs) == 8 and len(calls_sp) == 26
    assert trajs.parent_span_id.isin(groups.index).all()
    assert calls_sp.parent_span_id.isin(trajs.index).all()
    assert (trajs.loc[calls_sp.parent_span_id, "trace_id"].values == calls_sp.trace_id.values).all()
    # responses point at their trajectory span, steps at their call spans
    assert set(zip(resp.trace_id, resp.span_id)) == {(t, s) for s, t in trajs.trace_id.items()}
    assert set(zip(steps.trace_id, steps.span_id)) == set(zip(calls_sp.trace_id, calls_sp.span_id))
    for sid, t in trajs.iterrows():
        attrs = json.loads(t.attributes)
        r = resp[resp.span_id == sid].iloc[0]
        assert (attrs["routecheck.steps"], attrs["routecheck.stop_reason"]) == (r.steps, r.stop_reason)
        assert attrs["routecheck.trajectory.input_tokens"] == r.input_tokens
        assert pd.isna(t.input_tokens)  # no gen_ai.usage on it: span sums count steps once
        kids = calls_sp[calls_sp.parent_span_id == sid]
        assert sorted(json.loads(a)["routecheck.step"] for a in kids.attributes) == list(range(1, r.steps + 1))
        assert kids.input_tokens.sum() == r.input_tokens
    prompts = con.execute("SELECT prompt_id, tool_results, max_steps FROM prompts").df()
    assert set(prompts.max_steps) == {4}
    assert json.loads(prompts.tool_results.iloc[0])["get_invoice"][0] == {"match": {"account_id": "A-1"}, "result": INVOICE}
    con.close()

    # Cost per trace = the steps' tokens at the route's prices, summed over steps (report serving table).
    report = make_report(db, "latest")
    for route, (p_in, p_out) in (("base", PRICES["baseline"]), ("cand", PRICES["candidate"])):
        mine = steps[steps.route == route]
        per_trace = (mine.input_tokens * p_in + mine.output_tokens * p_out).groupby(mine.prompt_id).sum() / 1e6
        overall = next(s for s in report.serving if s["route"] == route and s["scope"] == "overall")
        assert overall["cost_per_trace_usd"] == pytest.approx(per_trace.mean())


def test_script_lookup_rules():
    rules = PromptRecord.model_validate({"id": "x", "prompt": "p", "tool_results": {
        "get_invoice": [{"match": {"account_id": "A-\\d+", "year": 2024}, "result": "found"}, {"result": "default"}],
        "ping": "pong", "*": {"error": "unknown tool"}}}).tool_results
    assert scripted_result(rules, "get_invoice", '{"account_id": "A-12", "year": 2024.0}') == (True, "found")
    assert scripted_result(rules, "get_invoice", '{"account_id": "A-12x", "year": 2024}') == (True, "default")  # fullmatch
    assert scripted_result(rules, "get_invoice", "not json") == (True, "default")
    assert scripted_result(rules, "ping", "{}") == (True, "pong")
    assert scripted_result(rules, "other", "{}") == (True, {"error": "unknown tool"})
    strict = PromptRecord.model_validate({"id": "x", "prompt": "p", "tool_results": {
        "get_invoice": [{"match": {"account_id": "A-1"}, "result": "ok"}]}}).tool_results
    assert scripted_result(strict, "get_invoice", '{"account_id": "B-2"}') == (False, None)
    assert scripted_result(strict, "lookup", "{}") == (False, None)


# (step_accuracy, first_wrong_step (step, score), step_count, task_completion passed) per scenario;
# the expected trajectory is look-up, invoice, answer: 2 tool steps, 3 model calls.
METRICS = {
    "t-three": (1.0, (None, 1.0), 1.0, True),
    "t-loop": (1 / 4, (2, 1 / 3), 3 / 4, False),
    "t-unscripted": (1 / 2, (2, 1 / 3), 2 / 3, False),
    "t-recover": (2 / 3, (1, 0.0), 3 / 4, True),
    "t-early": (1 / 2, (2, 1 / 3), 2 / 3, False),
}


def test_trajectory_metrics(tmp_path, stub_server):
    from harness.score import score_run

    rows = [row(pid, key) for pid, (key, _, _) in CASES.items()] + [row("t-early", "early")]
    db, _ = _mirror(tmp_path, stub_server, rows=rows)
    score_run(db, "latest", progress=False)  # the defaults include the trajectory evaluators
    con = duckdb.connect(str(db), read_only=True)
    scores = con.execute("SELECT * FROM scores WHERE route = 'base'").df()
    con.close()
    by = {(r.prompt_id, r.evaluator): r for r in scores.itertuples()}
    for pid, (acc, (wrong, wrong_score), count, done) in METRICS.items():
        sa, fw, sc, tc = (by[(pid, e)] for e in ("step_accuracy", "first_wrong_step", "step_count", "task_completion"))
        assert sa.score == pytest.approx(acc) and sa.passed == (acc == 1.0), (pid, sa.reason)
        assert json.loads(fw.details)["first_wrong_step"] == wrong and fw.score == pytest.approx(wrong_score), (pid, fw.reason)
        assert sc.score == pytest.approx(count) and sc.passed == (count == 1.0), (pid, sc.reason)
        assert tc.passed == done, (pid, tc.reason)
    # what the reasons and details say
    loop = json.loads(by[("t-loop", "step_count")].details)
    assert (loop["steps_taken"], loop["repeated_call_steps"], loop["stop_reason"]) == (4, 3, "max_steps")
    assert "loop" in loop["verdict"]
    assert json.loads(by[("t-early", "step_count")].details)["verdict"] == "too few steps (early stop)"
    assert "without a final answer (unscripted_tool)" in by[("t-unscripted", "task_completion")].reason
    recover = json.loads(by[("t-recover", "step_accuracy")].details)["steps"]
    assert [s["ok"] for s in recover] == [False, True, True]
    assert recover[0]["reason"].startswith("expected step 1 ['lookup_account']: ") and "get_invoice" in recover[0]["reason"]
    assert "wrong" not in by[("t-three", "first_wrong_step")].reason
    assert by[("t-unscripted", "first_wrong_step")].reason.startswith("first wrong step 2 of 3: step 2:")
    # the final answer is grounded in the scripted results the agent was sent; the early one is not
    assert by[("t-three", "groundedness")].passed and by[("t-recover", "groundedness")].passed
    assert not by[("t-early", "hallucination")].passed
    assert not by[("t-loop", "groundedness")].applicable
    # the single-call tool_selection stays out of trajectories (no expected.tool)
    assert not scores[scores.evaluator == "tool_selection"].applicable.any()


def test_bundled_agent_corpus_is_generated_and_valid(tmp_path):
    """examples/agent_corpus.jsonl is what testbed.agent_corpus writes, and every row is an agent row
    whose right calls get the scripted account and invoice."""
    from harness.corpus import read_corpus
    from testbed.agent_corpus import write_agent_corpus

    path = tmp_path / "agent.jsonl"
    assert write_agent_corpus(path) == 40
    bundled = Path(__file__).resolve().parents[1] / "examples/agent_corpus.jsonl"
    assert path.read_text() == bundled.read_text()
    for rec in read_corpus(bundled):
        assert rec.is_trajectory and len(rec.expected.steps) == 2
        email, account = rec.metadata["email"], rec.metadata["account_id"]
        found, acc = scripted_result(rec.tool_results, "lookup_account", json.dumps({"email": email.upper()}))
        assert found and acc["account_id"] == account
        found, inv = scripted_result(rec.tool_results, "get_invoice", json.dumps({"account_id": account}))
        assert found and inv[{"amount_due": "amount_due", "due_date": "due_date"}[rec.cohort]] == rec.expected.answer
        assert scripted_result(rec.tool_results, "get_invoice", '{"account_id": "ACC-0"}')[1] == {"error": "no such account id"}
        assert scripted_result(rec.tool_results, "track_order", "{}") == (False, None)


def test_a_failed_step_ends_the_trajectory_as_an_error(tmp_path, stub_server):
    """The stub fails any request holding "explode": only the second step does (the scripted look-up
    result carries it), so the trajectory stops there with the error on its step and its row."""
    a = stub_server(scripted_tool_calls=SCRIPTS, fail_on={"explode": 400})
    routes = write_routes(tmp_path / "routes.yaml", [
        {"name": "base", "role": "baseline", "model": "d", "base_url": a.base_url, "max_retries": 0},
        {"name": "cand", "role": "candidate", "model": "m", "base_url": a.base_url, "max_retries": 0}])
    r = row("t-err", "three")
    r["tool_results"] = {**r["tool_results"], "lookup_account": [{"result": {"account_id": "A-1", "note": "explode"}}]}
    db = tmp_path / "store.duckdb"
    run_mirror(load_routes(routes), MirrorOptions(corpus=write_corpus(tmp_path / "c.jsonl", [r]), db=db, warmup=0))
    con = duckdb.connect(str(db), read_only=True)
    resp = con.execute("SELECT steps, stop_reason, error_type FROM responses").fetchall()
    steps = con.execute("SELECT step, error_type FROM steps WHERE route = 'base' ORDER BY step").fetchall()
    status = con.execute("SELECT status_code FROM spans WHERE name = 'trajectory'").fetchall()
    con.close()
    assert resp == [(2, "error", "http_400")] * 2
    assert steps == [(1, None), (2, "http_400")]
    assert status == [("ERROR",)] * 2


def test_the_hand_converted_bfcl_trajectory_in_the_docs():
    """docs/evaluators.md's simple_python_0 trajectory row loads and scores as the docs say."""
    from evaluators import EvalRecord, get_evaluator

    doc = (Path(__file__).resolve().parents[1] / "docs/evaluators.md").read_text()
    start = doc.index('{"id": "simple_python_0-agent"')
    rec_row = PromptRecord.model_validate(json.loads(doc[start:doc.index("```", start)]))
    expected = rec_row.store_row("x")["expected"]
    names = ("step_accuracy", "first_wrong_step", "step_count", "task_completion", "groundedness", "hallucination")

    def scored(args):
        found, result = scripted_result(rec_row.tool_results, "calculate_triangle_area", json.dumps(args))
        steps = [{"step": 1, "tool_calls": [{"function": {"name": "calculate_triangle_area", "arguments": json.dumps(args)}}],
                  "tool_results": [{"scripted": found, "content": json.dumps(result)}]}, {"step": 2, "tool_calls": []}]
        rec = EvalRecord(messages=[m.model_dump() for m in rec_row.messages], tools=rec_row.tools, expected=expected,
                         text="The area is 25.", steps=steps, stop_reason="answer")
        return {n: get_evaluator(n).evaluate([rec])[0].passed for n in names}

    assert all(scored({"base": 10, "height": 5}).values())
    assert scored({"base": 10, "height": 5, "unit": "cm"}) == {**dict.fromkeys(names, True), "step_accuracy": False,
                                                               "first_wrong_step": False}
    assert not scored({"base": 0, "height": 5})["groundedness"]
