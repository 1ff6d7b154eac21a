"""The evaluator protocol's types: a batch of EvalRecords in, one EvalResult per record out.

Evaluators take batches (not single records) so vectorised backends can fit once per batch.
An evaluator that lacks its inputs says so (`applicable=False` with a reason) instead of
returning a silent 0 or 1, so a missing context never looks like a hallucination.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Callable

from harness.corpus import STOP_ANSWER, content_text


@dataclass
class EvalRecord:
    """One response to score, with the prompt it answered."""

    run_id: str = ""
    prompt_id: str = ""
    route: str = ""
    sample: int = 0
    cohort: str | None = None
    messages: list[dict[str, Any]] = field(default_factory=list)
    context: str | None = None
    tools: list[dict[str, Any]] | None = None
    expected: dict[str, Any] | None = None
    text: str | None = None
    tool_calls: list[dict[str, Any]] | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    # Agent trajectories (None for a single call): the `steps` rows in order, as dicts with
    # step, text, tool_calls and tool_results (parsed), finish_reason; and why the loop ended.
    steps: list[dict[str, Any]] | None = None
    stop_reason: str | None = None

    @property
    def is_trajectory(self) -> bool:
        return self.steps is not None

    @property
    def answered(self) -> bool:
        """A single call, or a trajectory that ended with a text answer (not max_steps, an
        unscripted call or an error): `text` is then its final answer."""
        return self.steps is None or self.stop_reason == STOP_ANSWER

    @property
    def evidence(self) -> str | None:
        """What the answer may rest on: the row's context and, in a trajectory, the scripted
        tool results the model was sent."""
        parts = [self.context] if self.context else []
        for step in self.steps or []:
            parts += [r["content"] for r in step.get("tool_results") or [] if r.get("scripted") and r.get("content")]
        return "\n".join(parts) if parts else None

    @property
    def conversation(self) -> str:
        """Every message's text: what the user (and earlier turns) already said."""
        return "\n".join(_text(m.get("content")) for m in self.messages or [] if m.get("content"))

    @property
    def question(self) -> str | None:
        """The last user message: the request the response answers."""
        for msg in reversed(self.messages or []):
            if msg.get("role") == "user":
                return _text(msg.get("content")) or None
        return None


_text = content_text  # a string, or the text of OpenAI content parts

@dataclass
class EvalResult:
    """score in [0, 1] (None when not applicable); details is JSON-serialisable."""

    score: float | None
    passed: bool | None
    applicable: bool = True
    reason: str = ""
    details: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.score is not None:
            if not 0.0 <= self.score <= 1.0:
                raise ValueError(f"score must be in [0, 1], got {self.score}")
            self.score = float(self.score)

    @classmethod
    def not_applicable(cls, reason: str, **details: Any) -> "EvalResult":
        return cls(score=None, passed=None, applicable=False, reason=reason, details=details)


EvaluateFn = Callable[[list[EvalRecord]], list[EvalResult]]


def parse_json_field(value: Any) -> Any:
    """JSON columns come back from DuckDB as strings; tolerate both."""
    if isinstance(value, str):
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            return value
    return value
