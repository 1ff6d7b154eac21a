"""Agreement of tool_selection's BFCL checking with known verdicts, through real stub routes.

Each row of ../shared/data/tool_calls_dev.jsonl (BFCL simple, parallel, live, irrelevance) becomes
cases whose verdict is known by construction:

  right            the calls built from the possible answer (first accepted value of each parameter,
                   a parameter whose first accepted value is "" left out), parallel calls shuffled
  right_alt        another accepted answer: every optional parameter left out, the last accepted
                   value of the others (only when it differs from `right`)
  wrong_name       one call names a function that is not the expected one
  wrong_value      one parameter's value is of the right type but not accepted
  missing_required one required (or not omissible) parameter left out
  unexpected_param one parameter the schema does not declare added
  no_call          no tool call (answer in text)
  wrong_count      one call too many (single-call rows) or one too few (parallel rows)
  irrelevance_no_call / irrelevance_call   irrelevance rows: no call is right, a call is wrong

The cases are mirrored to a baseline and a candidate route, both the project's stub server on
127.0.0.1 answering with the case's scripted calls ([[stub:KEY]] marker in the prompt), stored in
DuckDB by the real runner, scored by `harness.score.run.score_run(..., ["tool_selection"])`, and
the stored `passed` compared with the known verdict. A peer, DeepEval's ToolCorrectnessMetric
(deterministic: exact name + input parameters, order not considered), is run on the same stored
calls from a separate venv (/work/peer-venv) through bench/peer_deepeval_tools.py, with the
`right` calls as its single reference answer (it takes one expected call list, not BFCL's
accepted-value sets).

    python bench/bfcl_agreement.py [--data ../shared/data/tool_calls_dev.jsonl] [--peer-python /work/peer-venv/bin/python]
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import random
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from evaluators.bfcl import standardize_string  # noqa: E402
from harness.score.run import score_run  # noqa: E402
from harness import store  # noqa: E402
from harness.config import load_routes  # noqa: E402
from harness.mirror.runner import MirrorOptions, run_mirror  # noqa: E402
from harness.store.views import MEASURED_RESPONSES  # noqa: E402

KINDS = ["right", "right_alt", "wrong_name", "wrong_value", "missing_required", "unexpected_param", "no_call", "wrong_count",
         "irrelevance_no_call", "irrelevance_call"]
RIGHT_KINDS = {"right", "right_alt", "irrelevance_no_call"}
BAD = "qqxq"


class Unbuildable(Exception):
    """The ground truth accepts no value for a parameter that cannot be omitted."""


def _build(value: Any, pick: int) -> Any:
    """A concrete value from an accepted value: objects' values are lists of accepted values."""
    if isinstance(value, dict):
        out = {}
        for k, acc in value.items():
            acc = acc if isinstance(acc, list) else [acc]
            chosen = _choose(acc, pick)
            if chosen is not _OMIT:
                out[k] = chosen
        return out
    if isinstance(value, list) and value and all(isinstance(x, dict) for x in value):
        return [_build(x, pick) for x in value]
    return copy.deepcopy(value)


_OMIT = object()


def _choose(accepted: list[Any], pick: int, required: bool = False) -> Any:
    """pick 0: the first accepted value ("" = omit); pick -1: omit when allowed, else the last value.
    A parameter the schema requires is never omitted, even where the ground truth accepts "" (BFCL's
    required check comes first, so leaving it out fails there too)."""
    if required:
        accepted = [a for a in accepted if a != ""]
    if pick == 0:
        if not accepted:
            raise Unbuildable
        return _OMIT if accepted[0] == "" else _build(accepted[0], pick)
    if "" in accepted:
        return _OMIT
    if not accepted:
        raise Unbuildable
    return _build(accepted[-1], pick)


def _calls(answers: list[tuple[str, dict]], pick: int, schemas: dict[str, dict] | None = None) -> list[dict[str, Any]]:
    out = []
    for name, params in answers:
        args = {}
        required = set(((schemas or {}).get(name) or {}).get("required") or [])
        for p, acc in params.items():
            v = _choose(acc, pick, p in required)
            if v is not _OMIT:
                args[p] = v
        out.append({"name": name, "arguments": args})
    return out


