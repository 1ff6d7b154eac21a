"""The attributes a route call's span carries.

Names follow the OTel GenAI semantic conventions (gen_ai.*) and, for tracing products that read
them, OpenInference (llm.*). routecheck's own keys are prefixed `routecheck.`; architecture tags
are plain (`architecture`, `active_experts`, ...) as users filter on them.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlparse

from harness.config import RouteConfig
from harness.mirror.openai_stream import CallResult


def request_attributes(route: RouteConfig, run_id: str, prompt_id: str, cohort: str, sample: int, body: dict[str, Any]) -> dict[str, Any]:
    url = urlparse(route.base_url or "")
    attrs: dict[str, Any] = {
        "gen_ai.operation.name": "chat",
        "gen_ai.provider.name": "openai",
        "gen_ai.request.model": route.model,
        "gen_ai.request.temperature": body.get("temperature"),
        "gen_ai.request.max_tokens": body.get("max_tokens"),
        "gen_ai.request.seed": body.get("seed"),
        "llm.model_name": route.model,
        "openinference.span.kind": "LLM",
        "server.address": url.hostname,
        "server.port": url.port or (443 if url.scheme == "https" else 80),
        "routecheck.run_id": run_id,
        "routecheck.prompt_id": prompt_id,
        "routecheck.cohort": cohort,
        "routecheck.sample": sample,
        **route.span_attributes(),
    }
    return {k: v for k, v in attrs.items() if v is not None}


def result_attributes(result: CallResult) -> dict[str, Any]:
    attrs: dict[str, Any] = {
        "gen_ai.response.model": result.response_model,
        "gen_ai.response.id": result.response_id,
        "gen_ai.response.finish_reasons": [result.finish_reason] if result.finish_reason else None,
        "gen_ai.usage.input_tokens": result.input_tokens,
        "gen_ai.usage.output_tokens": result.output_tokens,
        "llm.token_count.prompt": result.input_tokens,
        "llm.token_count.completion": result.output_tokens,
        "llm.token_count.total": result.total_tokens,
        "routecheck.usage_source": result.usage_source,
        "routecheck.time_to_first_token_s": result.ttft_s,
        "routecheck.time_to_first_content_s": result.ttft_content_s,
        "routecheck.time_to_first_chunk_s": result.ttft_chunk_s,
        "routecheck.latency_s": result.latency_s,
        "routecheck.inter_token_latency_mean_s": result.itl_mean_s,
        "routecheck.attempts": result.attempts,
        "routecheck.tool_call_count": len(result.tool_calls),
        "http.response.status_code": result.http_status,
        "error.type": result.error_type,
        "routecheck.flags": result.flags or None,
    }
    return {k: v for k, v in attrs.items() if v is not None}
