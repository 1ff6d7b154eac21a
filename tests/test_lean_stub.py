"""The benchmarks' lean stub answers what the stub server answers, byte for byte (streamed), and
the same completion (not streamed), so a benchmark's figures do not depend on which one ran."""

from __future__ import annotations

import json

import httpx

from conftest import StubProcess

ANSWER = " ".join(f"w{i}" for i in range(12))


def _body(stream: bool, usage: bool = True) -> dict:
    b = {"model": "dense", "stream": stream, "messages": [{"role": "user", "content": "question one two"}]}
    if usage:
        b["stream_options"] = {"include_usage": True}
    return b


def test_lean_stub_streams_the_stub_servers_bytes(tmp_path):
    cfg = {"answer": ANSWER, "ttft_s": 0.01, "tokens_per_s": 2000}
    stub, lean = StubProcess(cfg, tmp_path), StubProcess(cfg, tmp_path, module="harness.testing.lean_stub")
    try:
        got = {}
        for name, s in (("stub", stub), ("lean", lean)):
            with httpx.Client(timeout=10) as c:  # one connection: keep-alive answered in order
                answers = [c.post(s.base_url + "/chat/completions", json=_body(True, usage=u)) for u in (True, False)]
                whole = c.post(s.base_url + "/chat/completions", json=_body(False))
            assert [a.status_code for a in answers] == [200, 200] and whole.status_code == 200
            assert answers[0].headers["content-type"] == "text/event-stream; charset=utf-8"
            got[name] = ([a.content for a in answers], whole.json())
        assert got["lean"][0] == got["stub"][0]
        lines = got["lean"][0][0].decode().split("\n\n")
        assert lines[-2] == "data: [DONE]" and json.loads(lines[-3][6:])["usage"]["completion_tokens"] == 12
        assert sum('"content": "' in line and '"content": ""' not in line for line in lines) == 12
        stub_doc, lean_doc = (dict(got[n][1], created=0) for n in ("stub", "lean"))
        assert lean_doc == dict(stub_doc, id=lean_doc["id"])
        assert httpx.get(lean.url + "/health").status_code == 200 and httpx.get(lean.url + "/nothing").status_code == 404
    finally:
        stub.stop()
        lean.stop()
