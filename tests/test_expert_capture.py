"""Server-reported routing: the live-capture spool format (written as the vLLM plugin writes it,
read back by position), vLLM's request ids, returned `routed_experts` through the stub server and
the mirror into expert_stats (source 'returned'), and the call spans' routecheck.experts.* attributes."""

from __future__ import annotations

import json
import math
import re

import duckdb
import numpy as np
import pytest

from conftest import write_corpus, write_routes
from harness.config import ConfigError, load_routes
from harness.experts.capture import (Spool, decode_routed_experts, encode_routed_experts, ids_record, meta_line,
                                     span_figures, spool_file, step_line)
from harness.experts.records import from_rows
from harness.experts.stats import response_record
from harness.mirror.runner import MirrorOptions, run_mirror
from harness.serving.engines.vllm_capture import external_request_id
from harness.testing.stub_server import stub_routing


def _ids(T, L, k, E, seed):
    rng = np.random.default_rng(seed)
    return np.stack([np.stack([rng.choice(E, size=k, replace=False) for _ in range(L)]) for _ in range(T)])


def test_spool_round_trip_by_position(tmp_path):
    """Prefill chunks and decode steps of two interleaved requests, one step written twice (a
    recomputation): the record is the tokens in position order, equal to response_record on them."""
    E, k, L = 6, 2, 3
    a, b = _ids(7, L, k, E, 1), _ids(4, L, k, E, 2)
    la = np.random.default_rng(3).normal(size=(7, L, E)).astype(np.float32)
    lb = np.random.default_rng(4).normal(size=(4, L, E)).astype(np.float32)
    # Put each token's ids in router order: the record sorts by logit, so make the logits agree.
    for ids, lg in ((a, la), (b, lb)):
        for t in range(ids.shape[0]):
            for layer in range(L):
                lg[t, layer, ids[t, layer]] = 10 - np.arange(k)
    path = spool_file(tmp_path, 123)
    with open(path, "wb") as f:
        f.write(meta_line(E, k, [0, 1, 2], "softmax"))
        f.write(step_line([("A-1234abcd", "A", 0, 5), ("B-0000ffff", "B", 0, 3)],
                          np.concatenate([a[:5], b[:3]]), np.concatenate([la[:5], lb[:3]])))
        f.write(step_line([("B-0000ffff", "B", 3, 1), ("A-1234abcd", "A", 5, 2)],
                          np.concatenate([b[3:], a[5:]]), np.concatenate([lb[3:], la[5:]])))
        f.write(step_line([("A-1234abcd", "A", 5, 2)], a[5:], la[5:]))  # recomputed: same positions
        f.write(b'{"reqs": [["half')  # a line still being written is left for the next poll
    spool = Spool(tmp_path)
    assert spool.poll() == 3 and spool.request_ids() == ["A", "B"] and spool.bad_lines == 0
    for ids, lg, rid in ((a, la, "A"), (b, lb, "B")):
        rec = spool.record(rid)
        z = lg.astype(np.float64)
        p = np.exp(z - z.max(axis=2, keepdims=True))
        p /= p.sum(axis=2, keepdims=True)
        want = response_record([(ids[:, layer], p[:, layer]) for layer in range(L)], num_experts=E, top_k=k)
        assert rec.tokens == ids.shape[0]
        assert [x.counts for x in rec.layers] == [x.counts for x in want.layers]
        assert [x.capacity for x in rec.layers] == [x.capacity for x in want.layers]
        for got, exp in zip(rec.layers, want.layers):
            assert got.entropy_sum == pytest.approx(exp.entropy_sum) and got.mass_sum == pytest.approx(exp.mass_sum)
    assert spool.record("C") is None


