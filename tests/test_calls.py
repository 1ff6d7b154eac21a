"""Single-call behaviour against the stub: retries, Retry-After, errors, timeouts, tool calls, usage fallback."""

import json
import time

import duckdb

from conftest import write_corpus, write_routes
from harness.config import load_routes
from harness.mirror.runner import MirrorOptions, run_mirror

TOOLS = [{"type": "function", "function": {"name": "track_order", "parameters": {
    "type": "object", "properties": {"order_id": {"type": "string"}}, "required": ["order_id"]}}}]


def _run(tmp_path, base_url, rows, **route):
    routes = write_routes(tmp_path / "routes.yaml", [{"name": "only", "role": "baseline", "model": "m", "base_url": base_url, **route}])
    corpus = write_corpus(tmp_path / "c.jsonl", rows)
    db = tmp_path / "s.duckdb"
    summary = run_mirror(load_routes(routes), MirrorOptions(corpus=corpus, db=db, warmup=0))  # one call per prompt, counted exactly
    con = duckdb.connect(str(db), read_only=True)
    return summary, con


def test_429_with_retry_after_is_retried(tmp_path, stub_server):
    s = stub_server(fail_first=2, fail_status=429, retry_after_s=0.3)
    t0 = time.monotonic()
    _, con = _run(tmp_path, s.base_url, [{"id": "p", "prompt": "hello there"}], max_concurrency=1)
    row = con.execute("SELECT attempts, error_type, http_status, text FROM responses").fetchone()
    assert row == (3, None, 200, "Echo: hello there")
    assert time.monotonic() - t0 >= 0.6  # waited Retry-After twice


def test_5xx_exhausts_retry_budget_and_marks_span_error(tmp_path, stub_server):
    s = stub_server(fail_on={"boom": 503})
    _, con = _run(tmp_path, s.base_url, [{"id": "ok", "prompt": "fine"}, {"id": "bad", "prompt": "boom"}], max_retries=2)
    rows = dict(con.execute("SELECT prompt_id, (attempts, error_type, http_status) FROM responses").fetchall())
    assert rows["ok"] == (1, None, 200)
    assert rows["bad"] == (3, "http_503", 503)
    span = con.execute("SELECT status_code, error_type, attributes FROM spans WHERE prompt_id = 'bad' AND kind = 'CLIENT'").fetchone()
    assert span[:2] == ("ERROR", "http_503")
    assert json.loads(span[2])["routecheck.attempts"] == 3


def test_connection_refused_is_an_error_row_not_a_crash(tmp_path):
    _, con = _run(tmp_path, "http://127.0.0.1:9/v1", [{"id": "p", "prompt": "x"}], max_retries=1)
    assert con.execute("SELECT attempts, error_type FROM responses").fetchone() == (2, "ConnectError")


def test_timeout(tmp_path, stub_server):
    s = stub_server(ttft_s=2.0)
    _, con = _run(tmp_path, s.base_url, [{"id": "p", "prompt": "x"}], timeout_s=0.3)
    assert con.execute("SELECT error_type, timed_out FROM responses").fetchone() == ("timeout", True)


def test_streamed_tool_call_is_assembled(tmp_path, stub_server):
    s = stub_server(tool_arguments={"order_id": "A-48213", "verbose": True})
    _, con = _run(tmp_path, s.base_url, [{"id": "p", "cohort": "orders", "prompt": "where is A-48213", "tools": TOOLS}])
    text, calls, finish = con.execute("SELECT text, tool_calls, finish_reason FROM responses").fetchone()
    calls = json.loads(calls)
    assert text == "" and finish == "tool_calls"
    assert [c["function"]["name"] for c in calls] == ["track_order"]
    assert json.loads(calls[0]["function"]["arguments"]) == {"order_id": "A-48213", "verbose": True}
    assert calls[0]["id"] == "call_0"


def test_usage_is_counted_when_server_sends_none(tmp_path, stub_server):
    s = stub_server(include_usage=False, answer="one two three")
    _, con = _run(tmp_path, s.base_url, [{"id": "p", "prompt": "a b c d"}])
    assert con.execute("SELECT input_tokens, output_tokens, usage_source FROM responses").fetchone() == (4, 3, "counted")


def test_global_rate_limit_spaces_requests(tmp_path, stub_server):
    s = stub_server()
    routes = write_routes(tmp_path / "routes.yaml", [{"name": "only", "role": "baseline", "model": "m", "base_url": s.base_url}])
    corpus = write_corpus(tmp_path / "c.jsonl", [{"id": f"p{i}", "prompt": "x"} for i in range(6)])
    t0 = time.monotonic()
    run_mirror(load_routes(routes), MirrorOptions(corpus=corpus, db=tmp_path / "s.duckdb", rate=10))
    assert time.monotonic() - t0 >= 0.5  # 6 starts at 10/s span at least 0.5 s