def _std(v: Any) -> Any:
    return standardize_string(v) if isinstance(v, str) else [_std(x) for x in v] if isinstance(v, list) else (
        {k: _std(x) for k, x in v.items()} if isinstance(v, dict) else v)


def _wrong(value: Any, accepted: list[Any]) -> Any:
    """A value of the same JSON type that is not accepted (None when there is none to make)."""
    if isinstance(value, bool):
        cand = not value
    elif isinstance(value, int):
        cand = max([a for a in accepted if isinstance(a, int) and not isinstance(a, bool)] + [value]) + 7919
    elif isinstance(value, float):
        cand = max([a for a in accepted if isinstance(a, (int, float)) and not isinstance(a, bool)] + [value]) + 7919.5
    elif isinstance(value, str):
        cand = BAD + value
    elif isinstance(value, list):
        cand = value + [copy.deepcopy(value[0]) if value else BAD]
    elif isinstance(value, dict) and value:
        k = next(iter(value))
        inner = _wrong(value[k], [])
        if inner is None:
            return None
        cand = {**value, k: inner}
    else:
        return None
    if any(_std(cand) == _std(a) for a in accepted if a != ""):
        return None
    return cand


def make_cases(rows: list[dict[str, Any]], seed: int = 0) -> tuple[list[dict[str, Any]], Counter]:
    rng = random.Random(seed)
    cases, skipped = [], Counter()

    def add(row, kind, calls):
        cases.append({"row": row, "kind": kind, "verdict": kind in RIGHT_KINDS, "calls": calls})

    for row in rows:
        pa = (row.get("expected") or {}).get("possible_answer")
        if pa is None:  # irrelevance: {"tool": null}
            fn = row["tools"][0]["function"]
            props = (fn.get("parameters") or {}).get("properties") or {}
            add(row, "irrelevance_no_call", [])
            add(row, "irrelevance_call", [{"name": fn["name"], "arguments": {p: "x" for p in list(props)[:2]}}])
            continue
        answers = [(name, params) for entry in pa for name, params in entry.items()]
        schemas = {t["function"]["name"]: t["function"].get("parameters") or {} for t in row["tools"]}
        try:
            right = _calls(answers, 0, schemas)
        except Unbuildable:
            skipped["unbuildable ground truth (a required parameter with no accepted value)"] += 1
            continue
        order = list(range(len(right)))
        rng.shuffle(order)
        add(row, "right", [right[k] for k in order])
        try:
            alt = _calls(answers, -1, schemas)
            if alt != right:
                add(row, "right_alt", alt)
        except Unbuildable:
            pass
        k = rng.randrange(len(right))  # the call that is made wrong
        name, params = answers[k]
        schema = schemas.get(name, {})
        required = set(schema.get("required") or []) | {p for p, acc in params.items() if "" not in acc}

        bad = copy.deepcopy(right)
        bad[k]["name"] = name + "_v2"
        add(row, "wrong_name", bad)

        for p, v in right[k]["arguments"].items():
            w = _wrong(v, params[p])
            if w is not None:
                bad = copy.deepcopy(right)
                bad[k]["arguments"][p] = w
                add(row, "wrong_value", bad)
                break
        else:
            skipped["wrong_value: no parameter to make wrong"] += 1

        present = [p for p in right[k]["arguments"] if p in required]
        if present:
            bad = copy.deepcopy(right)
            del bad[k]["arguments"][present[0]]
            add(row, "missing_required", bad)
        else:
            skipped["missing_required: no required parameter"] += 1

        bad = copy.deepcopy(right)
        bad[k]["arguments"][BAD + "_extra"] = "1"
        add(row, "unexpected_param", bad)
        add(row, "no_call", [])
        if len(right) == 1:
            add(row, "wrong_count", right + copy.deepcopy(right))
        else:
            add(row, "wrong_count", [c for i, c in enumerate(right) if i != k])
    return cases, skipped


