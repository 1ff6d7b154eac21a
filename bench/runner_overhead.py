"""Client CPU per request and requests/s of the mirror runner against the stub server.

The stub runs in its own process; this process runs the real runner (aiohttp streaming, OTel spans,
DuckDB writes). CPU is this process's user+system time over the run (time.process_time), so the
stub's work is not counted.

    python bench/runner_overhead.py [--requests 2000] [--tokens 16] [--concurrency 1 16 64 256]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from harness.config import load_routes  # noqa: E402
from harness.mirror.runner import MirrorOptions, run_mirror  # noqa: E402


def start_stub(tmp: Path, tokens: int) -> tuple[subprocess.Popen, str]:
    cfg = tmp / "stub.json"
    cfg.write_text(json.dumps({"answer": " ".join(f"w{i}" for i in range(tokens - 1))}))  # + "Echo"-free answer
    proc = subprocess.Popen([sys.executable, "-m", "harness.testing.stub_server", "--port", "0", "--config", str(cfg)],
                            stdout=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    return proc, line.split("listening on ")[1].strip() + "/v1"


def one(tmp: Path, base_url: str, concurrency: int, n: int) -> dict:
    routes = tmp / f"routes-{concurrency}.yaml"
    routes.write_text(yaml.safe_dump({"routes": [{"name": "r", "role": "baseline", "model": "m", "base_url": base_url,
                                                  "max_concurrency": concurrency, "max_retries": 0}]}))
    corpus = tmp / "corpus.jsonl"
    with open(corpus, "w") as f:
        for i in range(n):
            f.write(json.dumps({"id": f"p{i}", "cohort": f"c{i % 5}", "prompt": f"question {i} about the order status"}) + "\n")
    db = tmp / f"bench-{concurrency}.duckdb"
    cpu0, wall0 = time.process_time(), time.perf_counter()
    summary = run_mirror(load_routes(routes), MirrorOptions(corpus=corpus, db=db))
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    errors = summary.per_route["r"].errors
    return {"concurrency": concurrency, "requests": summary.calls, "errors": errors, "wall_s": wall,
            "requests_per_s": summary.calls / wall, "client_cpu_ms_per_request": 1000 * cpu / summary.calls}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--requests", type=int, default=2000)
    p.add_argument("--tokens", type=int, default=16, help="output tokens (SSE chunks) per answer")
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 16, 64, 256])
    args = p.parse_args()
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}; "
          f"{args.requests} requests per level, {args.tokens} streamed tokens per answer")
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        stub, base_url = start_stub(tmp, args.tokens)
        try:
            one(tmp, base_url, 4, 100)  # warm-up: imports, first connections
            print(f"{'concurrency':>11} {'requests':>8} {'errors':>6} {'req/s':>8} {'client CPU ms/req':>18}")
            for c in args.concurrency:
                r = one(tmp, base_url, c, args.requests)
                print(f"{r['concurrency']:>11} {r['requests']:>8} {r['errors']:>6} {r['requests_per_s']:>8.1f} "
                      f"{r['client_cpu_ms_per_request']:>18.3f}", flush=True)
        finally:
            stub.terminate()


if __name__ == "__main__":
    main()
