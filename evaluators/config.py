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
from harness.config import ConfigError, key_text, path_exists, read_yaml

# The trajectory evaluators are not applicable (and not shown) on a run without agent rows.
DEFAULT_EVALUATORS = ["groundedness", "hallucination", "tool_selection", "task_completion",
                      "step_accuracy", "first_wrong_step", "step_count"]


@dataclass
class EvaluatorSpec:
    name: str
    options: dict[str, Any] = field(default_factory=dict)
    alias: str | None = None
    where: str | None = None  # "evaluators.yaml: evaluators[2]" or "--evaluator 'x'": named in every error

    def bind(self) -> BoundEvaluator:
        try:
            return get_evaluator(self.name, self.options, alias=self.alias)
        except EvaluatorError as e:
            raise EvaluatorError(f"{self.where}: {e}" if self.where else str(e)) from None


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
    return EvaluatorSpec(name=name.strip(), options=options, where=f"--evaluator {text!r}")


def load_evaluator_config(path: str | Path) -> list[EvaluatorSpec]:
    path = Path(path)
    try:
        data = read_yaml(path, "evaluator config")
    except ConfigError as e:
        raise EvaluatorError(str(e)) from None
    if isinstance(data, dict):
        unknown = sorted(set(data) - {"evaluators"}, key=repr)
        if unknown:
            raise EvaluatorError(f"{path}: {key_text(unknown[0])}: unknown key; the file holds an 'evaluators' list")
        items = data.get("evaluators")
    else:
        items = data
    if not isinstance(items, list) or not items:
        raise EvaluatorError(f"{path}: evaluators: expected a non-empty list of evaluator names or "
                             f"{{name, options, as}} mappings, got {_kind(items)}")
    specs = []
    for i, item in enumerate(items):
        where = f"{path}: evaluators[{i}]"
        if isinstance(item, str) and item.strip():
            specs.append(EvaluatorSpec(name=item.strip(), where=where))
            continue
        if not isinstance(item, dict) or "name" not in item:
            raise EvaluatorError(f"{where}: expected an evaluator name or a mapping with 'name', got {_kind(item)}")
        unknown = sorted(set(item) - {"name", "options", "as"}, key=repr)
        if unknown:
            raise EvaluatorError(f"{where}.{key_text(unknown[0])}: unknown key; allowed: name, options, as")
        for key in ("name", "as"):
            if key in item and not (isinstance(item[key], str) and item[key].strip()):
                raise EvaluatorError(f"{where}.{key}: expected a non-empty string, got {_kind(item[key])}")
        options = item.get("options") or {}
        if not isinstance(options, dict):
            raise EvaluatorError(f"{where}.options: expected a mapping, got {_kind(options)}")
        bad = next((k for k in options if not isinstance(k, str)), None)
        if bad is not None:
            raise EvaluatorError(f"{where}.options: option names are strings, got {bad!r}")
        specs.append(EvaluatorSpec(name=item["name"].strip(), options=options, alias=item.get("as"), where=where))
    _resolve_relative_paths(specs, path.parent)
    return specs


def _kind(value: Any) -> str:
    """What a config value is, briefly (never the whole value: it may be long or binary)."""
    if value is None:
        return "nothing"
    text = repr(value)
    return f"{type(value).__name__} {text[:40] + '...' if len(text) > 40 else text}"


def _resolve_relative_paths(specs: list[EvaluatorSpec], base: Path) -> None:
    """Options naming files (routes, model dirs) are relative to the config file."""
    for spec in specs:
        for key in ("routes", "model_dir", "nli_model_dir"):
            value = spec.options.get(key)
            if isinstance(value, str) and not Path(value).is_absolute() and path_exists(base / value):
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
