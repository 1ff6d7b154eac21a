"""Time `routecheck report` and `routecheck gate` on a synthetic store of 1,000,000 responses.

2 routes x 500,000 prompts (10 cohorts, 1 sample) = 1M responses; 2 evaluators => 2M score rows.
A planted regression: the candidate's task_completion pass probability is 6 points lower in
cohort_3, and its latency 30% higher in cohort_7. The store is built with DuckDB SQL into the
schema of harness.store (building is not part of the timed figures).

    nice -n 10 python bench/report_scale.py [--prompts 500000] [--db /tmp/report_scale.duckdb] [--keep]

Prints: store build time, report numbers (load + statistics + serving tables), each output
renderer, and the gate end to end, plus whether the planted cohorts were flagged.
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

import duckdb

from harness.store import connect

ROUTES_JSON = ('[{"name": "dense", "role": "baseline", "architecture": "dense", "prices": {"input_per_mtok": 0.5, "output_per_mtok": 1.5}},'
               ' {"name": "moe", "role": "candidate", "architecture": "moe", "num_experts": 8, "active_experts": 2,'
               ' "prices": {"input_per_mtok": 0.3, "output_per_mtok": 0.9}}]')


def build(path: Path, prompts: int) -> None:
    if path.exists():
        path.unlink()
    con = connect(path)
    con.execute("SELECT setseed(0.42)")
    con.execute("INSERT INTO runs (run_id, status, routes, n_prompts) VALUES ('bench', 'completed', ?, ?)", [ROUTES_JSON, prompts])
    con.execute(f"""
        INSERT INTO prompts (run_id, prompt_id, cohort, messages)
        SELECT 'bench', 'p' || i, 'cohort_' || (i % 10),
               json_array(json_object('role', 'user', 'content', 'question ' || i || ' about topic ' || (i % 10)))
        FROM range({prompts}) t(i)""")
    # One latent difficulty per prompt shared by both routes (pairing), independent noise per route.
    con.execute(f"""
        CREATE TEMP TABLE base AS
        SELECT i, 'p' || i AS prompt_id, 'cohort_' || (i % 10) AS cohort, random() AS u, random() AS g
        FROM range({prompts}) t(i)""")
    for route, role, is_cand in (("dense", "baseline", 0), ("moe", "candidate", 1)):
        con.execute(f"""
            INSERT INTO responses (run_id, prompt_id, route, sample, role, cohort, text, input_tokens, output_tokens,
                                   total_tokens, latency_s, ttft_s, error_type, timed_out, trace_id, span_id)
            SELECT 'bench', prompt_id, '{route}', 0, '{role}', cohort, 'answer', 40, o, 40 + o,
                   lat * CASE WHEN {is_cand} = 1 AND cohort = 'cohort_7' THEN 1.3 ELSE 1 END,
                   lat * 0.2, CASE WHEN random() < 0.002 THEN 'http_500' END, false,
                   printf('%032x', i * 2 + {is_cand}), printf('%016x', i * 2 + {is_cand})
            FROM (SELECT *, 0.5 * exp(0.3 * sqrt(-2 * ln(random())) * cos(2 * pi() * random())) AS lat,
                         20 + CAST(floor(random() * 40) AS BIGINT) AS o FROM base)""")
        con.execute(f"""
            INSERT INTO scores (run_id, prompt_id, route, sample, evaluator, score, passed, applicable)
            SELECT 'bench', prompt_id, '{route}', 0, 'task_completion', CAST(p AS DOUBLE), p, true
            FROM (SELECT prompt_id,
                         (CASE WHEN random() < 0.5 THEN u ELSE random() END)
                           < 0.8 - CASE WHEN {is_cand} = 1 AND cohort = 'cohort_3' THEN 0.06 ELSE 0 END AS p
                  FROM base)""")
        con.execute(f"""
            INSERT INTO scores (run_id, prompt_id, route, sample, evaluator, score, passed, applicable)
            SELECT 'bench', prompt_id, '{route}', 0, 'groundedness', s, s >= 0.5, true
            FROM (SELECT prompt_id, least(1, greatest(0, 0.5 + 0.3 * g + 0.1 * random())) AS s FROM base)""")
    con.close()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--prompts", type=int, default=500_000)
    ap.add_argument("--db", type=Path, default=Path("/tmp/report_scale.duckdb"))
    ap.add_argument("--out", type=Path, default=Path("/tmp/report_scale_out"))
    ap.add_argument("--keep", action="store_true", help="reuse an existing store at --db")
    args = ap.parse_args()
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, python {platform.python_version()}, duckdb {duckdb.__version__}")

    if not (args.keep and args.db.exists()):
        t = time.perf_counter()
        build(args.db, args.prompts)
        print(f"build store: {time.perf_counter() - t:.1f} s")
    con = connect(args.db, read_only=True)
    n_resp, n_scores = con.execute("SELECT (SELECT count(*) FROM responses), (SELECT count(*) FROM scores)").fetchone()
    print(f"store: {n_resp:,} responses, {n_scores:,} score rows, {args.prompts:,} prompts")

    from harness.report.build import build_report

    t, cpu = time.perf_counter(), time.process_time()
    report = build_report(con, "bench")
    numbers_s, numbers_cpu = time.perf_counter() - t, time.process_time() - cpu
    con.close()
    load1 = os.getloadavg()[0]
    print(f"report numbers (load + statistics + serving tables + examples): {numbers_s:.2f} s wall, "
          f"{numbers_cpu:.2f} s CPU (all threads); load average {load1:.1f}")
    for k, v in report.timings_s.items():
        print(f"  {k}: {v:.2f} s")

    from harness.report.render import write_outputs

    for fmt in ("json", "md", "junit", "html"):
        t = time.perf_counter()
        write_outputs(report, args.out, (fmt,))
        print(f"render {fmt}: {time.perf_counter() - t:.2f} s")

    from harness.gate.evaluate import run_gate

    policy = args.out / "gate.yaml"
    policy.write_text("alpha: 0.05\nmetrics:\n  task_completion.pass_rate: {margin: 0.02}\n"
                      "  groundedness.score: {margin: 0.02}\n  latency_p99_s: {margin_rel: 0.10}\n")
    t = time.perf_counter()
    result, _ = run_gate(args.db, "bench", policy)
    print(f"gate end to end (report with policy + gate): {time.perf_counter() - t:.2f} s, exit code {result.exit_code}")
    failed = sorted({(c.metric, c.cohort) for c in result.checks if c.status == "regression"})
    print(f"gate regressions: {failed}")
    regs = sorted({(c.metric, c.cohort) for c in report.comparisons if c.verdict == "regression"})
    print(f"report regressions: {regs}")


if __name__ == "__main__":
    main()
