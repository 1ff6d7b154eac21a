"""Evaluators score each response; see docs/evaluators.md.

    base.py      EvalRecord / EvalResult (the protocol's types)
    registry.py  @evaluator, get_evaluator, registered (below every evaluator)
    config.py    evaluators.yaml and `-e name:key=value` specs

Public surface (import from here):

    from evaluators import EvalRecord, EvalResult, evaluator, get_evaluator, registered
"""

from evaluators.base import EvalRecord, EvalResult, parse_json_field
from evaluators.registry import (
    ENTRY_POINT_GROUP,
    BoundEvaluator,
    EvaluatorError,
    EvaluatorInfo,
    evaluator,
    get_evaluator,
    registered,
)
from evaluators.config import EvaluatorSpec, load_evaluator_config, parse_cli_spec, resolve_specs

# The built-in evaluators: importing a module registers what it declares with @evaluator.
# A new built-in is a module in this folder and its name on this line.
from evaluators import groundedness, llm_judge, task_completion, tool_selection, trajectory  # noqa: E402,F401  isort: skip

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
    "parse_json_field",
    "registered",
    "resolve_specs",
]
