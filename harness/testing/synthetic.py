"""Synthetic stores with known effects, for tests, the simulation and the scale benchmark.

Written through harness.store (connect + upsert), so they exercise the real schema.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from harness.store import connect, upsert

COHORT_WORDS = {
    "legal": "statute court citation plaintiff appeal precedent ruling contract clause tort",
    "sql": "select table join query index column where group schema database",
    "multilingual": "bonjour merci hola gracias danke bitte ciao grazie obrigado arigato",
    "tools": "weather calendar booking search calculator email schedule lookup api function",
    "chat": "hello thanks story joke recipe travel music movie weekend friend",
}


@dataclass
class SyntheticSpec:
    cohorts: dict[str, int] = field(default_factory=lambda: {"legal": 80, "sql": 80, "chat": 80})
    pass_prob: float = 0.85
    pass_drop: dict[str, float] = field(default_factory=dict)     # cohort -> drop in candidate pass probability
    score_drop: dict[str, float] = field(default_factory=dict)    # cohort -> drop in candidate mean score
    samples: int = 1
    latency_s: float = 0.5
    candidate_latency_factor: float = 1.0
    error_rate: float = 0.0
    label_cohorts: bool = True
    special_text: dict[str, str] = field(default_factory=dict)    # prompt_id -> candidate response text
    seed: int = 0
    run_id: str = "run-synth"
    baseline: str = "dense"
    candidate: str = "moe"


def build_store(path: Path, spec: SyntheticSpec) -> Path:
    rng = np.random.default_rng(spec.seed)
    con = connect(path)
    routes = [
        {"name": spec.baseline, "role": "baseline", "model": "dense-tiny", "architecture": "dense",
         "prices": {"input_per_mtok": 0.5, "output_per_mtok": 1.5}},
        {"name": spec.candidate, "role": "candidate", "model": "moe-tiny", "architecture": "moe", "num_experts": 8,
         "active_experts": 2, "prices": {"input_per_mtok": 0.3, "output_per_mtok": 0.9}},
    ]
    now = datetime.now(timezone.utc)
    total = sum(spec.cohorts.values())
    upsert(con, "runs", [{"run_id": spec.run_id, "started_at": now, "finished_at": now, "status": "completed",
                          "routes": routes, "n_prompts": total, "n_expected": total * 2 * spec.samples}])
    prompts, responses, scores = [], [], []
    for cohort, count in spec.cohorts.items():
        words = COHORT_WORDS.get(cohort, cohort).split()
        for i in range(count):
            pid = f"{cohort}-{i:04d}"
            text = " ".join(rng.choice(words, size=8)) + f" question {i}"
            label = cohort if spec.label_cohorts else "default"
            prompts.append({"run_id": spec.run_id, "prompt_id": pid, "cohort": label,
                            "messages": [{"role": "user", "content": text}]})
            difficulty = rng.normal(0, 0.15)
            for route, role in ((spec.baseline, "baseline"), (spec.candidate, "candidate")):
                is_cand = role == "candidate"
                for s in range(spec.samples):
                    lat = float(rng.lognormal(np.log(spec.latency_s), 0.3)) * (spec.candidate_latency_factor if is_cand else 1)
                    err = bool(rng.random() < spec.error_rate)
                    body = spec.special_text.get(pid) if is_cand and pid in spec.special_text else f"answer {i} from {route}"
                    responses.append({
                        "run_id": spec.run_id, "prompt_id": pid, "route": route, "sample": s, "role": role,
                        "cohort": label, "text": body, "input_tokens": 40, "output_tokens": int(rng.integers(20, 60)),
                        "total_tokens": None, "latency_s": lat, "ttft_s": lat * 0.2, "error_type": "http_500" if err else None,
                        "timed_out": False, "trace_id": f"{rng.integers(1 << 62):032x}", "span_id": f"{rng.integers(1 << 62):016x}",
                    })
                    p = spec.pass_prob - (spec.pass_drop.get(cohort, 0.0) if is_cand else 0.0)
                    passed = bool(rng.random() < p)
                    score = float(np.clip(0.7 + difficulty + rng.normal(0, 0.1)
                                          - (spec.score_drop.get(cohort, 0.0) if is_cand else 0.0), 0, 1))
                    scores.append({"run_id": spec.run_id, "prompt_id": pid, "route": route, "sample": s,
                                   "evaluator": "task_completion", "score": float(passed), "passed": passed, "applicable": True})
                    scores.append({"run_id": spec.run_id, "prompt_id": pid, "route": route, "sample": s,
                                   "evaluator": "groundedness", "score": score, "passed": score >= 0.5, "applicable": True})
    for r in responses:
        r["total_tokens"] = r["input_tokens"] + r["output_tokens"]
    upsert(con, "prompts", prompts)
    upsert(con, "responses", responses)
    upsert(con, "scores", scores)
    con.close()
    return path


def routes_json(baseline: str = "dense", candidate: str = "moe") -> str:
    return json.dumps([{"name": baseline, "role": "baseline"}, {"name": candidate, "role": "candidate"}])


def paired_quality_frame(rng: np.random.Generator, cohorts: dict[str, int], drop: dict[str, float] | None = None,
                         binary: bool = True, evaluator: str = "task_completion", candidate: str = "moe",
                         pass_prob: float = 0.8, rho: float = 0.5, score_sd: float = 0.12) -> "pd.DataFrame":
    """In-memory frame shaped like load.QUALITY_SQL's result, with a known true effect per cohort.

    Binary: baseline passes with pass_prob; the candidate reuses the baseline's latent draw with
    probability rho (paired correlation) and passes with exactly pass_prob - drop. Scores:
    candidate = baseline + N(-drop, score_sd), so the true mean difference is exactly -drop.
    """
    import pandas as pd

    drop = drop or {}
    parts = []
    for cohort, n in cohorts.items():
        d = drop.get(cohort, 0.0)
        if binary:
            u = rng.random(n)
            u2 = np.where(rng.random(n) < rho, u, rng.random(n))
            base = (u < pass_prob).astype(float)
            cand = (u2 < pass_prob - d).astype(float)
            cols = {"base_pass_rate": base, "cand_pass_rate": cand, "base_score": base, "cand_score": cand}
        else:
            base = rng.normal(0.7, 0.15, n)
            cand = base + rng.normal(-d, score_sd, n)
            cols = {"base_pass_rate": np.nan, "cand_pass_rate": np.nan, "base_score": base, "cand_score": cand}
        parts.append(pd.DataFrame({"candidate": candidate, "evaluator": evaluator,
                                   "prompt_id": [f"{cohort}-{i}" for i in range(n)], "cohort": cohort, **cols,
                                   "base_samples": 1, "cand_samples": 1}))
    return pd.concat(parts, ignore_index=True)


def deterministic_store(path: Path, cohorts: dict[str, int] | None = None, failing: dict[str, int] | None = None,
                        samples: int = 1, slow_cohort: str | None = None, failing_text: str | None = None,
                        run_id: str = "run-hand", with_server_data: bool = False,
                        errors: dict[str, dict[str, int]] | None = None, error_message: str = "server said no",
                        baseline: str = "dense", candidate: str = "moe", prompt_ids: list[str] | None = None) -> Path:
    """A hand-checkable store: the baseline passes every prompt; the candidate fails the first
    `failing[c]` prompts of cohort c (all samples), and nothing else differs unless asked.

    `errors[route][c]`: the first n calls of cohort c on that route ("baseline"/"candidate" or the
    route's name) are failed calls (`http_500`, `error_message`, no text), scored not applicable
    as `routecheck score` scores them. `prompt_ids` names the prompts in order (default COHORT-NNN).

    Latency of prompt i is 0.5 + 0.001 i s on both routes (x3 on the candidate in slow_cohort);
    every call uses 100 input and 50 output tokens; prices are 1 and 2 USD per Mtok (baseline)
    and 0.5 and 1 (candidate), so cost per trace is exactly 2e-4 and 1e-4 USD.
    """
    cohorts = {"legal": 40, "sql": 40, "chat": 40} if cohorts is None else cohorts
    failing = failing or {}
    errors = errors or {}
    con = connect(path)
    routes = [{"name": baseline, "role": "baseline", "architecture": "dense", "prices": {"input_per_mtok": 1.0, "output_per_mtok": 2.0}},
              {"name": candidate, "role": "candidate", "architecture": "moe", "prices": {"input_per_mtok": 0.5, "output_per_mtok": 1.0}}]
    now = datetime.now(timezone.utc)
    upsert(con, "runs", [{"run_id": run_id, "started_at": now, "finished_at": now, "status": "completed", "routes": routes}])
    prompts, responses, scores, spans = [], [], [], []
    ids = iter(prompt_ids or [])
    for cohort, count in cohorts.items():
        for i in range(count):
            pid = next(ids, None) or f"{cohort}-{i:03d}"
            prompts.append({"run_id": run_id, "prompt_id": pid, "cohort": cohort,
                            "messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": f"{cohort} question {i}"}]})
            fails = i < failing.get(cohort, 0)
            for route in (baseline, candidate):
                cand = route == candidate
                role = "candidate" if cand else "baseline"
                n_err = errors.get(route, errors.get(role, {})).get(cohort, 0)
                for s in range(samples):
                    lat = (0.5 + 0.001 * i) * (3.0 if cand and cohort == slow_cohort else 1.0)
                    span_id = f"{len(responses) + 1:016x}"
                    text = failing_text if (cand and fails and failing_text is not None) else f"{route} answer to {pid}"
                    err = i < n_err
                    responses.append({"run_id": run_id, "prompt_id": pid, "route": route, "sample": s,
                                      "role": role, "cohort": cohort, "text": None if err else text,
                                      "input_tokens": 100, "output_tokens": 0 if err else 50, "total_tokens": 100 if err else 150,
                                      "latency_s": lat, "ttft_s": None if err else lat / 5, "timed_out": False,
                                      "error_type": "http_500" if err else None, "error_message": error_message if err else None,
                                      "http_status": 500 if err else 200,
                                      "trace_id": f"{len(responses) + 1:032x}", "span_id": span_id})
                    for ev in ("task_completion", "groundedness"):
                        if err:  # as harness.score scores a failed call
                            scores.append({"run_id": run_id, "prompt_id": pid, "route": route, "sample": s, "evaluator": ev,
                                           "score": None, "passed": None, "applicable": False, "reason": "call failed"})
                            continue
                        passed = ev == "groundedness" or not (cand and fails)
                        scores.append({"run_id": run_id, "prompt_id": pid, "route": route, "sample": s, "evaluator": ev,
                                       "score": 0.8 if ev == "groundedness" else float(passed), "passed": passed, "applicable": True})
                    if with_server_data:
                        # A server's per-request span as an engine maps it at ingest (typed columns).
                        spans.append({"trace_id": f"{len(responses):032x}", "span_id": f"{len(responses):08x}aaaaaaaa",
                                      "parent_span_id": span_id, "name": "request", "service_name": "synthetic-server",
                                      "engine": "synthetic", "queue_s": 0.01 if not cand else 0.03, "prefill_s": 0.1,
                                      "decode_s": 0.3, "e2e_s": lat})
    upsert(con, "prompts", prompts)
    upsert(con, "responses", responses)
    upsert(con, "scores", scores)
    if with_server_data:
        upsert(con, "spans", spans)
        metrics = []
        for route in (baseline, candidate):
            for phase, v in (("before", 10.0), ("during", 12.0), ("after", 15.0 if route == candidate else 10.0)):
                metrics.append({"run_id": run_id, "route": route, "scraped_at": now, "phase": phase,
                                "metric": "synthetic:num_preemptions_total", "quantity": "preemptions", "labels": {}, "value": v})
        upsert(con, "server_metrics", metrics)
    con.close()
    return path
