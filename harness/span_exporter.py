"""A SpanExporter that writes finished spans into the store's `spans` table.

It plugs into the SDK's BatchSpanProcessor, which does the batching, queueing and drop counting;
OTLP export is a second exporter on the same provider.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import Any, Sequence

from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

from harness.store import BatchWriter

# Span attributes copied into typed columns of `spans`, so reports need no JSON parsing.
TYPED_ATTRIBUTES = {
    "run_id": "routecheck.run_id",
    "route": "routecheck.route",
    "prompt_id": "routecheck.prompt_id",
    "cohort": "routecheck.cohort",
    "sample": "routecheck.sample",
    "input_tokens": "gen_ai.usage.input_tokens",
    "output_tokens": "gen_ai.usage.output_tokens",
    "ttft_s": "routecheck.time_to_first_token_s",
    "error_type": "error.type",
}


def ns_to_datetime(ns: int | None) -> datetime | None:
    return None if ns is None else datetime.fromtimestamp(ns / 1e9, tz=timezone.utc)


def span_row(
    trace_id: int,
    span_id: int,
    parent_span_id: int | None,
    name: str,
    kind: str,
    service_name: str | None,
    start_ns: int | None,
    end_ns: int | None,
    status_code: str,
    status_message: str | None,
    attributes: dict[str, Any],
) -> dict[str, Any]:
    """The `spans` row for one span; shared by this exporter and the OTLP receiver."""
    row = {
        "trace_id": f"{trace_id:032x}",
        "span_id": f"{span_id:016x}",
        "parent_span_id": None if not parent_span_id else f"{parent_span_id:016x}",
        "name": name,
        "kind": kind,
        "service_name": service_name,
        "start_time": ns_to_datetime(start_ns),
        "end_time": ns_to_datetime(end_ns),
        "duration_s": None if start_ns is None or end_ns is None else (end_ns - start_ns) / 1e9,
        "status_code": status_code,
        "status_message": status_message,
        "attributes": json.dumps(attributes, default=str),
    }
    for column, key in TYPED_ATTRIBUTES.items():
        row[column] = attributes.get(key)
    return row


class DuckDBSpanExporter(SpanExporter):
    def __init__(self, writer: BatchWriter):
        self._writer = writer
        self._shutdown = False

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        if self._shutdown:
            return SpanExportResult.FAILURE
        rows = []
        for s in spans:
            ctx = s.context
            rows.append(
                span_row(
                    trace_id=ctx.trace_id,
                    span_id=ctx.span_id,
                    parent_span_id=s.parent.span_id if s.parent else None,
                    name=s.name,
                    kind=s.kind.name,
                    service_name=s.resource.attributes.get("service.name"),
                    start_ns=s.start_time,
                    end_ns=s.end_time,
                    status_code=s.status.status_code.name,
                    status_message=s.status.description,
                    attributes={k: list(v) if isinstance(v, tuple) else v for k, v in (s.attributes or {}).items()},
                )
            )
        try:
            self._writer.add("spans", rows)
            self._writer.flush()
        except Exception:  # the SDK logs a failed export; the run goes on
            return SpanExportResult.FAILURE
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        self._shutdown = True

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        self._writer.flush()
        return True
