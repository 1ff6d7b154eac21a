"""Expert telemetry costs on CPU: the offline probe's tokens/s, and live capture's overhead on the mirror.

1. Probe: the testbed MoE checkpoint (testbed/models/moe) replays the bundled corpus's prompts
   (rendered by its chat template) with a 48-word answer each, teacher-forced, batch 8; tokens/s
   over the forward passes (model loading excluded).
2. Live capture: one mirror run with two routes serving the same checkpoint with the same server
   settings (the testbed args, compiled as vLLM CPU serves by default; `--eager` adds
   --enforce-eager to both), one with `expert_capture: true`. Mirror groups send every prompt to both at the same moment, so both
   servers see the same load and the same machine noise; the run's response rate is shared by
   construction, so the comparison is per route: output tokens per second of call time (the
   route's throughput at its concurrency), mean latency, and the servers' own e2e time per request
   (their `llm_request` spans). Each server is pinned to its own core, and the run is repeated
   with the cores swapped (`--pairs` such pairs); overhead = 1 - the geometric mean over runs of
   capture / plain throughput. Beside it, the plugin's own timer from the capture server's log:
   the tap's and the spool write's time per engine step as a share of the step (not noisy like the
   ratio, but blind to what the opaque op costs the compiled graph around it).

    python bench/experts.py [--prompts 150] [--max-tokens 64] [--concurrency 4] [--pairs 1] [--eager] [--skip-probe] [--skip-live]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from harness.config import load_routes  # noqa: E402
from harness.corpus import read_corpus, with_context  # noqa: E402
from harness.mirror.runner import MirrorOptions, run_mirror  # noqa: E402

MODEL = ROOT / "testbed" / "models" / "moe"
CORPUS = ROOT / "examples" / "corpus.jsonl"
ARGS = ["--dtype", "float32", "--max-model-len", "1024", "--enable-auto-tool-choice", "--tool-call-parser", "hermes"]


def bench_probe(prompts: int) -> dict:
    from harness.experts.probe import chat_token_ids, load_moe, probe_records

    model, tokenizer = load_moe(MODEL)
    seqs = []
    for rec in list(read_corpus(CORPUS))[:prompts]:
        msgs = with_context(rec.request_messages(), None)
        text = " ".join(" ".join(str(m.get("content") or "") for m in msgs).split()[:48])
        seqs.append(chat_token_ids(tokenizer, msgs, text, tools=rec.tools))
    probe_records(model, seqs[:8], batch_size=8)  # warm-up
    t0 = time.perf_counter()
    recs = probe_records(model, seqs, batch_size=8)
    dt = time.perf_counter() - t0
    tokens = sum(r.tokens for r in recs)
    return {"sequences": len(recs), "tokens": tokens, "seconds": round(dt, 2), "tokens_per_s": round(tokens / dt)}


TIMER = re.compile(r"routecheck expert capture: (\d+) steps, ([\d.]+) ms per step in execute_model, ([\d.]+) ms writing"
                   r"(?:, ([\d.]+) ms in the tap)?")


def capture_timer(log_path: Path) -> dict | None:
    """The capture plugin's own timer, its last line in the server log (every 500 steps): the time
    capture adds per engine step (the tap inside the step, the spool write after it) beside the
    step's time. Free of the run-to-run noise that the throughput ratio carries."""
    if not log_path.exists():
        return None
    last = None
    for line in log_path.read_text(errors="replace").splitlines():
        m = TIMER.search(line)
        if m:
            last = m
    if last is None:
        return None
    steps, step_ms, write_ms = int(last[1]), float(last[2]), float(last[3])
    tap_ms = float(last[4]) if last[4] else None
    own = write_ms + (tap_ms or 0.0)
    # execute_model's time includes the tap; the write comes after it
    return {"steps": steps, "execute_model_ms": step_ms, "write_ms": write_ms, "tap_ms": tap_ms,
            "capture_share_of_step": round(own / (step_ms + write_ms), 4)}


