"""Call spans rebuilt from their response rows, for calls whose span never reached the store.

A span is exported about a second after its call ends, so a run killed (or a store failing) in
between keeps the response row but not its span; a span the SDK's queue dropped under overload
is lost the same way. Each response row names its call span (trace_id, span_id): where that span
is missing it is rebuilt from the row, with `routecheck.restored = true` (the parent mirror span
is not known any more). Run on `--resume` and at the end of every run.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import duckdb

from harness.tracing.span_rows import span_row

_MISSING = """
SELECT r.trace_id, r.span_id, r.route, r.role, r.prompt_id, r.cohort, r.sample, r.model, r.response_model, r.response_id,
       r.finish_reason, r.input_tokens, r.output_tokens, r.total_tokens, r.usage_source, r.started_at, r.latency_s,
       r.ttft_s, r.itl_mean_s, r.attempts, r.http_status, r.error_type, r.error_message
FROM responses r
WHERE r.run_id = ? AND r.trace_id IS NOT NULL AND r.span_id IS NOT NULL
  AND NOT EXISTS (SELECT 1 FROM spans s WHERE s.trace_id = r.trace_id AND s.span_id = r.span_id)
"""


def missing_call_spans(con: duckdb.DuckDBPyConnection, run_id: str, successful_only: bool = False) -> list[dict[str, Any]]:
    """The `spans` rows to add for the run's responses whose call span is not stored."""
    cur = con.execute(_MISSING + (" AND r.error_type IS NULL" if successful_only else ""), [run_id])
    names = [d[0] for d in cur.description]
    return [_span(run_id, dict(zip(names, row))) for row in cur.fetchall()]


def _ns(t: datetime | None, plus_s: float | None = 0.0) -> int | None:
    return None if t is None else int((t.timestamp() + (plus_s or 0.0)) * 1e9)


def _span(run_id: str, r: dict[str, Any]) -> dict[str, Any]:
    attrs = {
        "gen_ai.operation.name": "chat", "gen_ai.request.model": r["model"], "gen_ai.response.model": r["response_model"],
        "gen_ai.response.id": r["response_id"],
        "gen_ai.response.finish_reasons": [r["finish_reason"]] if r["finish_reason"] else None,
        "gen_ai.usage.input_tokens": r["input_tokens"], "gen_ai.usage.output_tokens": r["output_tokens"],
        "llm.token_count.total": r["total_tokens"], "openinference.span.kind": "LLM",
        "routecheck.run_id": run_id, "routecheck.route": r["route"], "routecheck.role": r["role"],
        "routecheck.prompt_id": r["prompt_id"], "routecheck.cohort": r["cohort"], "routecheck.sample": r["sample"],
        "routecheck.usage_source": r["usage_source"], "routecheck.time_to_first_token_s": r["ttft_s"],
        "routecheck.latency_s": r["latency_s"], "routecheck.inter_token_latency_mean_s": r["itl_mean_s"],
        "routecheck.attempts": r["attempts"], "http.response.status_code": r["http_status"], "error.type": r["error_type"],
        "routecheck.restored": True,
    }
    start = _ns(r["started_at"])
    return span_row(
        trace_id=r["trace_id"], span_id=r["span_id"], parent_span_id=None, name=f"chat {r['model']}", kind="CLIENT",
        service_name="routecheck", start_ns=start, end_ns=_ns(r["started_at"], r["latency_s"]) if r["latency_s"] else start,
        status_code="ERROR" if r["error_type"] else "UNSET", status_message=r["error_message"],
        attributes={k: v for k, v in attrs.items() if v is not None},
    )
