"""A mirror run killed with SIGKILL part-way is resumed without repeating or duplicating calls."""

import os
import signal
import subprocess
import sys
import time

import duckdb
import httpx

from conftest import REPO, write_corpus, write_routes


def _requests_seen(stub) -> int:
    return len(httpx.get(stub.url + "/stub/headers").json())


def test_sigkill_then_resume(tmp_path, stub_server):
    stub = stub_server(answer="one two three four five six seven eight", tokens_per_s=20)
    routes = write_routes(tmp_path / "routes.yaml", [
        {"name": "base", "role": "baseline", "model": "a", "base_url": stub.base_url, "max_concurrency": 4},
        {"name": "cand", "role": "candidate", "model": "b", "base_url": stub.base_url, "max_concurrency": 4},
    ])
    corpus = write_corpus(tmp_path / "c.jsonl", [{"id": f"p{i:02d}", "cohort": "c", "prompt": f"q {i}"} for i in range(120)])
    db = tmp_path / "s.duckdb"
    cmd = [sys.executable, "-m", "harness.cli", "mirror", "--corpus", str(corpus), "--routes", str(routes), "--db", str(db),
           "--no-progress"]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 60
    while _requests_seen(stub) < 60 and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(1.5)  # let at least one batch flush
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL

    con = duckdb.connect(str(db))
    run_id, status = con.execute("SELECT run_id, status FROM runs").fetchone()
    done_before = con.execute("SELECT count(*) FROM measured_responses WHERE error_type IS NULL").fetchone()[0]
    con.close()
    assert status == "running"  # killed: nobody could mark it
    assert 0 < done_before < 200, done_before

    seen_before = _requests_seen(stub)
    out = subprocess.run([*cmd, "--resume", run_id], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"{done_before} calls already done" in out.stdout

    con = duckdb.connect(str(db), read_only=True)
    rows = con.execute("SELECT prompt_id, route, sample, count(*) FROM measured_responses GROUP BY ALL").fetchall()
    assert len(rows) == 240 and all(r[3] == 1 for r in rows)
    assert {(r[0], r[1]) for r in rows} == {(f"p{i:02d}", route) for i in range(120) for route in ("base", "cand")}
    assert con.execute("SELECT count(*) FROM responses WHERE error_type IS NOT NULL").fetchone()[0] == 0
    assert con.execute("SELECT status FROM runs").fetchone()[0] == "completed"
    # Only the calls without a stored row were sent again, after a fresh warm-up (2 calls per route).
    assert _requests_seen(stub) - seen_before == 240 - done_before + 2 * 2
    assert con.execute("SELECT count(*) FROM responses WHERE warmup").fetchone()[0] == 2 * 2


def test_sigint_marks_run_interrupted_and_prints_resume(tmp_path, stub_server):
    stub = stub_server(answer="a b c d e f g h", tokens_per_s=20)
    routes = write_routes(tmp_path / "routes.yaml", [{"name": "base", "role": "baseline", "model": "a", "base_url": stub.base_url}])
    corpus = write_corpus(tmp_path / "c.jsonl", [{"id": f"p{i}", "prompt": "q"} for i in range(100)])
    db = tmp_path / "s.duckdb"
    proc = subprocess.Popen([sys.executable, "-m", "harness.cli", "mirror", "--corpus", str(corpus), "--routes", str(routes),
                             "--db", str(db), "--no-progress"], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 60
    while _requests_seen(stub) < 10 and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 130, out
    con = duckdb.connect(str(db), read_only=True)
    run_id, status = con.execute("SELECT run_id, status FROM runs").fetchone()
    assert status == "interrupted"
    assert f"--resume {run_id}" in out
