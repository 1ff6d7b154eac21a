"""Peer helper, run with the peer venv's Python (never routecheck's): DeepEval's ToolCorrectnessMetric.

    /work/peer-venv/bin/python bench/peer_deepeval_tools.py IN.jsonl OUT.jsonl

IN rows: {"key": ..., "called": [{"name", "arguments"}], "expected": [{"name", "arguments"}]};
OUT rows: {"key": ..., "passed": bool, "score": float}. The metric is configured for its
deterministic path (exact tool name and input parameters, order not considered, threshold 1.0,
no `available_tools`, so no LLM call). Its constructor insists on a model object even then: it
gets one that refuses to generate, so a path that would need an LLM fails loudly instead of
reaching the network.
"""

import json
import sys
import time

from deepeval.metrics import ToolCorrectnessMetric
from deepeval.models import DeepEvalBaseLLM
from deepeval.test_case import LLMTestCase, ToolCall, ToolCallParams


class NoLLM(DeepEvalBaseLLM):
    def __init__(self):
        pass

    def load_model(self):
        return None

    def generate(self, *args, **kwargs):
        raise RuntimeError("offline: the deterministic metric must not call an LLM")

    async def a_generate(self, *args, **kwargs):
        raise RuntimeError("offline: the deterministic metric must not call an LLM")

    def get_model_name(self):
        return "none (offline)"


def main(inp: str, out: str) -> None:
    import deepeval

    t0, n = time.perf_counter(), 0
    model = NoLLM()
    with open(inp) as f, open(out, "w") as g:
        for line in f:
            row = json.loads(line)
            metric = ToolCorrectnessMetric(threshold=1.0, model=model, evaluation_params=[ToolCallParams.INPUT_PARAMETERS],
                                           async_mode=False, verbose_mode=False)
            case = LLMTestCase(input="", actual_output="",
                               tools_called=[ToolCall(name=c["name"] or "", input_parameters=c["arguments"]) for c in row["called"]],
                               expected_tools=[ToolCall(name=c["name"], input_parameters=c["arguments"]) for c in row["expected"]])
            score = metric.measure(case)
            g.write(json.dumps({"key": row["key"], "passed": bool(metric.is_successful()), "score": score}) + "\n")
            n += 1
    print(f"DeepEval {deepeval.__version__} ToolCorrectnessMetric: {n} cases in {time.perf_counter() - t0:.1f} s (offline, no LLM)")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
