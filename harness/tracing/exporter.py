"""A SpanExporter that writes finished spans into the store's `spans` table.

It plugs into the SDK's BatchSpanProcessor, which does the batching, queueing and drop counting;
OTLP export is a second exporter on the same provider. An export only buffers the rows in the
shared BatchWriter: its owner flushes it every second (the mirror runner, the proxy's recorder),
so spans and responses reach the file in one write per table per second instead of one more per
export (each DuckDB insert costs milliseconds whatever its size: docs/benchmarks.md).
`force_flush` (the provider's, at the end of a run) writes them at once.
"""

from __future__ import annotations

from typing import Sequence

from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

from harness.store import BatchWriter
from harness.tracing.span_rows import span_row

class DuckDBSpanExporter(SpanExporter):
    """Only buffers: each flush is a transaction per table whose fixed cost (~15-30 ms of CPU here)
    does not depend on its rows, so the writer's owner flushes once a second for spans and rows alike."""

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
                    trace_id=f"{ctx.trace_id:032x}",
                    span_id=f"{ctx.span_id:016x}",
                    parent_span_id=f"{s.parent.span_id:016x}" if s.parent and s.parent.span_id else None,
                    name=s.name,
                    kind=s.kind.name,
                    service_name=s.resource.attributes.get("service.name"),
                    start_ns=s.start_time,
                    end_ns=s.end_time,
                    status_code=s.status.status_code.name,
                    status_message=s.status.description,
                    attributes=s.attributes or {},  # JSON writes the SDK's tuples as arrays, as lists
                )
            )
        try:
            self._writer.add("spans", rows)
        except Exception:  # the SDK logs a failed export; the run goes on
            return SpanExportResult.FAILURE
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        self._shutdown = True

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        self._writer.flush()
        return True
