"""Agent trajectories: play the tool loop for a corpus row that carries `tool_results`.

Send the request; while the answer calls tools, append the assistant turn and one `role: tool`
message per call (the scripted result, matching `tool_call_id`) and send again. Stop at a text
answer, at `max_steps` model calls, when a call has no scripted result, or when a call fails.
Scripted results make the loop reproducible: both routes of a mirror group get the same world,
so their trajectories differ only by what the models chose.

Spans: one `trajectory` span (INTERNAL) per route under the group's `mirror` span, and one
`chat MODEL` call span (CLIENT) per step under it, each with the W3C traceparent sent along.
The response row is the whole trajectory (`Trajectory.total`, `Trajectory.columns`), the steps
go to the `steps` table (`Trajectory.step_rows`).
"""

from __future__ import annotations

import json
import re
import functools
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Awaitable, Callable

from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from harness.config import RouteConfig
from harness.corpus import (DEFAULT_MAX_STEPS, STOP_ANSWER, STOP_ERROR, STOP_MAX_STEPS, STOP_UNSCRIPTED, PromptRecord,
                            ToolRule)
from harness.mirror.http import RouteClient
from harness.mirror.attributes import request_attributes
from harness.mirror.call import traced_chat
from harness.mirror.latency import over_steps
from harness.mirror.openai_stream import CallResult
from harness.store.redact import Redactor

# -- the script ---------------------------------------------------------------------------------------

def _arguments(raw: Any) -> dict[str, Any] | None:
    if isinstance(raw, dict):
        return raw
    try:
        value = json.loads(raw) if isinstance(raw, str) and raw.strip() else {}
    except json.JSONDecodeError:
        return None
    return value if isinstance(value, dict) else None


def _fits(pattern: Any, value: Any) -> bool:
    if isinstance(pattern, str):
        text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
        return re.fullmatch(pattern, text) is not None
    if isinstance(pattern, (int, float)) and isinstance(value, (int, float)) and not isinstance(value, bool) and not isinstance(pattern, bool):
        return float(pattern) == float(value)
    return pattern == value


def scripted_result(script: dict[str, list[ToolRule]], name: str | None, raw_arguments: Any) -> tuple[bool, Any]:
    """(found, result) for one call: the tool's rules in order, then the `*` rules. A rule with a
    `match` needs arguments that parse as a JSON object and fit every pattern."""
    args = _arguments(raw_arguments)
    for rule in [*script.get(name or "", []), *script.get("*", [])]:
        if not rule.match:
            return True, rule.result
        if args is not None and all(k in args and _fits(p, args[k]) for k, p in rule.match.items()):
            return True, rule.result
    return False, None


def result_content(result: Any) -> str:
    """The `role: tool` message content: strings as they are, anything else as JSON."""
    return result if isinstance(result, str) else json.dumps(result, ensure_ascii=False)


# -- the loop -------------------------------------------------------------------------------------------

@dataclass
class Step:
    index: int                        # 1, 2, ...
    result: CallResult
    tool_results: list[dict[str, Any]] = field(default_factory=list)
    trace_id: str = ""
    span_id: str = ""


@dataclass
class Trajectory:
    steps: list[Step]
    stop_reason: str
    span: trace.Span | None = None    # the trajectory span (the response row points at it)

    @functools.cached_property
    def total(self) -> CallResult:
        """The response row's figures: the last step's answer, tokens summed over steps (so cost per
        trace is summed too), latency figures combined by harness/mirror/latency.py's over_steps."""
        first, last = self.steps[0].result, self.steps[-1].result
        results = [s.result for s in self.steps]

        def total_of(attr: str) -> int | None:
            values = [getattr(r, attr) for r in results if getattr(r, attr) is not None]
            return sum(values) if values else None

        return CallResult(
            text=last.text, tool_calls=last.tool_calls, finish_reason=last.finish_reason,
            response_id=last.response_id, response_model=last.response_model,
            input_tokens=total_of("input_tokens"), output_tokens=total_of("output_tokens"),
            total_tokens=total_of("total_tokens"),
            usage_source="server" if all(r.usage_source == "server" for r in results) else "counted",
            started_at=first.started_at, **over_steps(results), attempts=sum(r.attempts for r in results),
            http_status=last.http_status, error_type=last.error_type, error_message=last.error_message,
            timed_out=any(r.timed_out for r in results),
        )

    def columns(self) -> dict[str, Any]:
        """The response row's trajectory columns."""
        return {"steps": len(self.steps), "stop_reason": self.stop_reason}

    def step_rows(self, run_id: str, route: str, prompt_id: str, sample: int) -> list[dict[str, Any]]:
        return [{
            "run_id": run_id, "prompt_id": prompt_id, "route": route, "sample": sample, "step": s.index,
            "text": s.result.text, "tool_calls": s.result.tool_calls, "tool_results": s.tool_results,
            "finish_reason": s.result.finish_reason, "input_tokens": s.result.input_tokens,
            "output_tokens": s.result.output_tokens, "total_tokens": s.result.total_tokens,
            "usage_source": s.result.usage_source,
            "started_at": datetime.fromtimestamp(s.result.started_at, tz=timezone.utc),
            "latency_s": s.result.latency_s, "ttft_s": s.result.ttft_s,
            "error_type": s.result.error_type, "error_message": s.result.error_message,
            "trace_id": s.trace_id, "span_id": s.span_id,
        } for s in self.steps]


