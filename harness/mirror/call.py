"""One model call as one client span: the single place where a call is traced, so a plain mirror
call and each step of an agent trajectory carry the same attributes, status and traceparent."""

from __future__ import annotations

from typing import Any, Callable

import time

from opentelemetry import propagate, trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from harness.config import RouteConfig
from harness.mirror.http import RouteClient
from harness.mirror.attributes import result_attributes
from harness.mirror.openai_stream import CallResult, RetryPolicy, stream_chat
from harness.store.redact import Redactor


async def traced_chat(tracer: trace.Tracer, route: RouteConfig, client: RouteClient, body: dict[str, Any],
                      attributes: dict[str, Any], redactor: Redactor | None = None,
                      experts: Callable[[CallResult], dict[str, Any]] | None = None) -> tuple[CallResult, trace.Span]:
    """Stream one chat completion inside a `chat <model>` span; the span is ended when this returns
    (its context stays readable for the store's trace and span ids). Never raises: whatever goes
    wrong is this call's error row. Known API keys are redacted from the error before the span
    gets it, since spans may leave over OTLP. `experts` gives the call's measured routing
    attributes (`routecheck.experts.*`) from the result, when the route records routing."""
    with tracer.start_as_current_span(
        f"chat {route.model}", kind=SpanKind.CLIENT, attributes=attributes,
        record_exception=False, set_status_on_exception=False,
    ) as span:
        headers: dict[str, str] = {}
        propagate.inject(headers)  # W3C traceparent: server-side spans join this trace
        try:
            result = await stream_chat(client, body, headers, route.timeout_s, RetryPolicy(max_retries=route.max_retries))
        except Exception as e:  # stream_chat does not raise; should it, the call is still a row
            result = CallResult(started_at=time.time(), text=None, error_type="client_error", error_message=f"{type(e).__name__}: {e}")
        if not result.ok and redactor and result.error_message:
            result.error_message = redactor.text(result.error_message)
        span.set_attributes(result_attributes(result))
        if experts is not None and result.ok:
            try:
                span.set_attributes(experts(result))
            except Exception as e:  # telemetry must never cost the call
                result.flags.append("experts_invalid")
                span.set_attribute("routecheck.experts.error", f"{type(e).__name__}: {e}"[:300])
        if not result.ok:
            span.set_status(Status(StatusCode.ERROR, result.error_message))
    return result, span
