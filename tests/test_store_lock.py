"""A store held by a writer: a second writer is told who holds it, readers read a snapshot.

Real processes throughout (DuckDB's lock is per process): the holder is this test process or a
real `routecheck mirror` against the stub server, the others are `python -m harness.cli`.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import pytest

from conftest import REPO, write_corpus, write_routes
from harness.store import BatchWriter, connect, shared, upsert
from harness.store.lock import Owner, owner_path, write_owner
from harness.testing.synthetic import SyntheticSpec, build_store

ENV = {**os.environ, "PYTHONPATH": str(REPO)}


def routecheck(*args: str, cwd: Path, timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "harness.cli", *args], capture_output=True, text=True, cwd=cwd, env=ENV,
                          timeout=timeout)


def one_error_line(done: subprocess.CompletedProcess) -> str:
    assert done.returncode == 2 and "Traceback" not in done.stderr, (done.returncode, done.stderr)
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    return lines[0]


def sql_count(db: Path, query: str, cwd: Path) -> int:
    done = routecheck("sql", "--db", str(db), query, cwd=cwd)
    assert done.returncode == 0, done.stderr
    return int(next(line for line in done.stdout.splitlines() if line.strip("│ ").isdigit()).strip("│ "))


def can_open_for_writing(db: Path) -> str:
    code = "import duckdb, sys\ntry:\n    duckdb.connect(sys.argv[1]); print('opened')\nexcept duckdb.Error as e:\n    print(e)"
    return subprocess.run([sys.executable, "-c", code, str(db)], capture_output=True, text=True, timeout=60).stdout


def test_readers_get_snapshots_and_a_second_writer_is_told_who_holds_the_store(tmp_path):
    db = build_store(tmp_path / "s.duckdb", SyntheticSpec(cohorts={"legal": 10, "sql": 10}))
    owner = "test writer, run run-synth"
    con = connect(db, owner=owner)
    writer = BatchWriter(con)
    try:
        with shared(db, writer, owner) as service:
            runs = routecheck("runs", "--db", str(db), cwd=tmp_path)
            assert runs.returncode == 0 and "run-synth" in runs.stdout and "completed" in runs.stdout, runs.stderr
            assert sql_count(db, "select count(*) from responses", tmp_path) == 40

            # Rows committed after a snapshot are in the next one.
            with writer.locked() as c:
                upsert(c, "runs", [{"run_id": "run-later", "status": "running"}])
            assert sql_count(db, "select count(*) from runs", tmp_path) == 2
            assert service.snapshots == 3

            line = one_error_line(routecheck("score", "latest", "--db", str(db), cwd=tmp_path))
            assert f"s.duckdb: the store is in use by PID {os.getpid()} (test writer, run run-synth)" in line
            # Taking snapshots left DuckDB's lock in place (a copy from this process would drop it).
            assert "Could not set lock" in can_open_for_writing(db)
    finally:
        con.close()
    assert not owner_path(db).exists()
    assert "opened" in can_open_for_writing(db)


def test_a_holder_that_is_not_routecheck_is_named_and_a_stale_owner_file_ignored(tmp_path):
    db = build_store(tmp_path / "s.duckdb", SyntheticSpec(cohorts={"legal": 3}))
    write_owner(db, Owner(pid=1, what="routecheck mirror, run long-gone", snapshot_port=9, snapshot_token="x"))
    with duckdb.connect(str(db)):  # a plain DuckDB writer: no owner file of its own, no snapshots
        line = one_error_line(routecheck("runs", "--db", str(db), cwd=tmp_path))
    assert f"the store is in use by PID {os.getpid()} (python" in line and "not a routecheck mirror" in line
    assert "long-gone" not in line


def test_read_only_commands_work_while_a_real_mirror_runs(tmp_path, stub_server):
    """About 25 s: a mirror in its own process, slowed by the stub, is read by runs, sql, report and
    gate, refused to a second mirror, then interrupted; its rows are whole and unduplicated."""
    stub = stub_server(ttft_s=0.2, tokens_per_s=200)
    routes = write_routes(tmp_path / "routes.yaml", [
        {"name": "base", "role": "baseline", "model": "a", "base_url": stub.base_url, "max_concurrency": 2},
        {"name": "cand", "role": "candidate", "model": "b", "base_url": stub.base_url, "max_concurrency": 2},
    ])
    corpus = write_corpus(tmp_path / "c.jsonl", [{"id": f"p{i}", "cohort": f"c{i % 2}", "prompt": "hello there"} for i in range(2000)])
    db = tmp_path / "s.duckdb"
    mirror = subprocess.Popen([sys.executable, "-m", "harness.cli", "mirror", "-c", str(corpus), "-r", str(routes), "--db", str(db),
                               "--no-progress", "--warmup", "0"], cwd=tmp_path, env=ENV, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not (owner_path(db).exists() and json.loads(owner_path(db).read_text()).get("snapshot_port")):
            assert mirror.poll() is None, mirror.communicate()
            time.sleep(0.5)
        owner = json.loads(owner_path(db).read_text())
        assert owner["pid"] == mirror.pid and owner["what"].startswith("routecheck mirror, run ")
        run_id = owner["what"].removeprefix("routecheck mirror, run ")

        runs = routecheck("runs", "--db", str(db), cwd=tmp_path)
        assert runs.returncode == 0 and run_id in runs.stdout and "running" in runs.stdout, runs.stderr
        seen = sql_count(db, "select count(*) from responses", tmp_path)
        assert seen > 0
        report = routecheck("report", "latest", "--db", str(db), "--quiet", "--formats", "json", "--out-dir", str(tmp_path / "r"),
                            cwd=tmp_path)
        assert report.returncode == 0, report.stderr
        data = json.loads((tmp_path / "r" / "report.json").read_text())
        assert data["run_id"] == run_id and {r["name"] for r in data["routes"]} == {"base", "cand"}
        policy = tmp_path / "gate.yaml"
        policy.write_text("min_samples: 2\nmetrics:\n  latency_p99_s: {margin_rel: 5.0}\n")
        gate = routecheck("gate", "latest", "--db", str(db), "--policy", str(policy), "--out-dir", str(tmp_path / "g"), cwd=tmp_path)
        assert gate.returncode in (0, 1) and "Traceback" not in gate.stderr, (gate.returncode, gate.stderr)
        assert (tmp_path / "g" / "gate.junit.xml").exists()

        second = routecheck("mirror", "-c", str(corpus), "-r", str(routes), "--db", str(db), "--no-progress", cwd=tmp_path)
        assert f"the store is in use by PID {mirror.pid} (routecheck mirror, run {run_id})" in one_error_line(second)
        assert mirror.poll() is None, "the mirror ran to its end before the readers were done: make the corpus longer"
    finally:
        mirror.send_signal(signal.SIGTERM)
        out, err = mirror.communicate(timeout=120)
    assert mirror.returncode in (130, 143) and "Traceback" not in err, (mirror.returncode, err)
    assert not owner_path(db).exists()
    with duckdb.connect(str(db), read_only=True) as con:
        status, = con.execute("SELECT status FROM runs WHERE run_id = ?", [run_id]).fetchone()
        total, distinct = con.execute("SELECT count(*), count(DISTINCT (prompt_id, route, sample)) FROM responses").fetchone()
        errors, = con.execute("SELECT count(*) FROM responses WHERE error_type IS NOT NULL AND error_type <> 'cancelled'").fetchone()
    assert status == "interrupted"
    assert total == distinct and total > seen  # the mirror kept writing after every snapshot, and nothing doubled
    assert errors == 0