def test_unsorted_top_k_is_put_in_router_order():
    """vLLM's CPU top-k is unsorted; with logits the slot order (which FCFS capacity uses) is the router's."""
    ids = np.array([[[1, 0]], [[1, 0]], [[0, 1]]])  # T=3, L=1, k=2
    logits = np.zeros((3, 1, 4))
    logits[:, 0, 0], logits[:, 0, 1] = 2.0, 1.0  # expert 0 is every token's first choice
    rec = ids_record(ids, 4, logits=logits, capacity_factors=(0.5,))
    # capacity ceil(0.5*3*2/4) = 1: t0 slot0 -> e0 kept, slot1 -> e1 kept, t1 both dropped, t2 both dropped
    assert rec.layers[0].capacity[0].dropped_slots == 4 and rec.layers[0].capacity[0].dropped_tokens == 2


def test_external_request_id():
    assert external_request_id("chatcmpl-8a655ccb5af49960-ac783de3") == "chatcmpl-8a655ccb5af49960"
    assert external_request_id("chatcmpl-abc") == "chatcmpl-abc"


def test_routed_experts_codec_and_span_figures():
    ids = stub_routing("apple banana cherry apple".split(), num_experts=4, layers=2, top_k=2)
    back = decode_routed_experts(encode_routed_experts(ids))
    assert back.shape == (4, 2, 2) and (back == ids).all()
    with pytest.raises(ValueError):
        decode_routed_experts(encode_routed_experts(np.zeros((3, 2))))
    rec = ids_record(back, 4)
    assert span_figures([rec]) == {"routecheck.experts.active_mean": 2.0}  # no probabilities: no entropy
    p = np.full((4, 4), 0.25)
    uniform = response_record([(ids[:, 0], p), (ids[:, 1], p)], num_experts=4, top_k=2)
    assert span_figures([uniform])["routecheck.experts.router_entropy"] == pytest.approx(1.0)


def test_expert_capture_needs_a_served_moe_route(tmp_path):
    path = write_routes(tmp_path / "r.yaml", [
        {"name": "b", "role": "baseline", "model": "m", "base_url": "http://127.0.0.1:1/v1", "architecture": "moe",
         "num_experts": 4, "active_experts": 2, "expert_capture": True}])
    with pytest.raises(ConfigError, match="expert_capture"):
        load_routes(path)


def test_vllm_command_and_environment_for_capture(tmp_path):
    from harness.config import RouteConfig
    from harness.serving.engines.vllm import PLUGIN_NAME, VllmEngine

    route = RouteConfig(name="m", role="baseline", model="m", serve={"model": str(tmp_path)}, architecture="moe",
                        num_experts=4, active_experts=2, expert_capture=True)
    from harness.serving.engines.vllm import flavour

    cmd = VllmEngine().command(route, 1234, None)
    # CUDA graphs skip the capture callbacks, so eager there; on CPU the model stays compiled.
    assert cmd.count("--enforce-eager") == (0 if flavour() == "cpu" else 1)
    env = VllmEngine().capture_environment(route, tmp_path / "logs" / "m.experts", {"PYTHONPATH": "/x"})
    assert env["ROUTECHECK_EXPERT_SPOOL"] == str(tmp_path / "logs" / "m.experts")
    assert env["PYTHONPATH"].endswith("/x")
    # Never a graph compiled without the plugin, or with another version of it.
    assert re.search(r"/routecheck-expert-capture-[0-9a-f]{12}$", env["VLLM_CACHE_ROOT"])
    # The entry point is visible on that PYTHONPATH, installed or not.
    import importlib.metadata

    found = [ep for p in env["PYTHONPATH"].split(":")
             for ep in importlib.metadata.entry_points(group="vllm.general_plugins") if ep.name == PLUGIN_NAME]
    dists = importlib.metadata.distributions(path=env["PYTHONPATH"].split(":"))
    declared = [ep for d in dists for ep in d.entry_points if ep.group == "vllm.general_plugins" and ep.name == PLUGIN_NAME]
    assert found or declared


