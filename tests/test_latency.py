"""Latency figures under each definition (harness/mirror/latency.py), against a paced real stub and
against `vllm bench serve`'s own request function on the same stub."""

from __future__ import annotations

import asyncio
import importlib.util
from pathlib import Path

import duckdb
import pytest

from harness.config import load_routes
from harness.mirror.latency import FIGURES, StreamClock, figures, over_steps, percentile
from harness.mirror.http import RouteClient
from harness.mirror.openai_stream import CallResult, RetryPolicy, stream_chat
from harness.mirror.runner import MirrorOptions, run_mirror
from tests.conftest import write_corpus, write_routes

TTFT, RATE = 0.15, 100.0  # the stub: role chunk at once, first token after 150 ms, then one per 10 ms
ANSWER, THOUGHT = "one two three four five", "hmm right"


def test_figures_from_marks() -> None:
    c = StreamClock(start=10.0)
    c.chunk(10.001, token=False, content=False)  # role-only chunk
    c.chunk(10.100, token=True, content=False)  # reasoning
    c.chunk(10.110, token=True, content=True)
    c.chunk(10.130, token=True, content=True)
    c.chunk(10.131, token=False, content=False)  # finish_reason chunk
    c.end = 10.140  # after usage and [DONE]
    f = figures(c, output_tokens=3)
    assert set(f) == set(FIGURES)
    assert f["ttft_chunk_s"] == pytest.approx(0.001) and f["ttft_s"] == pytest.approx(0.100)
    assert f["ttft_content_s"] == pytest.approx(0.110)
    assert f["e2e_chunk_s"] == pytest.approx(0.131) and f["latency_s"] == pytest.approx(0.140)
    assert f["itl_mean_s"] == pytest.approx(0.015) and f["itl_p99_s"] == pytest.approx(0.020)
    assert f["itl_chunk_mean_s"] == pytest.approx(0.130 / 4)
    assert f["tpot_s"] == pytest.approx(0.030 / 2) and f["tpot_chunk_s"] == pytest.approx(0.130 / 2)
    assert f["chunks"] == 5 and f["send_s"] is None
    one = figures(StreamClock(start=0.0, end=1.0), output_tokens=1)
    assert one["ttft_s"] is None and one["tpot_s"] is None and one["latency_s"] == 1.0 and one["chunks"] == 0


def test_over_steps_and_percentile() -> None:
    a = CallResult(ttft_s=0.1, ttft_chunk_s=0.01, latency_s=1.0, e2e_chunk_s=0.9, tpot_s=0.02, output_tokens=10, chunks=12)
    b = CallResult(ttft_s=0.3, ttft_chunk_s=0.03, latency_s=2.0, e2e_chunk_s=1.9, tpot_s=0.05, output_tokens=30, chunks=32)
    t = over_steps([a, b])
    assert t["ttft_s"] == 0.1 and t["ttft_chunk_s"] == 0.01
    assert t["latency_s"] == 3.0 and t["e2e_chunk_s"] == pytest.approx(2.8) and t["chunks"] == 44
    assert t["tpot_s"] == pytest.approx((0.02 * 10 + 0.05 * 30) / 40)
    assert percentile([1, 2, 3, 4], 50) == 2.5 and percentile([5], 99) == 5 and percentile([], 50) is None


async def _ours(base_url: str) -> CallResult:
    async with RouteClient(base_url) as client:
        body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": True,
                "stream_options": {"include_usage": True}}
        await stream_chat(client, body, {}, 10.0, RetryPolicy(max_retries=0))  # warm: connection, first-call costs
        return await stream_chat(client, body, {}, 10.0, RetryPolicy(max_retries=0))


def test_stream_marks_each_definition(stub_server) -> None:
    stub = stub_server(ttft_s=TTFT, tokens_per_s=RATE, answer=ANSWER, reasoning=THOUGHT)
    r = asyncio.run(_ours(stub.base_url))
    assert r.ok and r.text == ANSWER and r.output_tokens == 7  # reasoning tokens are completion tokens
    assert r.chunks == 1 + 2 + 5 + 1  # role, reasoning, content, finish
    assert r.ttft_chunk_s < TTFT - 0.05  # the role-only chunk comes at once
    assert TTFT <= r.ttft_s < r.ttft_content_s  # reasoning first, then the text
    assert r.ttft_content_s - r.ttft_s >= 1 / RATE  # 2 / RATE on an idle machine
    assert r.e2e_chunk_s <= r.latency_s and r.e2e_chunk_s >= TTFT + 6 / RATE - 0.002
    assert r.tpot_chunk_s == pytest.approx((r.e2e_chunk_s - r.ttft_chunk_s) / 6)
    assert 0 < r.send_s < r.ttft_chunk_s  # the headers went out before anything came back
    assert r.tpot_s == pytest.approx(1 / RATE, rel=0.3)  # deadline pacing: no drift over the answer
    assert r.itl_chunk_mean_s > r.itl_mean_s  # vLLM's ITL includes the role chunk -> first token gap


