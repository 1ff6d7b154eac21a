"""The tracing stage: OpenTelemetry spans into the store (and OTLP), and the receiver for server spans.

    provider.py       TracerProvider for a run (store exporter, optional OTLP exporter)
    span_rows.py      one span -> one `spans` row (shared by the exporter and the receiver)
    exporter.py       SpanExporter -> `spans`
    otlp_receiver.py  OTLP/HTTP endpoint for the servers' own spans
"""
