"""Overload: a large corpus to two routes at high concurrency, through the real CLI; nothing may be lost.

Two stub servers (one per route, each its own process) answer every call; `routecheck mirror`
runs as a child process, sampled every 0.25 s from /proc for its RSS and open file descriptors.
After the run the store is read back: every call must be one response row and one call span, no
key duplicated, and the throughput is given per quarter of the run (calls finished per second in
each quarter of the wall time), so a slowdown as the store grows shows.

    python bench/overload.py [--prompts 20000] [--concurrency 256] [--tokens 8] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import duckdb
import yaml

REPO = Path(__file__).resolve().parents[1]


def start_stub(tmp: Path, name: str, tokens: int) -> tuple[subprocess.Popen, str]:
    cfg = tmp / f"stub-{name}.json"
    cfg.write_text(json.dumps({"answer": " ".join(f"w{i}" for i in range(tokens))}))
    proc = subprocess.Popen([sys.executable, "-m", "harness.testing.stub_server", "--port", "0", "--config", str(cfg)],
                            stdout=subprocess.PIPE, text=True, cwd=REPO)
    line = proc.stdout.readline()
    if "listening on" not in line:
        proc.kill()
        raise SystemExit(f"stub {name} did not start: {line}")
    return proc, line.split("listening on ")[1].strip() + "/v1"


def _proc_sample(pid: int) -> tuple[int, int] | None:
    """(RSS bytes, open fds) of one process, or None once it is gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            rss = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS:"))
        return rss, len(os.listdir(f"/proc/{pid}/fd"))
    except (FileNotFoundError, ProcessLookupError, StopIteration):
        return None


class Sampler(threading.Thread):
    def __init__(self, pid: int, every_s: float = 0.25):
        super().__init__(daemon=True)
        self.pid, self.every_s, self.samples = pid, every_s, []  # (t, rss, fds)
        self.stop = threading.Event()

    def run(self) -> None:
        t0 = time.monotonic()
        while not self.stop.is_set():
            s = _proc_sample(self.pid)
            if s is None:
                return
            self.samples.append((time.monotonic() - t0, *s))
            self.stop.wait(self.every_s)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--prompts", type=int, default=20_000)
    p.add_argument("--concurrency", type=int, default=256)
    p.add_argument("--tokens", type=int, default=8, help="words per stub answer (SSE chunks)")
    p.add_argument("--json", type=Path, help="also write the figures here")
    args = p.parse_args()

    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        stubs = [start_stub(tmp, n, args.tokens) for n in ("base", "cand")]
        try:
            routes = tmp / "routes.yaml"
            routes.write_text(yaml.safe_dump({"routes": [
                {"name": name, "role": role, "model": "m", "base_url": url, "max_concurrency": args.concurrency,
                 "max_retries": 0}
                for (name, role), (_, url) in zip((("base", "baseline"), ("cand", "candidate")), stubs)]}))
            corpus = tmp / "corpus.jsonl"
            with open(corpus, "w") as f:
                for i in range(args.prompts):
                    f.write(json.dumps({"id": f"p{i}", "cohort": f"c{i % 8}", "prompt": f"question {i} about invoices"}) + "\n")
            db = tmp / "overload.duckdb"
            cmd = [sys.executable, "-m", "harness.cli", "mirror", "--corpus", str(corpus), "--routes", str(routes),
                   "--db", str(db), "--no-progress"]
            t0 = time.monotonic()
            child = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            sampler = Sampler(child.pid)
            sampler.start()
            stdout, stderr = child.communicate()
            wall = time.monotonic() - t0
            sampler.stop.set()
            sampler.join()
        finally:
            for proc, _ in stubs:
                proc.terminate()
                proc.wait(timeout=10)
        if child.returncode != 0:
            raise SystemExit(f"mirror exited {child.returncode}:\n{stdout}\n{stderr}")

        con = duckdb.connect(str(db), read_only=True)
        run_id = con.execute("SELECT run_id FROM runs").fetchone()[0]
        measured = "run_id = $run AND NOT coalesce(warmup, false)"
        rows, keys, errors = con.execute(
            f"SELECT count(*), count(DISTINCT (prompt_id, route, sample)), count(*) FILTER (WHERE error_type IS NOT NULL) "
            f"FROM responses WHERE {measured}", {"run": run_id}).fetchone()
        all_rows, call_spans = con.execute(
            "SELECT (SELECT count(*) FROM responses WHERE run_id = $run), "
            "(SELECT count(DISTINCT span_id) FROM spans WHERE run_id = $run AND name LIKE 'chat %')", {"run": run_id}).fetchone()
        error_types = dict(con.execute(
            f"SELECT route || ': ' || error_type, count(*) FROM responses WHERE {measured} AND error_type IS NOT NULL "
            "GROUP BY ALL ORDER BY 2 DESC", {"run": run_id}).fetchall())
        # Calls finished per second in each quarter of the span from the first start to the last end.
        quarters = con.execute(f"""
            WITH t AS (SELECT epoch(started_at) + latency_s AS done FROM responses WHERE {measured}),
                 b AS (SELECT min(done) AS lo, max(done) AS hi FROM t)
            SELECT least(floor(4 * (done - lo) / nullif(hi - lo, 0)), 3)::INT AS q, count(*) AS n, (hi - lo) / 4 AS width
            FROM t, b GROUP BY q, width ORDER BY q""", {"run": run_id}).fetchall()
        con.close()

    samples = sampler.samples
    rss = [s[1] for s in samples]
    fds = [s[2] for s in samples]
    half = len(samples) // 2
    out = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
        "prompts": args.prompts, "routes": 2, "concurrency": args.concurrency, "calls": 2 * args.prompts,
        "response_rows": rows, "distinct_keys": keys, "rows_incl_warmup": all_rows, "call_spans": call_spans,
        "error_rows": errors, "error_types": error_types, "wall_s": round(wall, 1), "calls_per_s": round(2 * args.prompts / wall, 1),
        "peak_rss_mib": round(max(rss) / 2**20, 1) if rss else None,
        "rss_mib_median_first_half": round(sorted(rss[:half])[half // 2] / 2**20, 1) if half else None,
        "rss_mib_median_second_half": round(sorted(rss[half:])[(len(rss) - half) // 2] / 2**20, 1) if half else None,
        "fds_max": max(fds) if fds else None, "fds_median": sorted(fds)[len(fds) // 2] if fds else None,
        "fds_last": fds[-1] if fds else None,
        "calls_per_s_by_quarter": [round(n / w, 1) if w else None for _, n, w in quarters],
        "summary_line": next((line for line in stdout.splitlines() if line.startswith("run ")), ""),
    }
    for k, v in out.items():
        print(f"{k:>28}: {v}")
    ok = rows == keys == 2 * args.prompts and call_spans == all_rows
    print("every call recorded once, with its span:", "yes" if ok else "NO")
    if args.json:
        args.json.write_text(json.dumps(out, indent=1))
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
