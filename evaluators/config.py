"""Which evaluators to run, from evaluators.yaml or CLI names.

evaluators.yaml:

    evaluators:
      - groundedness                      # a bare name: default options
      - name: task_completion
        options: {match: token_f1, threshold: 0.6}
      - name: llm_judge
        as: judge_helpfulness             # stored under this name in `scores`
        options: {routes: routes.yaml, route: judge, rubric: "Is the answer helpful?"}

CLI: `--evaluator groundedness --evaluator task_completion:match=contains` (options as key=value,
values parsed as YAML scalars, several separated by commas).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from evaluators.registry import BoundEvaluator, EvaluatorError, get_evaluator
from harness.config import ConfigError, read_yaml

# The trajectory evaluators are not applicable (and not shown) on a run without agent rows.
DEFAULT_EVALUATORS = ["groundedness", "hallucination", "tool_selection", "task_completion",
                      "step_accuracy", "first_wrong_step", "step_count"]


@dataclass
class EvaluatorSpec:
    name: str
    options: dict[str, Any] = field(default_factory=dict)
    alias: str | None = None

    def bind(self) -> BoundEvaluator:
        return get_evaluator(self.name, self.options, alias=self.alias)


def parse_cli_spec(text: str) -> EvaluatorSpec:
    """`name` or `name:key=value,key=value`."""
    name, _, rest = text.partition(":")
    options: dict[str, Any] = {}
    for part in filter(None, (p.strip() for p in rest.split(","))):
        key, eq, value = part.partition("=")
        if not eq:
            raise EvaluatorError(f"--evaluator {text!r}: option {part!r} must be key=value")
        options[key.strip()] = yaml.safe_load(value)
    if not name.strip():
        raise EvaluatorError(f"--evaluator {text!r}: missing evaluator name")
    return EvaluatorSpec(name=name.strip(), options=options)


def load_evaluator_config(path: str | Path) -> list[EvaluatorSpec]:
    path = Path(path)
    try:
        data = read_yaml(path, "evaluator config")
    except ConfigError as e:
        raise EvaluatorError(str(e)) from None
    items = data.get("evaluators") if isinstance(data, dict) else data
    if not isinstance(items, list) or not items:
        raise EvaluatorError(f"{path}: expected a non-empty 'evaluators' list")
    specs = []
    for i, item in enumerate(items):
        where = f"{path}: evaluators[{i}]"
        if isinstance(item, str):
            specs.append(EvaluatorSpec(name=item))
            continue
        if not isinstance(item, dict) or "name" not in item:
            raise EvaluatorError(f"{where}: expected a name or a mapping with 'name', got {item!r}")
        unknown = set(item) - {"name", "options", "as"}
        if unknown:
            raise EvaluatorError(f"{where}: unknown key(s) {sorted(unknown)}; allowed: name, options, as")
        options = item.get("options") or {}
        if not isinstance(options, dict):
            raise EvaluatorError(f"{where}.options: expected a mapping, got {type(options).__name__}")
        specs.append(EvaluatorSpec(name=str(item["name"]), options=options, alias=item.get("as")))
    _resolve_relative_paths(specs, path.parent)
    return specs


def _resolve_relative_paths(specs: list[EvaluatorSpec], base: Path) -> None:
    """Options naming files (routes, model dirs) are relative to the config file."""
    for spec in specs:
        for key in ("routes", "model_dir", "nli_model_dir"):
            value = spec.options.get(key)
            if isinstance(value, str) and not Path(value).is_absolute() and (base / value).exists():
                spec.options[key] = str((base / value).resolve())


def resolve_specs(names: list[str] | None, config: str | Path | None) -> list[EvaluatorSpec]:
    """Config file first, then CLI names (a CLI name replaces a config entry of the same name)."""
    specs = load_evaluator_config(config) if config else []
    for text in names or []:
        spec = parse_cli_spec(text)
        specs = [s for s in specs if (s.alias or s.name) != spec.name] + [spec]
    if not specs:
        specs = [EvaluatorSpec(name=n) for n in DEFAULT_EVALUATORS]
    return specs