def write_inputs(tmp: Path, cases: list[dict[str, Any]]) -> tuple[Path, Path]:
    script, corpus = {}, tmp / "corpus.jsonl"
    with open(corpus, "w") as f:
        for i, case in enumerate(cases):
            key = f"c{i}"
            case["id"] = f"{case['row']['id']}::{case['kind']}"
            script[key] = case["calls"]
            messages = copy.deepcopy(case["row"]["messages"])
            last = max(j for j, m in enumerate(messages) if m["role"] == "user")
            messages[last]["content"] = (messages[last].get("content") or "") + f" [[stub:{key}]]"
            f.write(json.dumps({"id": case["id"], "cohort": case["kind"], "messages": messages, "tools": case["row"]["tools"],
                                "expected": case["row"]["expected"], "metadata": {"bfcl_id": case["row"]["id"], "verdict": case["verdict"]}}) + "\n")
    (tmp / "tool_calls.json").write_text(json.dumps(script))
    return corpus, tmp / "tool_calls.json"


def start_stub(script: Path) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen([sys.executable, "-m", "harness.testing.stub_server", "--port", "0", "--answer", "I cannot help with that.",
                             "--tool-calls", str(script)], stdout=subprocess.PIPE, text=True, cwd=ROOT)
    line = proc.stdout.readline()
    return proc, line.split("listening on ")[1].strip() + "/v1"


def run_peer(peer_python: str, tmp: Path, cases: list[dict], stored: dict[tuple[str, str], Any]) -> tuple[dict | None, str]:
    """DeepEval ToolCorrectnessMetric on the stored calls; (verdicts by (id, route), note)."""
    if not Path(peer_python).exists():
        return None, f"peer not run: {peer_python} does not exist (python3 -m venv /work/peer-venv && /work/peer-venv/bin/pip install deepeval)"
    inp, out = tmp / "peer_in.jsonl", tmp / "peer_out.jsonl"
    with open(inp, "w") as f:
        for c in cases:
            schemas = {t["function"]["name"]: t["function"].get("parameters") or {} for t in c["row"]["tools"]}
            reference = [] if c["kind"].startswith("irrelevance") else _calls(
                [(n, p) for e in c["row"]["expected"]["possible_answer"] for n, p in e.items()], 0, schemas)
            for route in ("baseline", "candidate"):
                called = []
                for tc in stored.get((c["id"], route)) or []:
                    fn = tc.get("function") or tc
                    try:
                        args = json.loads(fn.get("arguments") or "{}")
                    except json.JSONDecodeError:
                        args = {"_raw": fn.get("arguments")}
                    called.append({"name": fn.get("name"), "arguments": args})
                f.write(json.dumps({"key": [c["id"], route], "called": called, "expected": reference}) + "\n")
    env = {k: v for k, v in os.environ.items() if k != "OPENAI_API_KEY"}
    env.update(DEEPEVAL_TELEMETRY_OPT_OUT="YES", DEEPEVAL_DISABLE_PROGRESS_BAR="YES")
    helper = ROOT / "bench" / "peer_deepeval_tools.py"
    p = subprocess.run([peer_python, str(helper), str(inp), str(out)], capture_output=True, text=True, env=env, cwd=tmp)
    if p.returncode != 0:
        return None, "peer failed: " + (p.stderr.strip().splitlines() or ["(no stderr)"])[-1]
    verdicts = {}
    for line in open(out):
        r = json.loads(line)
        verdicts[tuple(r["key"])] = r["passed"]
    return verdicts, p.stdout.strip()


