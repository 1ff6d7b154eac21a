"""The gate stage: `evaluate.py` decides (pure, from a Report and a Policy), `render.py` writes it out."""

from harness.gate.evaluate import GateCheck, GateResult, evaluate_gate, run_gate

__all__ = ["GateCheck", "GateResult", "evaluate_gate", "run_gate"]
