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
