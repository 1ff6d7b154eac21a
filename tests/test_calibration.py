"""A/A detection, the server-timing warning, CPU pinning plans and the replication comparison (fast)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd

from conftest import write_routes
from harness.config import load_routes
from harness.report.calibration import aa_candidates, server_phase_warnings
from harness.report.load import RouteInfo
from harness.report.replicate import compare_reports, counts, main, replicates
from harness.serving.engines.vllm import CPU_BIND_ENV
from harness.serving.pool import pinned, plan_cpu_sets


def test_aa_candidates_by_checkpoint():
    base = RouteInfo("a", "baseline", checkpoint="/m/dense [--dtype float32]")
    same = RouteInfo("b", "candidate", checkpoint="/m/dense [--dtype float32]")
    other_dtype = RouteInfo("c", "candidate", checkpoint="/m/dense [--dtype bfloat16]")
    moe = RouteInfo("d", "candidate", checkpoint="/m/moe [--dtype float32]")
    assert [c.name for c in aa_candidates(base, [same, other_dtype, moe])] == ["b"]


def test_server_phase_warning_only_when_a_phase_differs():
    rng = np.random.default_rng(0)
    n = 200
    q = rng.exponential(0.01, n)
    pre = rng.lognormal(np.log(0.02), 0.2, n)
    dec = rng.lognormal(np.log(0.3), 0.2, n)
    equal = pd.DataFrame({"queue_base": q, "queue_cand": rng.permutation(q), "prefill_base": pre,
                          "prefill_cand": pre * rng.lognormal(0, 0.05, n), "decode_base": dec,
                          "decode_cand": dec * rng.lognormal(0, 0.05, n)})
    base, cand = RouteInfo("a", "baseline"), RouteInfo("b", "candidate")
    assert server_phase_warnings(base, cand, equal, 0.05, rng) == []
    slower = equal.assign(decode_cand=equal["decode_cand"] * 1.3)
    warnings = server_phase_warnings(base, cand, slower, 0.05, rng)
    assert len(warnings) == 1 and "server-side decode time differs" in warnings[0]


def test_cpu_sets_split_cores_between_served_routes(tmp_path):
    (tmp_path / "m").mkdir()
    serve = {"model": str(tmp_path / "m"), "args": []}
    routes = load_routes(write_routes(tmp_path / "r.yaml", [
        {"name": "a", "role": "baseline", "model": "m", "serve": serve},
        {"name": "b", "role": "candidate", "model": "m", "serve": serve},
        {"name": "c", "role": "candidate", "model": "m", "serve": {**serve, "env": {CPU_BIND_ENV: "auto"}}},
        {"name": "d", "role": "candidate", "model": "m", "base_url": "http://127.0.0.1:1/v1"},
    ])).routes
    assert plan_cpu_sets(routes, [0, 1, 2, 3, 4]) == {"a": [0, 1], "b": [2, 3]}
    assert plan_cpu_sets(routes, [0]) == {}          # fewer cores than servers: no pinning
    assert plan_cpu_sets(routes[:1], [0, 1]) == {}   # one server: it may use every core
    assert pinned(routes[0], [2, 3]).serve.env == {CPU_BIND_ENV: "2,3"}
    assert routes[0].serve.env == {}                 # the route itself is unchanged
    assert pinned(routes[2], [0]).serve.env == {CPU_BIND_ENV: "auto"}


def _report(cells):
    return {"comparisons": [{"candidate": "moe", "scope": "cohort", "cohort": c, "metric": m, "kind": k, "verdict": v, "diff": d}
                            for c, m, k, v, d in cells]}


def test_replication_rules(tmp_path):
    a = _report([("x", "latency_p99_s", "serving", "regression", 0.5), ("y", "latency_p99_s", "serving", "improvement", -0.2),
                 ("z", "latency_p99_s", "serving", "regression", 0.3), ("x", "tc.pass_rate", "quality", "regression", -0.2)])
    b = _report([("x", "latency_p99_s", "serving", "regression", 0.4), ("y", "latency_p99_s", "serving", "inconclusive", 0.1),
                 ("z", "latency_p99_s", "serving", "no change", -0.01), ("x", "tc.pass_rate", "quality", "regression", -0.2)])
    cells = compare_reports(a, b)
    assert [c.agreement for c in cells] == ["same", "consistent", "sign flip", "same"]
    assert not replicates(cells) and counts(cells)["sign_flips"] == 1
    b["comparisons"][2]["diff"] = 0.01
    b["comparisons"][3]["verdict"] = "inconclusive"
    cells = compare_reports(a, b)
    assert [c.agreement for c in cells] == ["same", "consistent", "consistent", "differs"] and not replicates(cells)
    b["comparisons"][3]["verdict"] = "regression"
    pa, pb = tmp_path / "a.json", tmp_path / "b.json"
    pa.write_text(json.dumps(a))
    pb.write_text(json.dumps(b))
    assert main([str(pa), str(pb)]) == 0