def test_returned_routed_experts_through_the_stub(tmp_path, stub_server):
    """A `return_routed_experts` route sends non-streamed calls; the stub returns routed_experts;
    the mirror stores them per response (source 'returned', counts as the stub routed) and the
    call span carries routecheck.experts.active_mean."""
    E, L, k = 4, 2, 2
    stub = stub_server(routed_experts={"num_experts": E, "layers": L, "top_k": k})
    plain = stub_server()
    rows = [{"id": f"p{i}", "cohort": "fruit" if i % 2 else "nuts", "prompt": "apple banana " * (i + 1)} for i in range(6)]
    corpus = write_corpus(tmp_path / "corpus.jsonl", rows)
    routes = write_routes(tmp_path / "routes.yaml", [
        {"name": "base", "role": "baseline", "model": "d", "base_url": plain.base_url},
        {"name": "moe", "role": "candidate", "model": "m", "base_url": stub.base_url, "architecture": "moe",
         "num_experts": E, "active_experts": k, "capacity_factor": 1.1, "return_routed_experts": True},
    ])
    db = tmp_path / "s.duckdb"
    summary = run_mirror(load_routes(routes), MirrorOptions(corpus=corpus, db=db, warmup=1))
    assert summary.status == "completed"
    con = duckdb.connect(str(db), read_only=True)
    resp = con.execute("SELECT prompt_id, text, flags FROM responses WHERE route = 'moe' AND sample >= 0").fetchall()
    assert len(resp) == 6 and all("non_streamed" in (f or []) for _p, _t, f in resp)
    cur = con.execute("SELECT * FROM expert_stats")
    names = [d[0] for d in cur.description]
    got = from_rows(dict(zip(names, r)) for r in cur.fetchall())
    assert {key[3] for key in got} == {"returned"} and {key[0] for key in got} == {r["id"] for r in rows}  # no warm-up rows
    text = {p: t for p, t, _f in resp}
    for (prompt_id, route, sample, source), rec in got.items():
        row = next(r for r in rows if r["id"] == prompt_id)
        words = row["prompt"].split() + text[prompt_id].split()
        want = stub_routing(words, num_experts=E, layers=L, top_k=k)
        assert rec.tokens == len(words)
        for layer in range(L):
            assert rec.layers[layer].counts == tuple(np.bincount(want[:, layer].ravel(), minlength=E))
            assert 1.1 in [c.factor for c in rec.layers[layer].capacity]  # the route's own factor is simulated
    spans = con.execute("SELECT attributes FROM spans WHERE kind = 'CLIENT' AND route = 'moe'").fetchall()
    attrs = [json.loads(a) for (a,) in spans]
    assert attrs and all(a["routecheck.experts.active_mean"] == 2.0 for a in attrs)
    assert all("routecheck.experts.router_entropy" not in a for a in attrs)  # ids only: no probabilities
    base = con.execute("SELECT attributes FROM spans WHERE kind = 'CLIENT' AND route = 'base'").fetchall()
    assert all("routecheck.experts.active_mean" not in json.loads(a) for (a,) in base)
    assert not math.isnan(summary.duration_s)


def test_router_tap_runs_in_a_compiled_graph():
    """The CPU capture hook is an opaque custom op: torch.compile keeps it as a call, so its Python
    body sees every step's ids and logits (a plain callback would run once, at tracing), and it
    returns the ids unchanged for the MoE kernel."""
    pytest.importorskip("vllm")
    import torch

    from harness.serving.engines import vllm_capture
    from vllm.platforms import current_platform

    if not current_platform.is_cpu():
        pytest.skip("the tap is the CPU build's hook")
    assert vllm_capture._install_tap() and vllm_capture._install_tap()  # twice: installed once
    seen = []
    vllm_capture._tap = lambda ids, logits: seen.append((ids.clone(), logits.clone()))
    try:
        step = torch.compile(lambda logits: torch.ops.routecheck.expert_tap(logits.topk(2).indices, logits * 1.0) + 0,
                             backend="aot_eager", fullgraph=True)
        for i in range(3):
            logits = torch.randn(5, 4) + i
            out = step(logits)
            assert torch.equal(out, logits.topk(2).indices)
        assert len(seen) == 3 and torch.equal(seen[-1][1], logits)
    finally:
        vllm_capture._tap = None
