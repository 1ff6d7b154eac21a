"""Live expert capture in a real vLLM CPU server, against routing known by construction.

The tiny Mixtral of harness/testing/tiny_moe.py (hidden 64 for vLLM's CPU attention) is served by
routecheck with `expert_capture: true`; its routers see only the token's class, so each response's
routing is closed-form. Per cohort ("a" prompts go to experts {0, 1}, "b" prompts to {2, 3}) the
live utilisation must match the closed form, and the offline probe, within 0.02.

Slow: one vLLM CPU server (start-up 60-120 s on this machine), 16 calls, then the probe (~2 s);
about 2-3 minutes in all.
"""

from __future__ import annotations

import json
import math

import duckdb
import numpy as np
import pytest

from conftest import write_corpus, write_routes
from harness.config import load_routes
from harness.corpus import read_corpus, with_context
from harness.experts.run import load_cohort_stats, probe_run
from harness.mirror.runner import MirrorOptions, run_mirror

pytestmark = [pytest.mark.slow, pytest.mark.vllm]
pytest.importorskip("vllm")
pytest.importorskip("transformers")

from harness.experts.probe import chat_token_ids, load_moe  # noqa: E402
from harness.testing.tiny_moe import WORDS, write_tiny_moe  # noqa: E402


def test_live_capture_matches_closed_form_and_probe(tmp_path, stub_server):
    tiny = write_tiny_moe(tmp_path / "tiny", hidden=64, intermediate=64)
    _, tokenizer = load_moe(tiny.path)
    rows = []
    for i in range(8):
        for cohort in ("a", "b"):
            words = WORDS[cohort]
            rows.append({"id": f"{cohort}{i}", "cohort": cohort,
                         "prompt": " ".join(words[(i + j) % len(words)] for j in range(24 + i))})
    corpus = write_corpus(tmp_path / "corpus.jsonl", rows)
    routes = write_routes(tmp_path / "routes.yaml", [
        {"name": "base", "role": "baseline", "model": "d", "base_url": stub_server().base_url},
        {"name": "moe", "role": "candidate", "model": "tiny", "architecture": "moe", "num_experts": 4,
         "active_experts": 2, "capacity_factor": 1.0, "expert_capture": True, "max_concurrency": 4,
         "request": {"temperature": 0.0, "max_tokens": 4},
         "serve": {"model": str(tiny.path), "startup_timeout_s": 400,
                   "args": ["--dtype", "float32", "--max-model-len", "256", "--no-enable-prefix-caching"]}},
    ])
    db = tmp_path / "store.duckdb"
    summary = run_mirror(load_routes(routes), MirrorOptions(corpus=corpus, db=db, warmup=1))
    assert summary.status == "completed" and summary.experts_live == {"moe": 16}

    con = duckdb.connect(str(db))
    resp = con.execute("SELECT prompt_id, text, finish_reason FROM responses WHERE route = 'moe' AND sample >= 0 "
                       "AND error_type IS NULL").fetchall()
    assert len(resp) == 16
    records = {r.id: r for r in read_corpus(corpus)}
    # Closed form per cohort: the tokens the routers saw are the prompt and the answer, except a
    # last token sampled at max_tokens (never fed back).
    want_counts = {c: np.zeros((tiny.layers, tiny.num_experts)) for c in ("a", "b")}
    want_entropy = {c: np.zeros(tiny.layers) for c in ("a", "b")}
    want_tokens = {"a": 0, "b": 0}
    for prompt_id, text, finish in resp:
        rec = records[prompt_id]
        ids = chat_token_ids(tokenizer, with_context(rec.request_messages(), None), text)
        if finish == "length":
            ids = ids[:-1]
        want_tokens[rec.cohort] += len(ids)
        for layer in range(tiny.layers):
            top, p = tiny.expected_routing(ids, layer)
            want_counts[rec.cohort][layer] += np.bincount(top.ravel(), minlength=tiny.num_experts)
            want_entropy[rec.cohort][layer] += float(-(p * np.log(p)).sum())
    live = load_cohort_stats(con, summary.run_id, "moe")
    for cohort in ("a", "b"):
        g = live[("moe", cohort, "live")]
        assert g.responses == 8 and g.tokens == want_tokens[cohort]
        for layer in range(tiny.layers):
            share = want_counts[cohort][layer] / want_counts[cohort][layer].sum()
            assert np.abs(np.array(g.utilization[layer]) - share).max() <= 0.02
            assert g.router_entropy.layers[layer] == pytest.approx(
                want_entropy[cohort][layer] / want_tokens[cohort] / math.log(tiny.num_experts), abs=1e-4)
    # The cohorts route apart, as built: "a" words to experts {0, 1} in layer 0, "b" words to {2, 3}.
    a0, b0 = live[("moe", "a", "live")].utilization[0], live[("moe", "b", "live")].utilization[0]
    assert a0[0] > b0[0] and b0[2] > a0[2]

    probe_run(con, summary.run_id, "moe", str(tiny.path))
    both = load_cohort_stats(con, summary.run_id, "moe")
    for cohort in ("a", "b"):
        lv, pr = both[("moe", cohort, "live")], both[("moe", cohort, "probe")]
        for layer in range(tiny.layers):
            assert np.abs(np.array(lv.utilization[layer]) - np.array(pr.utilization[layer])).max() <= 0.02

    spans = [json.loads(a) for (a,) in con.execute(
        "SELECT attributes FROM spans WHERE kind = 'CLIENT' AND route = 'moe' AND sample >= 0").fetchall()]
    assert len(spans) == 16
    assert all(s["routecheck.experts.active_mean"] == 2.0 for s in spans)
    assert all(0 < s["routecheck.experts.router_entropy"] < 1 for s in spans)
