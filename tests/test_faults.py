"""Every server fault in harness/testing/faults.py, against a healthy route beside it, through the real CLI.

One `routecheck mirror` run sends one prompt per fault (plus clean prompts) to two routes: `healthy`
(a stub that ignores fault markers) and `faulty` (a stub that honours them). Each fault then has
its own test on that store: both routes have exactly one row for its prompt, the healthy row is
the normal answer, the faulty row has the expected error_type and flags. The run as a whole: exit
0, no traceback, every call a row and a call span, nothing duplicated, the API key nowhere.
Costs about 10 s (two stub processes, one CLI run; the retried faults wait for backoff).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import duckdb
import pytest

from conftest import REPO, StubProcess, write_corpus, write_routes
from harness.testing.faults import FAULTS

KEY = "sk-test-redact-me-0123456789"
PARTIAL = {"flags": ["partial"], "text": "Echo:"}  # the fault came after the first word

# fault -> the faulty row: error_type (None = a success), flags it must carry, other columns.
EXPECTED: dict[str, dict] = {
    **{name: {"error_type": "bad_chunk", **PARTIAL} for name, (cls, _) in FAULTS.items() if cls == "chunk"},
    "bad_json": {"error_type": "bad_json", **PARTIAL},
    "error_chunk": {"error_type": "server_error", **PARTIAL},
    "error_event": {"error_type": "server_error", **PARTIAL},
    "invalid_utf8": {"error_type": "bad_encoding", **PARTIAL},
    "lone_surrogate": {"error_type": None, "flags": ["bad_unicode"], "text_suffix": " \ufffd"},
    "split_surrogate_pair": {"error_type": None, "flags": [], "text_suffix": " \U0001F600"},
    "retry_after_garbage": {"error_type": None, "attempts": 2},
    "retry_after_nan": {"error_type": None, "attempts": 2},
    "retry_after_bad_date": {"error_type": None, "attempts": 2},
    "retry_after_garbage_always": {"error_type": "http_503", "attempts": 2, "http_status": 503},
    "gzip_garbage": {"error_type": "bad_body", "text": None},
    "gzip_garbage_error": {"error_type": "http_500", "attempts": 2, "text": None},
    "content_length_short": {"error_type": "RemoteProtocolError", "attempts": 2, "flags": ["partial"]},
    "json_content_type_on_sse": {"error_type": None},
    **{name: {"error_type": None, "flags": ["usage_invalid"], "usage_source": "counted", "usage_raw": True}
       for name, (cls, _) in FAULTS.items() if cls == "usage"},
    "id_number": {"error_type": None, "flags": ["id_coerced"], "response_id": "12345"},
    "id_huge": {"error_type": None, "flags": ["id_coerced"], "response_id": str(2**80)},
    "id_object": {"error_type": None, "flags": ["id_coerced"], "response_id": '{"x": 1}'},
    "model_number": {"error_type": None, "flags": ["model_coerced"], "response_model": "7"},
    "model_list": {"error_type": None, "flags": ["model_coerced"], "response_model": '["a", "b"]'},
    "no_finish_no_done": {"error_type": "truncated", "flags": ["partial"]},
    "finish_no_done": {"error_type": None, "flags": ["no_done"]},
    "done_no_finish": {"error_type": None, "flags": ["no_finish_reason"]},
    "no_data_prefix": {"error_type": "bad_json", "text": None},
    "unknown_field_lines": {"error_type": "bad_stream", "text": None},
    "empty_body": {"error_type": "bad_stream", "text": None},
    "empty_answer": {"error_type": "empty_answer", "text": None, "finish_reason": "stop"},
    "json_reply": {"error_type": None, "flags": ["non_streamed"]},
    "json_reply_sse_type": {"error_type": None, "flags": ["non_streamed"]},
    **{name: {"error_type": None, "flags": []} for name, (cls, _) in FAULTS.items() if cls == "framing"},
    "echo_key_error": {"error_type": "http_401", "text": None, "message_has": "[redacted RC_FAULT_KEY]"},
    "echo_key_text": {"error_type": None, "text_suffix": " (your header: Bearer [redacted RC_FAULT_KEY])"},
}
CLEAN = [f"clean {i}" for i in range(3)]


def _prompt(fault: str) -> str:
    return f"fault {fault} [[fault:{fault}]]"


def _echo(prompt: str) -> str:
    return "Echo: " + " ".join(prompt.split()[:24])


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("faults")
    healthy, faulty = StubProcess({}, tmp), StubProcess({"faults": True}, tmp)
    try:
        routes = write_routes(tmp / "routes.yaml", [
            {"name": "healthy", "role": "baseline", "model": "h", "base_url": healthy.base_url, "max_concurrency": 8,
             "api_key_env": "RC_FAULT_KEY"},
            {"name": "faulty", "role": "candidate", "model": "f", "base_url": faulty.base_url, "max_concurrency": 8,
             "max_retries": 1, "timeout_s": 20, "api_key_env": "RC_FAULT_KEY"},
        ])
        rows = [{"id": f, "cohort": FAULTS[f][0], "prompt": _prompt(f)} for f in FAULTS]
        rows += [{"id": f"clean{i}", "cohort": "clean", "prompt": p} for i, p in enumerate(CLEAN)]
        corpus = write_corpus(tmp / "c.jsonl", rows)
        db = tmp / "s.duckdb"
        out = subprocess.run([sys.executable, "-m", "harness.cli", "mirror", "--corpus", str(corpus), "--routes", str(routes),
                              "--db", str(db), "--no-progress", "--warmup", "0"], cwd=REPO, capture_output=True, text=True, timeout=300,
                             env={**os.environ, "RC_FAULT_KEY": KEY})
    finally:
        healthy.stop()
        faulty.stop()
    con = duckdb.connect(str(db), read_only=True)
    yield out, con, len(rows)
    con.close()


def _row(con, prompt_id: str, route: str) -> dict:
    cur = con.execute("SELECT * FROM responses WHERE prompt_id = ? AND route = ?", [prompt_id, route])
    names = [d[0] for d in cur.description]
    rows = cur.fetchall()
    assert len(rows) == 1, (prompt_id, route, len(rows))
    return dict(zip(names, rows[0]))


def test_every_fault_is_expected():
    assert set(EXPECTED) == set(FAULTS)


def test_the_run_survives_every_fault(run):
    out, con, n_prompts = run
    assert out.returncode == 0, out.stdout + out.stderr
    assert "Traceback" not in out.stdout + out.stderr
    assert f"{2 * n_prompts} calls, {2 * n_prompts} responses written" in out.stdout
    assert con.execute("SELECT status FROM runs").fetchone()[0] == "completed"
    keys = con.execute("SELECT prompt_id, route, sample, count(*) FROM responses GROUP BY ALL").fetchall()
    assert len(keys) == 2 * n_prompts and all(k[3] == 1 for k in keys)
    # every call has its call span, once
    assert con.execute("""SELECT count(*) FROM responses r JOIN spans s ON s.trace_id = r.trace_id AND s.span_id = r.span_id""").fetchone()[0] == 2 * n_prompts
    assert con.execute("SELECT count(*) FROM responses WHERE route = 'healthy' AND error_type IS NULL").fetchone()[0] == n_prompts


def test_the_api_key_is_stored_nowhere(run):
    _, con, _ = run
    for table in ("responses", "spans", "prompts", "runs"):
        dump = con.execute(f"SELECT string_agg(CAST(t AS VARCHAR), '\n') FROM {table} t").fetchone()[0] or ""
        assert KEY not in dump, table
    assert "[redacted RC_FAULT_KEY]" in con.execute("SELECT string_agg(status_message, ' ') FROM spans").fetchone()[0]


@pytest.mark.parametrize("fault", sorted(FAULTS))
def test_fault_beside_a_healthy_route(run, fault):
    _, con, _ = run
    want = EXPECTED[fault]
    prompt = _prompt(fault)
    healthy = _row(con, fault, "healthy")
    assert (healthy["error_type"], healthy["text"], healthy["flags"]) == (None, _echo(prompt), None)
    row = _row(con, fault, "faulty")
    assert row["error_type"] == want["error_type"], row["error_message"]
    assert set(want.get("flags", [])) <= set(row["flags"] or []), row["flags"]
    if row["error_type"] is None:
        assert row["error_message"] is None and "partial" not in (row["flags"] or [])
        assert row["text"] == want.get("text", _echo(prompt) + want.get("text_suffix", ""))
        assert row["output_tokens"] > 0 and row["input_tokens"] > 0
    else:
        assert row["error_message"]
        if "text" in want:
            assert row["text"] == want["text"]
    for column in ("attempts", "http_status", "usage_source", "response_id", "response_model", "finish_reason"):
        if column in want:
            assert row[column] == want[column], column
    if want.get("usage_raw"):
        assert row["usage_raw"] and row["usage_source"] == "counted"
    if "message_has" in want:
        assert want["message_has"] in row["error_message"] and KEY not in row["error_message"]


def test_fault_flag_breaks_every_request(tmp_path, stub_server):
    """`--fault NAME` (here via config) applies one fault to every request, markers or not."""
    from harness.config import load_routes
    from harness.mirror.runner import MirrorOptions, run_mirror

    healthy, faulty = stub_server(), stub_server(fault="data_null")
    routes = write_routes(tmp_path / "routes.yaml", [
        {"name": "healthy", "role": "baseline", "model": "h", "base_url": healthy.base_url},
        {"name": "faulty", "role": "candidate", "model": "f", "base_url": faulty.base_url},
    ])
    corpus = write_corpus(tmp_path / "c.jsonl", [{"id": f"p{i}", "prompt": f"q {i}"} for i in range(20)])
    summary = run_mirror(load_routes(routes), MirrorOptions(corpus=corpus, db=tmp_path / "s.duckdb", warmup=0))
    assert (summary.calls, summary.rows_written) == (40, 40)
    assert (summary.per_route["healthy"].errors, summary.per_route["faulty"].errors) == (0, 20)
    con = duckdb.connect(str(tmp_path / "s.duckdb"), read_only=True)
    assert con.execute("SELECT route, error_type, count(*) FROM responses GROUP BY ALL ORDER BY 1").fetchall() == [
        ("faulty", "bad_chunk", 20), ("healthy", None, 20)]


def test_stub_cli_lists_faults():
    out = subprocess.run([sys.executable, "-m", "harness.testing.stub_server", "--help"], cwd=REPO, capture_output=True, text=True)
    assert "--fault" in out.stdout and "data_null" in out.stdout