Send = Callable[[dict[str, Any], int], Awaitable[tuple[CallResult, str, str]]]


async def play(body: dict[str, Any], script: dict[str, list[ToolRule]], max_steps: int, send: Send) -> Trajectory:
    """The loop, given `send(body, step) -> (result, trace_id, span_id)` for one model call."""
    messages = list(body["messages"])
    steps: list[Step] = []
    for k in range(1, max_steps + 1):
        result, trace_id, span_id = await send({**body, "messages": messages}, k)
        step = Step(k, result, trace_id=trace_id, span_id=span_id)
        steps.append(step)
        if not result.ok:
            return Trajectory(steps, STOP_ERROR)
        if not result.tool_calls:
            return Trajectory(steps, STOP_ANSWER)
        for i, call in enumerate(result.tool_calls):
            call["id"] = call.get("id") or f"call_{k}_{i}"  # a server that sends no id: the tool message still needs one
            fn = call.get("function") or {}
            found, value = scripted_result(script, fn.get("name"), fn.get("arguments"))
            step.tool_results.append({"tool_call_id": call["id"], "name": fn.get("name"),
                                      "content": result_content(value) if found else None, "scripted": found})
        if not all(r["scripted"] for r in step.tool_results):
            return Trajectory(steps, STOP_UNSCRIPTED)
        messages = messages + [{"role": "assistant", "content": result.text or None, "tool_calls": result.tool_calls}] + [
            {"role": "tool", "tool_call_id": r["tool_call_id"], "content": r["content"]} for r in step.tool_results]
    return Trajectory(steps, STOP_MAX_STEPS)


async def play_trajectory(tracer: trace.Tracer, route: RouteConfig, run_id: str, record: PromptRecord, sample: int,
                          client: RouteClient, body: dict[str, Any], redactor: Redactor | None = None,
                          experts: Callable[[CallResult], dict[str, Any]] | None = None) -> Trajectory:
    """One route's trajectory for one row, traced: a trajectory span with a call span per step."""
    base = request_attributes(route, run_id, record.id, record.cohort, sample, body)
    with tracer.start_as_current_span("trajectory", kind=SpanKind.INTERNAL, attributes={
        **{k: v for k, v in base.items() if k.startswith("routecheck.")}, "routecheck.max_steps": record.max_steps or DEFAULT_MAX_STEPS,
    }) as span:

        async def send(step_body: dict[str, Any], k: int) -> tuple[CallResult, str, str]:
            result, call_span = await traced_chat(tracer, route, client, step_body, {**base, "routecheck.step": k}, redactor,
                                                  experts)
            ctx = call_span.get_span_context()
            return result, f"{ctx.trace_id:032x}", f"{ctx.span_id:016x}"

        traj = await play(body, record.tool_results or {}, record.max_steps or DEFAULT_MAX_STEPS, send)
        traj.span = span
        total = traj.total
        # Token totals under routecheck.* names: gen_ai.usage.* on this span would count the steps twice.
        span.set_attributes({k: v for k, v in {
            "routecheck.steps": len(traj.steps), "routecheck.stop_reason": traj.stop_reason,
            "routecheck.trajectory.input_tokens": total.input_tokens, "routecheck.trajectory.output_tokens": total.output_tokens,
            "routecheck.trajectory.total_tokens": total.total_tokens, "routecheck.latency_s": total.latency_s,
        }.items() if v is not None})
        if traj.stop_reason == STOP_ERROR:
            span.set_status(Status(StatusCode.ERROR, total.error_message))
    return traj