def bench_live(prompts: int, max_tokens: int, concurrency: int, capture_core: int, eager: bool = False) -> dict:
    """One mirror run, both servers side by side; each server's threads pinned to its own core
    (`capture_core` for the capture route, the other core for the plain one): two vLLM CPU servers
    left to bind themselves both take core 0, and their spinning OpenMP threads then share it
    unevenly, which measures the scheduler, not the capture."""
    import duckdb

    tmp = Path(tempfile.mkdtemp(prefix="rc-bench-experts-"))
    common = {"model": "moe", "architecture": "moe", "num_experts": 8, "active_experts": 2, "max_concurrency": concurrency,
              "request": {"temperature": 0.0, "max_tokens": max_tokens, "seed": 0}}

    def serve(core: int) -> dict:
        return {"model": str(MODEL), "args": ARGS + (["--enforce-eager"] if eager else []),
                "env": {"VLLM_CPU_OMP_THREADS_BIND": str(core)}}

    routes = [
        {"name": "plain", "role": "baseline", **common, "serve": serve(1 - capture_core)},
        {"name": "capture", "role": "candidate", **common, "expert_capture": True, "serve": serve(capture_core)},
    ]
    (tmp / "routes.yaml").write_text(yaml.safe_dump({"routes": routes}))
    db = tmp / "store.duckdb"
    t0 = time.perf_counter()
    summary = run_mirror(load_routes(tmp / "routes.yaml"), MirrorOptions(corpus=CORPUS, db=db, limit=prompts, warmup=4))
    wall = time.perf_counter() - t0
    con = duckdb.connect(str(db), read_only=True)
    out = {"capture_core": capture_core, "eager": eager, "run_id": summary.run_id, "status": summary.status, "wall_s_incl_startup": round(wall, 1),
           "mirror_s": round(summary.duration_s, 1), "live_responses": summary.experts_live, "routes": {}}
    for name in ("plain", "capture"):
        n, errors, tokens, lat_sum, lat_mean, lat_p50 = con.execute(
            "SELECT count(*), count(error_type), sum(output_tokens), sum(latency_s), avg(latency_s), median(latency_s) "
            "FROM responses WHERE route = ? AND sample >= 0", [name]).fetchone()
        e2e, decode = con.execute("SELECT avg(e2e_s), avg(decode_s) FROM spans WHERE route = ? AND engine IS NOT NULL "
                                  "AND sample >= 0", [name]).fetchone()
        out["routes"][name] = {
            "calls": n, "errors": errors, "output_tokens": int(tokens or 0),
            "throughput_tok_s": round(concurrency * (tokens or 0) / lat_sum, 1) if lat_sum else None,
            "latency_mean_s": round(lat_mean, 3), "latency_p50_s": round(lat_p50, 3),
            "server_e2e_mean_s": None if e2e is None else round(e2e, 3),
            "server_decode_mean_s": None if decode is None else round(decode, 3),
        }
    plain, cap = out["routes"]["plain"], out["routes"]["capture"]
    out["overhead_throughput"] = round(1 - cap["throughput_tok_s"] / plain["throughput_tok_s"], 4)
    if plain["server_e2e_mean_s"] and cap["server_e2e_mean_s"]:
        out["overhead_server_e2e"] = round(cap["server_e2e_mean_s"] / plain["server_e2e_mean_s"] - 1, 4)
    out["in_server"] = capture_timer(db.parent / "logs" / summary.run_id / "capture.log")
    spool = sorted((db.parent / "logs" / summary.run_id).glob("capture.experts/*.jsonl"))
    out["spool_bytes"] = sum(p.stat().st_size for p in spool)
    out["expert_stats_rows"] = con.execute("SELECT count(*) FROM expert_stats WHERE source = 'live'").fetchone()[0]
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--prompts", type=int, default=150)
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--concurrency", type=int, default=4)
    p.add_argument("--eager", action="store_true", help="both servers with --enforce-eager (no compiled graph)")
    p.add_argument("--pairs", type=int, default=1, help="pairs of runs, the cores swapped within a pair")
    p.add_argument("--skip-probe", action="store_true")
    p.add_argument("--skip-live", action="store_true")
    a = p.parse_args()
    result = {"machine": f"{platform.machine()}, {os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f} at the start"}
    if not a.skip_probe:
        result["probe"] = bench_probe(a.prompts)
        print("probe:", json.dumps(result["probe"]), flush=True)
    if not a.skip_live:
        # In pairs, the cores swapped, so neither route keeps the busier core (the runner, other sessions).
        runs = []
        for _ in range(a.pairs):
            for core in (1, 0):
                runs.append(bench_live(a.prompts, a.max_tokens, a.concurrency, core, a.eager))
                print("live:", json.dumps(runs[-1]), flush=True)
        # Per-run ratios, then their geometric mean: a core that is faster by a factor in every run
        # cancels out, and a busier machine in one run does not outweigh the others.
        tput = [r["routes"]["capture"]["throughput_tok_s"] / r["routes"]["plain"]["throughput_tok_s"] for r in runs]
        e2e = [r["routes"]["capture"]["server_e2e_mean_s"] / r["routes"]["plain"]["server_e2e_mean_s"] for r in runs]
        result["live"] = {"runs": runs, "capture_over_plain_throughput": [round(x, 4) for x in tput],
                          "overhead_throughput": round(1 - statistics.geometric_mean(tput), 4),
                          "overhead_server_e2e": round(statistics.geometric_mean(e2e) - 1, 4)}
        shares = [r["in_server"]["capture_share_of_step"] for r in runs if r.get("in_server")]
        if shares:
            result["live"]["capture_share_of_step"] = shares
            print(f"capture's own time per engine step (plugin timer: tap + spool write): "
                  f"{', '.join(f'{x:.1%}' for x in shares)} of the step (median {statistics.median(shares):.1%})", flush=True)
        print(f"live overhead over {len(runs)} runs (geometric mean of per-run ratios): throughput "
              f"{result['live']['overhead_throughput']:+.1%}, server e2e {result['live']['overhead_server_e2e']:+.1%}; "
              f"per run capture/plain throughput {', '.join(f'{x:.3f}' for x in tput)}", flush=True)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