def _vllm_request_func():
    """vLLM's own request function, loaded from its file (importing the vllm package takes a minute)."""
    spec = importlib.util.find_spec("vllm")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("vllm is not installed")
    path = Path(spec.submodule_search_locations[0]) / "benchmarks" / "lib" / "endpoint_request_func.py"
    mod_spec = importlib.util.spec_from_file_location("_vllm_endpoint_request_func", path)
    mod = importlib.util.module_from_spec(mod_spec)
    mod_spec.loader.exec_module(mod)
    return mod


def test_chunk_figures_match_vllm_bench_serve(stub_server) -> None:
    """Same stub, same pacing: vLLM's TTFT and E2EL equal our ttft_chunk_s and e2e_chunk_s, not ttft_s."""
    vllm = _vllm_request_func()
    import aiohttp

    stub = stub_server(ttft_s=TTFT, tokens_per_s=RATE, answer=ANSWER)

    async def theirs():
        async with aiohttp.ClientSession() as session:
            inp = vllm.RequestFuncInput(prompt="hi", api_url=stub.base_url + "/chat/completions", prompt_len=1,
                                        output_len=5, model="m")
            await vllm.async_request_openai_chat_completions(inp, session)  # warm, as ours
            return [await vllm.async_request_openai_chat_completions(inp, session) for _ in range(5)]

    async def ours_n():
        return [await _ours(stub.base_url) for _ in range(5)]

    outs, ours = asyncio.run(theirs()), asyncio.run(ours_n())  # medians of 5: the machine is shared
    assert all(o.success and o.output_tokens == 5 for o in outs) and all(r.output_tokens == 5 for r in ours)
    med = lambda xs: percentile(xs, 50)  # noqa: E731
    assert med(o.ttft for o in outs) < TTFT - 0.05 and med(r.ttft_chunk_s for r in ours) < TTFT - 0.05
    assert med(r.ttft_s for r in ours) >= TTFT
    assert med(r.e2e_chunk_s for r in ours) == pytest.approx(med(o.latency for o in outs), abs=0.03)
    assert all(len(o.itl) == r.chunks - 1 for o, r in zip(outs, ours))
    assert med(r.tpot_chunk_s for r in ours) == pytest.approx(med((o.latency - o.ttft) / 4 for o in outs), abs=0.01)


def test_mirror_stores_every_figure(stub_server, tmp_path: Path) -> None:
    stub = stub_server(ttft_s=0.02, tokens_per_s=500, answer=ANSWER)
    routes = write_routes(tmp_path / "routes.yaml", [{"name": "r", "role": "baseline", "model": "m",
                                                     "base_url": stub.base_url, "max_retries": 0}])
    corpus = write_corpus(tmp_path / "c.jsonl", [{"id": f"p{i}", "cohort": "a", "prompt": "hi"} for i in range(3)])
    db = tmp_path / "s.duckdb"
    run_mirror(load_routes(routes), MirrorOptions(corpus=corpus, db=db, warmup=0))
    con = duckdb.connect(str(db), read_only=True)
    rows = con.execute(f"SELECT {', '.join(FIGURES)} FROM responses").fetchall()
    assert len(rows) == 3
    for row in rows:
        f = dict(zip(FIGURES, row))
        assert f["chunks"] == 7 and f["ttft_chunk_s"] < f["ttft_s"] == f["ttft_content_s"]
        assert f["e2e_chunk_s"] <= f["latency_s"] and f["tpot_chunk_s"] > 0
    attrs = con.execute("SELECT attributes->>'routecheck.time_to_first_chunk_s' FROM spans WHERE kind = 'CLIENT'").fetchall()
    assert len(attrs) == 3 and all(float(a) > 0 for (a,) in attrs)
