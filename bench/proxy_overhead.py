"""What `routecheck proxy` adds on the primary's path, side by side in one run against the stub.

Conditions, each its own process, all in front of the same primary stub (streamed, TTFT 20 ms,
400 tokens/s, 32 tokens; `--stub lean`, the default, is harness/testing/lean_stub.py, the stub
server's bytes at about half its CPU, so the stubs take less of the shared machine from what is
measured; `--stub full` is the stub server itself):
    direct        the stub itself
    direct+cand   the stub itself, each request also sent (untimed) to the candidate stub: the
                  machine's load at 100 % mirroring without the proxy, the control for "proxy 100%"
    proxy 0%      routecheck proxy, --mirror-rate 0
    proxy 100%    routecheck proxy, --mirror-rate 1, a healthy candidate stub (max_concurrency 512)
    stalled 100%  routecheck proxy, --mirror-rate 1, a candidate that answers after --stall-s (30 s):
                  its 8 slots stay busy, its queue (256) fills and the rest is dropped and counted
Open-loop Poisson load at --rate from this process (harness/testing/load.py); blocks of --block-s go
round-robin over the conditions, --rounds times, so a change in the shared machine's load hits every
condition alike. Each block starts with --settle-s of the same load that is not counted: after the
other conditions' blocks the client's connections are new, and the proxy has dropped its upstream
ones (idle over 3 s, harness/proxy/h1.py), so the first requests pay for connects through the proxy
(its early requests' p90 was +4 ms over direct's in 5 s blocks), a gap a steady 200 req/s never has;
`--settle-s 0` counts them. Printed: TTFT and total latency p50/p99/p99.9, the difference against direct, the
proxy's CPU per request (user + system from /proc, psutil), and what each proxy mirrored and dropped;
then what each proxy adds at p50 and p99 with a 95 % interval from resampling the rounds
(`load.added_quantile`: one run's p99 moves by a few ms with the machine's load, so a single figure
without its interval cannot say whether the bar, +1 ms at p50 and +5 ms at p99, held);
also the CPU per request of the load generator and of the stubs in each condition, to show they are
not what limits it (the direct condition's latency is the stub's own plus the load generator's). The proxy's CPU is its two
processes' (the recording process, `routecheck proxy` itself, and the serving process it starts).

Then the one-core ramp: a fresh proxy pinned to one core (taskset) at 100% mirroring, each rate of
--ramp for --ramp-s; a rate is sustained when every request succeeds, nothing is dropped from the
mirror queue, and total latency stays near the stub's own (~100 ms): p50 <= 200 ms, p99 <= 1 s. The stubs and the load
generator are pinned to the other core(s), so on a small machine this is a lower bound.

    python bench/proxy_overhead.py [--rate 200] [--block-s 5] [--rounds 8] [--ramp 50,75,100,150,200,300] [--ramp-s 6] [--pin]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import psutil
import uvloop
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from harness.testing.load import added_quantile, run_load, summary, to_dicts  # noqa: E402
from harness.testing.proxy_process import ProxyProcess  # noqa: E402

TOKENS = 32
BAR_S = {0.5: 0.001, 0.99: 0.005}  # issue 22: the proxy adds at most 1 ms at p50 and 5 ms at p99


STUBS = {"lean": "harness.testing.lean_stub", "full": "harness.testing.stub_server"}


def start_stub(tmp: Path, name: str, kind: str = "lean", **cfg) -> tuple[subprocess.Popen, str]:
    path = tmp / f"{name}.json"
    path.write_text(json.dumps({"answer": " ".join(f"w{i}" for i in range(TOKENS)), "ttft_s": 0.02, "tokens_per_s": 400, **cfg}))
    proc = subprocess.Popen([sys.executable, "-m", STUBS[kind], "--port", "0", "--config", str(path)],
                            stdout=subprocess.PIPE, text=True, cwd=REPO)
    line = proc.stdout.readline()
    if "listening on" not in line:
        raise RuntimeError(f"stub {name} did not start: {line}")
    return proc, line.split("listening on ")[1].strip() + "/v1"


def routes_file(tmp: Path, name: str, primary: str, candidate: str, cand_concurrency: int) -> Path:
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump({"routes": [
        {"name": "dense", "role": "baseline", "model": "dense", "base_url": primary, "max_concurrency": 512},
        {"name": "moe", "role": "candidate", "model": "moe", "base_url": candidate, "max_concurrency": cand_concurrency}]}))
    return path


def body(i: int) -> dict:
    return {"model": "dense", "stream": True, "stream_options": {"include_usage": True},
            "messages": [{"role": "user", "content": f"question {i}: " + " ".join(f"w{k}" for k in range(8))}]}


def cpu_s(pid: int) -> float:
    t = psutil.Process(pid).cpu_times()
    return t.user + t.system


def proxy_cpu_s(pid: int) -> tuple[float, float]:
    """(recording process, serving process) CPU seconds: `routecheck proxy` and the child that answers."""
    proc = psutil.Process(pid)
    return cpu_s(pid), sum(cpu_s(c.pid) for c in proc.children(recursive=True))


def mirror_counts(p: ProxyProcess) -> dict[str, int]:
    s = httpx.get(p.url + "/admin/stats", timeout=10).json()
    out = {"mirrored": 0, "queue_full": 0, "not_sampled": 0}
    for c in s["mirror"].values():
        for k in out:
            out[k] += c[k]
    return out


def ms(x: float | None) -> str:
    return "-" if x is None else f"{1000 * x:.2f}"


def _values(rounds: list[list], key: str) -> list[list[float]]:
    return [[getattr(s, key) for s in r if s.ok and getattr(s, key) is not None] for r in rounds]


def print_added(by_round: dict[str, list[list]], conds: dict) -> None:
    """Each proxy's added p50 and p99 (TTFT, total) against direct with 95 % intervals over rounds, and
    whether the bar held: at the point estimate, and at the interval's upper end."""
    print(f"\nadded against direct, 95 % interval from resampling the {len(by_round['direct'])} rounds (ms); "
          f"bar: +{1000 * BAR_S[0.5]:g} at p50, +{1000 * BAR_S[0.99]:g} at p99")
    pairs = [(c, "direct") for c, (_, p, _) in conds.items() if p is not None]
    pairs.append(("proxy 100%", "direct+cand"))  # the candidate stub as loaded, no proxy: what the proxy itself adds
    for c, base in pairs:
        cells, held, held_hi = [], True, True
        for key, label in (("ttft_s", "TTFT"), ("latency_s", "total")):
            for q in (0.5, 0.99):
                point, lo, hi = added_quantile(_values(by_round[base], key), _values(by_round[c], key), q)
                held &= point <= BAR_S[q]
                held_hi &= hi <= BAR_S[q]
                cells.append(f"{label} p{100 * q:g} {1000 * point:+.2f} [{1000 * lo:+.2f}, {1000 * hi:+.2f}]")
        name = c if base == "direct" else f"{c} vs {base}"
        verdict = ("held, also at the upper ends" if held_hi else "held at the point estimates; an upper end over it") if held else "NOT held"
        print(f"  {name:<26} " + "  ".join(cells) + f"  bar: {verdict}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rate", type=float, default=200.0)
    ap.add_argument("--block-s", type=float, default=5.0)
    ap.add_argument("--rounds", type=int, default=8, help="the intervals resample rounds: use at least 5")
    ap.add_argument("--settle-s", type=float, default=0.5, help="the start of each block, not counted (connections)")
    ap.add_argument("--stall-s", type=float, default=30.0)
    ap.add_argument("--ramp", default="50,75,100,150,200,300")
    ap.add_argument("--ramp-s", type=float, default=6.0)
    ap.add_argument("--core", type=int, default=0, help="the core the ramp's proxy (and with --pin every proxy) is pinned to")
    ap.add_argument("--pin", action="store_true",
                    help="side by side too: each proxy on --core, the stubs and the load generator on the other cores "
                         "(a deployment gives the proxy cores of its own; unpinned, all share the machine)")
    ap.add_argument("--stub", choices=sorted(STUBS), default="lean", help="lean: harness/testing/lean_stub.py; full: the stub server")
    ap.add_argument("--b-tree", type=Path, help="a second checkout whose proxy runs too (conditions 'B 0%%', 'B 100%%'), "
                                                 "interleaved in the same rounds: two builds compared side by side in one run")
    ap.add_argument("--samples-out", type=Path, help="also write every timed request as JSON lines (condition, round, "
                                                       "and load.Sample's fields) for a look at the tails")
    args = ap.parse_args()
    env = {"PYTHONPATH": str(REPO)}
    procs: list[subprocess.Popen] = []
    proxies: list[ProxyProcess] = []
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        try:
            primary_proc, primary = start_stub(tmp, "primary", args.stub)
            cand_proc, cand = start_stub(tmp, "candidate", args.stub)
            stall_proc, stalled = start_stub(tmp, "stalled", args.stub, ttft_s=args.stall_s)
            procs += [primary_proc, cand_proc, stall_proc]
            others = (os.sched_getaffinity(0) - {args.core}) or os.sched_getaffinity(0)
            if args.pin:
                for pid in (0, *(q.pid for q in procs)):  # the load generator and the stubs keep off the proxies' core
                    os.sched_setaffinity(pid, others)
            normal = routes_file(tmp, "normal", primary, cand, 512)
            stall = routes_file(tmp, "stall", primary, stalled, 8)
            # (URL, proxy, a URL also sent each request untimed): "direct+cand" puts on the candidate stub the
            # load the 100 % proxy's mirror does, with no proxy, so what the proxy itself adds at 100 % can be
            # told from what the candidate's work costs the shared machine.
            conds: dict[str, tuple[str, ProxyProcess | None, str | None]] = {
                "direct": (primary + "/chat/completions", None, None),
                "direct+cand": (primary + "/chat/completions", None, cand + "/chat/completions")}
            for name, routes, rate in (("proxy 0%", normal, "0"), ("proxy 100%", normal, "1"), ("stalled 100%", stall, "1")):
                p = ProxyProcess(routes, tmp / f"{name.split()[0]}-{rate}.duckdb", ["--mirror-rate", rate, "--shutdown-grace", "1"],
                                 env=env, cwd=REPO, cpu=args.core if args.pin else None)
                proxies.append(p)
                conds[name] = (p.base_url + "/chat/completions", p, None)
            if args.b_tree:
                for name, rate in (("B 0%", "0"), ("B 100%", "1")):
                    p = ProxyProcess(normal, tmp / f"b-{rate}.duckdb", ["--mirror-rate", rate, "--shutdown-grace", "1"],
                                     env={"PYTHONPATH": str(args.b_tree)}, cwd=args.b_tree, cpu=args.core if args.pin else None)
                    proxies.append(p)
                    conds[name] = (p.base_url + "/chat/completions", p, None)
            for url, _, also in conds.values():  # warm-up: connections, first-call costs
                uvloop.run(run_load(url, 50, 1.0, body=body, also_url=also))
            by_round: dict[str, list[list]] = {c: [] for c in conds}  # one block's samples per round
            sent = {c: 0 for c in conds}
            cpu = {c: 0.0 for c in conds}  # the proxy's two processes
            serving_cpu = {c: 0.0 for c in conds}  # of which the serving process
            gen_cpu = {c: 0.0 for c in conds}  # the load generator (this process)
            stub_cpu = {c: 0.0 for c in conds}  # primary and candidate stubs
            load0 = os.getloadavg()
            t_start = time.time()
            for rnd in range(args.rounds):
                for c, (url, p, also) in conds.items():
                    before = proxy_cpu_s(p.pid) if p else (0.0, 0.0)
                    stubs0, gen0 = sum(cpu_s(q.pid) for q in procs), time.process_time()
                    got = uvloop.run(run_load(url, args.rate, args.settle_s + args.block_s, body=body, seed=rnd, also_url=also))
                    sent[c] += len(got)  # CPU per request counts the settling ones too
                    got = [x for x in got if x.scheduled_s >= args.settle_s]
                    by_round[c].append(got)
                    gen_cpu[c] += time.process_time() - gen0
                    stub_cpu[c] += sum(cpu_s(q.pid) for q in procs) - stubs0
                    if p:
                        now = proxy_cpu_s(p.pid)
                        cpu[c] += sum(now) - sum(before)
                        serving_cpu[c] += now[1] - before[1]
            print(f"machine: {os.cpu_count()} cores, {psutil.virtual_memory().total / 2**30:.0f} GiB; "
                  f"load average {load0[0]:.2f} before, {os.getloadavg()[0]:.2f} after ({time.time() - t_start:.0f} s)")
            print(f"pinned: each proxy on core {args.core}, stubs and load generator on cores {sorted(others)}" if args.pin
                  else "not pinned: proxies, stubs and load generator share every core")
            print(f"load: {args.rate:g} req/s Poisson, {args.rounds} x {args.block_s:g} s blocks per condition (each after "
                  f"{args.settle_s:g} s not counted), round-robin; "
                  f"{args.stub} stub, TTFT 20 ms, 400 tok/s, {TOKENS} tokens streamed; stalled candidate answers after {args.stall_s:g} s")
            samples = {c: [x for got in rounds for x in got] for c, rounds in by_round.items()}
            base = summary(samples["direct"])
            print(f"{'condition':<13} {'ok':>5} {'err':>4} {'TTFT p50':>8} {'p99':>7} {'p99.9':>7} {'total p50':>9} {'p99':>7} "
                  f"{'p99.9':>7} {'+TTFT p50':>9} {'+p99':>6} {'+tot p50':>8} {'+p99':>6} {'CPU ms/req':>10} {'mirrored':>8} {'dropped':>7}")
            for c, (_, p, _) in conds.items():
                s = summary(samples[c])
                dif = {k: (s[k] - base[k]) if s[k] is not None and base[k] is not None else None
                       for k in ("ttft_p50_s", "ttft_p99_s", "latency_p50_s", "latency_p99_s")}
                m = mirror_counts(p) if p else None
                print(f"{c:<13} {s['ok']:>5} {s['errors']:>4} {ms(s['ttft_p50_s']):>8} {ms(s['ttft_p99_s']):>7} {ms(s['ttft_p999_s']):>7} "
                      f"{ms(s['latency_p50_s']):>9} {ms(s['latency_p99_s']):>7} {ms(s['latency_p999_s']):>7} "
                      f"{ms(dif['ttft_p50_s']):>9} {ms(dif['ttft_p99_s']):>6} {ms(dif['latency_p50_s']):>8} {ms(dif['latency_p99_s']):>6} "
                      f"{(1000 * cpu[c] / max(sent[c], 1)) if p else float('nan'):>10.3f} "
                      f"{m['mirrored'] if m else '-':>8} {m['queue_full'] if m else '-':>7}", flush=True)
            print_added(by_round, conds)
            if args.samples_out:
                with args.samples_out.open("w") as f:
                    for c, rounds in by_round.items():
                        for rnd, got in enumerate(rounds):
                            for row in to_dicts(got):
                                f.write(json.dumps({"condition": c, "round": rnd, **row}) + "\n")
            for c, (_, p, _) in conds.items():
                n = max(sent[c], 1)
                print(f"{c}: " + (f"proxy {1000 * cpu[c] / n * args.rate / 1000:.2f} cores at {args.rate:g} req/s "
                                  f"(serving {1000 * serving_cpu[c] / n:.2f} ms/req, recording {1000 * (cpu[c] - serving_cpu[c]) / n:.2f}); "
                                  if p else "")
                      + f"load generator {1000 * gen_cpu[c] / n:.2f} ms/req, stubs {1000 * stub_cpu[c] / n:.2f} ms/req")
            for p in proxies:
                p.stop(signal.SIGTERM)
            proxies.clear()

            # -- one core, 100% mirrored: the highest rate sustained --------------------------------
            if not args.ramp:
                return
            p = ProxyProcess(normal, tmp / "ramp.duckdb", ["--mirror-rate", "1"], env=env, cwd=REPO, cpu=args.core)
            proxies.append(p)
            for pid in (0, primary_proc.pid, cand_proc.pid):  # the load generator and the stubs keep off the proxy's core
                os.sched_setaffinity(pid, others)
            url = p.base_url + "/chat/completions"
            uvloop.run(run_load(url, 50, 1.0, body=body))
            print(f"\none core (taskset -c {args.core}; load generator and stubs on cores {sorted(others)}), "
                  f"mirroring 100% to a healthy candidate, {args.ramp_s:g} s per rate:")
            print(f"{'offered/s':>9} {'done/s':>7} {'ok':>6} {'err':>4} {'total p50':>9} {'p99':>7} {'proxy CPU':>9} "
                  f"{'ms/req':>7} {'mirrored':>8} {'dropped':>7} sustained")
            best = None
            for rate in [float(x) for x in args.ramp.split(",")]:
                m0, c0, w0 = mirror_counts(p), sum(proxy_cpu_s(p.pid)), time.perf_counter()
                got = uvloop.run(run_load(url, rate, args.ramp_s, body=body, seed=int(rate)))
                wall = time.perf_counter() - w0
                used = sum(proxy_cpu_s(p.pid)) - c0
                time.sleep(1.0)  # mirrored calls finish
                m1 = mirror_counts(p)
                s = summary(got)
                dropped = m1["queue_full"] - m0["queue_full"]
                ok = (s["errors"] == 0 and dropped == 0 and s["latency_p99_s"] is not None
                      and s["latency_p50_s"] <= 0.2 and s["latency_p99_s"] <= 1.0)
                if ok:
                    best = rate
                print(f"{rate:>9g} {s['ok'] / wall:>7.0f} {s['ok']:>6} {s['errors']:>4} {ms(s['latency_p50_s']):>9} "
                      f"{ms(s['latency_p99_s']):>7} {used / wall:>8.0%} {1000 * used / max(len(got), 1):>7.3f} "
                      f"{m1['mirrored'] - m0['mirrored']:>8} {dropped:>7} {'yes' if ok else 'no'}", flush=True)
                if not ok:
                    break
            print(f"highest rate sustained on one core with 100% mirroring: {best if best is not None else 'none'} req/s (of those tried)")
            p.stop(signal.SIGTERM)
            print(p.output.strip().splitlines()[-1])
            proxies.clear()
        finally:
            for p in proxies:
                p.stop(signal.SIGKILL)
            for proc in procs:
                proc.terminate()
                proc.wait(10)


if __name__ == "__main__":
    main()
