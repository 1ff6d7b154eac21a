"""One model call as one client span: the single place where a call is traced, so a plain mirror
call and each step of an agent trajectory carry the same attributes, status and traceparent."""

from __future__ import annotations

from typing import Any

import httpx
from opentelemetry import propagate, trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from harness.config import RouteConfig
from harness.mirror.attributes import result_attributes
from harness.mirror.openai_stream import CallResult, RetryPolicy, stream_chat


async def traced_chat(tracer: trace.Tracer, route: RouteConfig, client: httpx.AsyncClient, body: dict[str, Any],
                      attributes: dict[str, Any]) -> tuple[CallResult, trace.Span]:
    """Stream one chat completion inside a `chat <model>` span; the span is ended when this returns
    (its context stays readable for the store's trace and span ids)."""
    with tracer.start_as_current_span(
        f"chat {route.model}", kind=SpanKind.CLIENT, attributes=attributes,
        record_exception=False, set_status_on_exception=False,
    ) as span:
        headers: dict[str, str] = {}
        propagate.inject(headers)  # W3C traceparent: server-side spans join this trace
        result = await stream_chat(client, body, headers, route.timeout_s, RetryPolicy(max_retries=route.max_retries))
        span.set_attributes(result_attributes(result))
        if not result.ok:
            span.set_status(Status(StatusCode.ERROR, result.error_message))
    return result, span
