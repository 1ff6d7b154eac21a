"""The evaluator registry: `@evaluator` and the look-up by name, below every evaluator module.

Built-in evaluators register themselves when evaluators/__init__.py imports them (the list a
reader looks at first); third-party ones through the `routecheck.evaluators` entry point group.
Nothing here imports an evaluator, so there is no cycle and no hidden file to edit.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Any, Callable, Sequence

from evaluators.base import EvalRecord, EvalResult, EvaluateFn

ENTRY_POINT_GROUP = "routecheck.evaluators"


@dataclass
class EvaluatorInfo:
    """A registered evaluator: `target` is the decorated function or class."""

    name: str
    version: str
    target: Any
    description: str = ""


@dataclass
class BoundEvaluator:
    """An evaluator with its options applied: call `evaluate(records)`."""

    name: str  # the name scores are stored under (the config alias, if any)
    evaluator: str  # the registered name
    version: str
    options: dict[str, Any]
    _fn: EvaluateFn

    def evaluate(self, records: Sequence[EvalRecord]) -> list[EvalResult]:
        records = list(records)
        results = list(self._fn(records))
        if len(results) != len(records):
            raise RuntimeError(f"evaluator {self.evaluator!r} returned {len(results)} results for {len(records)} records")
        return results


class EvaluatorError(ValueError):
    """An unknown evaluator or bad evaluator options; the message says which and why."""


_REGISTRY: dict[str, EvaluatorInfo] = {}
_ENTRY_POINTS_LOADED = False


def evaluator(name: str, version: str = "1", description: str = "") -> Callable[[Any], Any]:
    """Register a function `fn(records, **options) -> list[EvalResult]`, or a class whose
    instances (built with the options as keyword arguments) have `evaluate(records)` or are callable."""

    def register(target: Any) -> Any:
        doc = description or (inspect.getdoc(target) or "").split("\n")[0]
        _REGISTRY[name] = EvaluatorInfo(name=name, version=str(version), target=target, description=doc)
        target.evaluator_name = name
        target.evaluator_version = str(version)
        return target

    return register


def _load_entry_points() -> None:
    """Import third-party evaluators once. Loading a module usually registers it via the
    decorator; a plain callable is registered under the entry point's name."""
    global _ENTRY_POINTS_LOADED
    if _ENTRY_POINTS_LOADED:
        return
    _ENTRY_POINTS_LOADED = True
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name in _REGISTRY:
            continue
        try:
            obj = ep.load()
        except Exception as e:  # a broken plugin must not break the built-ins
            import warnings

            warnings.warn(f"evaluator entry point {ep.name!r} ({ep.value}) failed to load: {e}", stacklevel=2)
            continue
        if ep.name not in _REGISTRY and callable(obj):
            evaluator(ep.name, version=str(getattr(obj, "evaluator_version", "0")))(obj)


def registered() -> dict[str, EvaluatorInfo]:
    """All evaluators by name: built-ins (imported by evaluators/__init__.py) plus entry points."""
    _load_entry_points()
    return dict(_REGISTRY)


def get_evaluator(name: str, options: dict[str, Any] | None = None, alias: str | None = None) -> BoundEvaluator:
    """Find an evaluator by name and bind its options."""
    info = registered().get(name)
    if info is None:
        known = ", ".join(sorted(registered())) or "none"
        raise EvaluatorError(f"unknown evaluator {name!r}; known: {known}")
    options = dict(options or {})
    target = info.target
    try:
        if inspect.isclass(target):
            obj = target(**options)
            fn = obj.evaluate if hasattr(obj, "evaluate") else obj
        else:
            _check_options(name, target, options)

            def fn(records: list[EvalRecord], _t: Any = target, _o: dict = options) -> list[EvalResult]:
                return _t(records, **_o)
    except TypeError as e:
        raise EvaluatorError(f"evaluator {name!r}: bad options {options}: {e}") from None
    except EvaluatorError:
        raise
    except ValueError as e:
        raise EvaluatorError(f"evaluator {name!r}: {e}") from None
    return BoundEvaluator(name=alias or name, evaluator=name, version=info.version, options=options, _fn=fn)


def _check_options(name: str, fn: Callable, options: dict[str, Any]) -> None:
    """Fail on a misspelt option now, not after the first batch."""
    params = inspect.signature(fn).parameters
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        return
    allowed = [p for p in list(params)[1:]]
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise EvaluatorError(f"evaluator {name!r}: unknown option(s) {unknown}; allowed: {allowed}")


