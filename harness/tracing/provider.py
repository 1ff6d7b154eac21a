"""OpenTelemetry set-up for a run: spans go to the store always, and over OTLP when configured.

Another span destination is another SpanExporter added to the provider here.
"""

from __future__ import annotations

import os

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.trace.id_generator import IdGenerator

from harness import __version__
from harness.store import BatchWriter
from harness.tracing.exporter import DuckDBSpanExporter

TRACER_NAME = "routecheck"


def make_tracer_provider(writer: BatchWriter, otlp_endpoint: str | None = None,
                         id_generator: IdGenerator | None = None) -> TracerProvider:
    """Spans go to DuckDB always, and over OTLP/HTTP when an endpoint is given or set in the environment.

    The provider is not installed globally, so several runs (tests) never share one.
    Spans are only buffered in the writer, whose owner (the mirror runner, the proxy's recorder)
    flushes it every second; they are handed over every 0.25 s, so a span is durable within about 1.25 s.
    `id_generator`: the proxy's recording process makes spans whose ids the serving process chose.
    """
    provider = TracerProvider(resource=Resource.create({"service.name": "routecheck", "service.version": __version__}),
                              id_generator=id_generator)
    provider.add_span_processor(BatchSpanProcessor(DuckDBSpanExporter(writer), schedule_delay_millis=250, max_queue_size=65536))
    endpoint = otlp_endpoint or os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
    if endpoint:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        if not endpoint.rstrip("/").endswith("/v1/traces"):
            endpoint = endpoint.rstrip("/") + "/v1/traces"
        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint)))
    return provider


def tracer(provider: TracerProvider) -> trace.Tracer:
    return provider.get_tracer(TRACER_NAME, __version__)
