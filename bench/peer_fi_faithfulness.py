"""Run FutureAGI ai-evaluation's local Faithfulness metric on groundedness_dev.jsonl rows.

Runs inside the peer's own venv (its dependencies must not touch ours); called by
bench/groundedness_quality.py via subprocess. Reads JSONL rows on stdin, writes one JSON line
per row to stdout: {"id", "score", "seconds"}. With no transformers installed in that venv the
metric uses its offline heuristic NLI fallback, which is what an offline CPU user gets.
"""

import json
import sys
import time
import warnings

warnings.filterwarnings("ignore")
from fi.evals.metrics.hallucination import Faithfulness, HallucinationInput  # noqa: E402

with_question = "--with-question" in sys.argv
metric = Faithfulness()
rows = [json.loads(line) for line in sys.stdin if line.strip()]
start = time.perf_counter()
out = []
for r in rows:
    response = f"{r['question']} {r['answer']}" if with_question else r["answer"]
    res = metric.compute_one(HallucinationInput(response=response, context=r["context"]))
    out.append({"id": r["id"], "score": float(res["output"])})
elapsed = time.perf_counter() - start
for o in out:
    print(json.dumps(o))
print(json.dumps({"elapsed_s": elapsed, "n": len(rows)}))