def table(title: str, got: dict[tuple[str, str], Any], cases: list[dict]) -> tuple[float, dict[str, float]]:
    per = defaultdict(lambda: [0, 0])
    for c in cases:
        for route in ("baseline", "candidate"):
            v = got.get((c["id"], route))
            per[c["kind"]][0] += v is c["verdict"] or v == c["verdict"]
            per[c["kind"]][1] += 1
    print(f"\n{title}")
    print(f"{'kind':<22}{'verdict':>8}{'cases':>8}{'agree':>8}{'agreement':>11}")
    for kind in KINDS:
        if kind in per:
            a, n = per[kind]
            print(f"{kind:<22}{'pass' if kind in RIGHT_KINDS else 'fail':>8}{n:>8}{a:>8}{100 * a / n:>10.2f}%")
    a, n = sum(v[0] for v in per.values()), sum(v[1] for v in per.values())
    print(f"{'overall':<22}{'':>8}{n:>8}{a:>8}{100 * a / n:>10.2f}%")
    return a / n, {k: v[0] / v[1] for k, v in per.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "tool_calls_dev.jsonl"))
    p.add_argument("--peer-python", default="/work/peer-venv/bin/python")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--show-disagreements", type=int, default=10)
    args = p.parse_args()
    print("command: python bench/bfcl_agreement.py " + " ".join(sys.argv[1:]))
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, no GPU, Python {platform.python_version()}")
    rows = [json.loads(line) for line in open(args.data)]
    cases, skipped = make_cases(rows, args.seed)
    print(f"{len(rows)} BFCL rows ({dict(Counter(r['cohort'] for r in rows))}) -> {len(cases)} cases x 2 routes")
    for why, n in skipped.items():
        print(f"  skipped: {n} {why}")
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        corpus, script = write_inputs(tmp, cases)
        stub, base_url = start_stub(script)
        try:
            routes = tmp / "routes.yaml"
            routes.write_text(yaml.safe_dump({"routes": [
                {"name": "baseline", "role": "baseline", "model": "stub", "base_url": base_url, "max_concurrency": 32, "max_retries": 0},
                {"name": "candidate", "role": "candidate", "model": "stub", "base_url": base_url, "max_concurrency": 32, "max_retries": 0}]}))
            db = tmp / "bfcl.duckdb"
            summary = run_mirror(load_routes(routes), MirrorOptions(corpus=corpus, db=db))
        finally:
            stub.terminate()
        t_mirror = time.perf_counter() - t0
        errors = {r: t.errors for r, t in summary.per_route.items()}
        score_run(db, summary.run_id, ["tool_selection"], progress=False)
        t_score = time.perf_counter() - t0 - t_mirror
        con = store.connect(db)
        try:
            got, reasons = {}, {}
            for pid, route, passed, reason in con.execute(
                    "SELECT prompt_id, route, passed, reason FROM scores WHERE run_id = ? AND evaluator = 'tool_selection'", [summary.run_id]).fetchall():
                got[(pid, route)], reasons[(pid, route)] = passed, reason
            stored = {(pid, route): json.loads(tc) if isinstance(tc, str) else tc for pid, route, tc in con.execute(
                f"SELECT prompt_id, route, tool_calls FROM {MEASURED_RESPONSES} WHERE run_id = ?", [summary.run_id]).fetchall()}
        finally:
            con.close()
        print(f"mirror: {summary.calls} calls, errors {errors}, {t_mirror:.1f} s; score: {t_score:.1f} s")
        overall, per = table("routecheck tool_selection (BFCL rules) vs known verdicts", got, cases)
        bad = [(c, r) for c in cases for r in ("baseline", "candidate") if got.get((c["id"], r)) is not c["verdict"]]
        for c, r in bad[: args.show_disagreements]:
            print(f"  disagree {c['id']} [{r}] known={'pass' if c['verdict'] else 'fail'} got={got.get((c['id'], r))}: {reasons.get((c['id'], r))}")
        peer, note = run_peer(args.peer_python, tmp, cases, stored)
        if peer is None:
            print(f"\nDeepEval ToolCorrectnessMetric: {note}")
        else:
            print(f"\n{note}")
            table("DeepEval ToolCorrectnessMetric (exact name + input parameters, reference = the `right` calls) vs known verdicts", peer, cases)
            pbad = [(c, r) for c in cases for r in ("baseline", "candidate") if peer.get((c["id"], r)) is not c["verdict"]]
            for kind in KINDS:
                ex = next(((c, r) for c, r in pbad if c["kind"] == kind), None)
                if ex:
                    print(f"  e.g. {kind}: {ex[0]['id']} known={'pass' if ex[0]['verdict'] else 'fail'} got={peer.get((ex[0]['id'], ex[1]))}")
    target_ok = overall >= 0.99 and all(v >= 0.97 for v in per.values())
    print(f"\ntarget (>= 99% overall, >= 97% per kind): {'met' if target_ok else 'NOT met'}")


if __name__ == "__main__":
    main()
