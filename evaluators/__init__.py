"""Evaluators score each response; see evaluators/base.py for the protocol and docs/evaluators.md.

Public surface (import from here):

    from evaluators import EvalRecord, EvalResult, evaluator, get_evaluator, registered
"""

from evaluators.base import (
    ENTRY_POINT_GROUP,
    BoundEvaluator,
    EvalRecord,
    EvalResult,
    EvaluatorError,
    EvaluatorInfo,
    evaluator,
    get_evaluator,
    registered,
)
from evaluators.config import EvaluatorSpec, load_evaluator_config, parse_cli_spec, resolve_specs

__all__ = [
    "ENTRY_POINT_GROUP",
    "BoundEvaluator",
    "EvalRecord",
    "EvalResult",
    "EvaluatorError",
    "EvaluatorInfo",
    "EvaluatorSpec",
    "evaluator",
    "get_evaluator",
    "load_evaluator_config",
    "parse_cli_spec",
    "registered",
    "resolve_specs",
    "score_run",
    "score_command",
]


def __getattr__(name: str):
    # scoring pulls in the store (duckdb) and rich; load it only when asked for.
    if name in ("score_run", "score_command"):
        from evaluators import scoring

        return getattr(scoring, name)
    raise AttributeError(name)
