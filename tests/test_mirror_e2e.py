"""End to end: 200 prompts mirrored through two stub routes into a real DuckDB file."""

import json

import duckdb
import httpx
import pytest

from conftest import write_corpus, write_routes
from harness.config import load_routes
from harness.corpus import read_corpus
from harness.mirror.runner import MirrorOptions, run_mirror

COHORTS = ["billing", "legal", "sql", "multilingual"]


def _routes(tmp_path, base_a, base_b):
    return write_routes(tmp_path / "routes.yaml", [
        {"name": "dense-baseline", "role": "baseline", "model": "dense", "base_url": base_a, "max_concurrency": 16,
         "architecture": "dense", "total_params": 1_000_000, "active_params": 1_000_000},
        {"name": "moe-candidate", "role": "candidate", "model": "moe", "base_url": base_b, "max_concurrency": 16,
         "architecture": "moe", "total_params": 4_000_000, "active_params": 1_100_000, "num_experts": 8,
         "active_experts": 2, "capacity_factor": 1.25},
    ])


def _expected_usage(record):
    """The stub's usage rule: a word is a token; the answer echoes the first 24 words of the last user turn."""
    msgs = record.request_messages()
    prompt = sum(len((m.get("content") or "").split()) for m in msgs)
    completion = 1 + min(24, len(msgs[-1]["content"].split()))
    return prompt, completion


def test_mirror_200_prompts_two_routes(tmp_path, stub_server):
    a = stub_server(ttft_s=0.005, tokens_per_s=2000)
    b = stub_server(ttft_s=0.010, tokens_per_s=1000)
    corpus = write_corpus(tmp_path / "corpus.jsonl", [
        {"id": f"p{i:03d}", "cohort": COHORTS[i % 4], "prompt": f"question {i} " + "word " * (i % 7),
         "context": f"passage {i} with facts" if i % 2 else None}
        for i in range(200)
    ])
    db = tmp_path / "store.duckdb"
    # No warm-up here: every stored row and span is a measured call (test_order_and_warmup covers warm-up).
    summary = run_mirror(load_routes(_routes(tmp_path, a.base_url, b.base_url)), MirrorOptions(corpus=corpus, db=db, warmup=0))
    assert summary.status == "completed" and summary.prompts == 200 and summary.calls == 400

    con = duckdb.connect(str(db), read_only=True)
    resp = con.execute("SELECT * FROM responses").df()
    assert len(resp) == 400
    assert resp["error_type"].isna().all()
    assert set(resp.groupby("route").size()) == {200}
    # Cohorts preserved from the corpus, per prompt.
    records = {r.id: r for r in read_corpus(corpus)}
    assert all(resp.cohort == resp.prompt_id.map(lambda p: records[p].cohort))
    # Token counts equal the stub's usage.
    for row in resp.itertuples():
        assert (row.input_tokens, row.output_tokens) == _expected_usage(records[row.prompt_id]), row.prompt_id
        assert row.usage_source == "server"
        assert 0 < row.ttft_s < row.latency_s
        assert row.text.startswith("Echo: question")

    spans = con.execute("SELECT * FROM spans").df()
    assert len(spans) == 600
    groups = spans[spans.name == "mirror"]
    calls = spans[spans.kind == "CLIENT"]
    assert len(groups) == 200 and len(calls) == 400
    # Each call span is a child of its group span, in the group's trace.
    by_id = groups.set_index("span_id")
    assert calls.parent_span_id.isin(by_id.index).all()
    assert (by_id.loc[calls.parent_span_id, "trace_id"].values == calls.trace_id.values).all()
    # Responses point at their call span.
    assert set(zip(resp.trace_id, resp.span_id)) == set(zip(calls.trace_id, calls.span_id))

    for row in calls.itertuples():
        attrs = json.loads(row.attributes)
        dense = attrs["routecheck.route"] == "dense-baseline"
        inp, out = _expected_usage(records[attrs["routecheck.prompt_id"]])
        expected = {
            "gen_ai.operation.name": "chat",
            "gen_ai.request.model": "dense" if dense else "moe",
            "gen_ai.response.model": "dense" if dense else "moe",
            "gen_ai.usage.input_tokens": inp, "gen_ai.usage.output_tokens": out,
            "llm.token_count.prompt": inp, "llm.token_count.completion": out, "llm.token_count.total": inp + out,
            "llm.model_name": "dense" if dense else "moe",
            "gen_ai.response.finish_reasons": ["stop"],
            "server.address": "127.0.0.1",
            "server.port": int((a if dense else b).url.rsplit(":", 1)[1]),
            "routecheck.role": "baseline" if dense else "candidate",
            "routecheck.run_id": summary.run_id,
            "routecheck.cohort": records[attrs["routecheck.prompt_id"]].cohort,
            "architecture": "dense" if dense else "moe",
            "total_params": 1_000_000 if dense else 4_000_000,
            "active_params": 1_000_000 if dense else 1_100_000,
        }
        if not dense:
            expected.update({"active_experts": 2, "num_experts": 8, "capacity_factor": 1.25})
        assert {k: attrs.get(k) for k in expected} == expected
        assert attrs["gen_ai.response.id"].startswith("chatcmpl-stub-")
        assert 0 < attrs["routecheck.time_to_first_token_s"] < attrs["routecheck.latency_s"]
        assert row.status_code == "UNSET" and row.run_id == summary.run_id and row.cohort == expected["routecheck.cohort"]
        assert (row.input_tokens, row.output_tokens) == (inp, out)

    # The W3C traceparent reached the server and names the call span.
    sent = httpx.get(a.url + "/stub/headers").json() + httpx.get(b.url + "/stub/headers").json()
    parents = {h["traceparent"].rsplit("-", 1)[0] for h in sent}  # version-trace-span (flags vary)
    assert parents == {f"00-{r.trace_id}-{r.span_id}" for r in calls.itertuples()}

    run = con.execute("SELECT status, n_prompts, n_expected, corpus_sha256, routes FROM runs").fetchall()
    assert run[0][:3] == ("completed", 200, 400) and len(run[0][3]) == 64
    assert [r["name"] for r in json.loads(run[0][4])] == ["dense-baseline", "moe-candidate"]
    assert con.execute("SELECT count(*) FROM prompts").fetchone()[0] == 200


def test_samples_limit_and_cohort_filters(tmp_path, stub_server):
    s = stub_server()
    corpus = write_corpus(tmp_path / "c.jsonl", [{"id": f"p{i}", "cohort": COHORTS[i % 4], "prompt": "q"} for i in range(40)])
    routes = load_routes(_routes(tmp_path, s.base_url, s.base_url))
    db = tmp_path / "s.duckdb"
    summary = run_mirror(routes, MirrorOptions(corpus=corpus, db=db, samples=3, limit=5, cohorts=["legal", "sql"],
                                               warmup=0))
    con = duckdb.connect(str(db), read_only=True)
    rows = con.execute("SELECT prompt_id, route, sample, cohort FROM responses ORDER BY ALL").fetchall()
    assert summary.prompts == 5 and len(rows) == 5 * 2 * 3
    assert {r[3] for r in rows} == {"legal", "sql"}
    assert {r[2] for r in rows} == {0, 1, 2}
    # Each sample gets its own seed (route seed + sample) so samples are independent draws.
