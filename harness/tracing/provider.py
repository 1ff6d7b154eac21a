"""OpenTelemetry set-up for a run: spans go to the store always, and over OTLP when configured.

Another span destination is another SpanExporter added to the provider here.
"""

from __future__ import annotations

import os
import threading
from typing import Callable, Sequence

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

from harness import __version__
from harness.store import BatchWriter
from harness.tracing.exporter import DuckDBSpanExporter

TRACER_NAME = "routecheck"


class _InitOnce(SpanExporter):
    """An exporter that first runs `init` in the thread exporting (the span processor's worker)."""

    def __init__(self, inner: SpanExporter, init: Callable[[], None]):
        self.inner, self._init, self._done = inner, init, threading.local()

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        if not getattr(self._done, "yes", False):
            self._done.yes = True
            self._init()
        return self.inner.export(spans)

    def shutdown(self) -> None:
        self.inner.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self.inner.force_flush(timeout_millis)


def make_tracer_provider(writer: BatchWriter, otlp_endpoint: str | None = None,
                         thread_init: Callable[[], None] | None = None) -> TracerProvider:
    """Spans go to DuckDB always, and over OTLP/HTTP when an endpoint is given or set in the environment.

    The provider is not installed globally, so several runs (tests) never share one.
    Spans are only buffered in the writer, whose owner (the mirror runner, the proxy's recorder)
    flushes it every second; they are handed over every 0.25 s, so a span is durable within about 1.25 s.
    `thread_init` runs first in each exporting thread (the proxy lowers their CPU priority there).
    """
    def wrap(exporter: SpanExporter) -> SpanExporter:
        return _InitOnce(exporter, thread_init) if thread_init is not None else exporter

    provider = TracerProvider(resource=Resource.create({"service.name": "routecheck", "service.version": __version__}))
    provider.add_span_processor(BatchSpanProcessor(wrap(DuckDBSpanExporter(writer)), schedule_delay_millis=250, max_queue_size=65536))
    endpoint = otlp_endpoint or os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
    if endpoint:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        if not endpoint.rstrip("/").endswith("/v1/traces"):
            endpoint = endpoint.rstrip("/") + "/v1/traces"
        provider.add_span_processor(BatchSpanProcessor(wrap(OTLPSpanExporter(endpoint=endpoint))))
    return provider


def tracer(provider: TracerProvider) -> trace.Tracer:
    return provider.get_tracer(TRACER_NAME, __version__)
