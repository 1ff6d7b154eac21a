"""A small OTLP/HTTP trace receiver, so the servers' own spans land in the same `spans` table.

A serving engine exports one SERVER span per request (vLLM with `--otlp-traces-endpoint`) whose
parent is the client span named in the `traceparent` header the runner sends; the engine's
`span_columns` (passed in as `span_columns`) maps its attributes to typed timing columns. Server spans carry
no routecheck attributes; they join client spans through trace_id / parent_span_id
(`attach_server_spans` copies run, route, prompt and cohort over once both are stored).

Only traces over HTTP are accepted: protobuf (what servers send with
OTEL_EXPORTER_OTLP_TRACES_PROTOCOL=http/protobuf) and OTLP JSON.
"""

from __future__ import annotations

import base64
import gzip
import json
import logging
import threading
import zlib
from collections import Counter
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, Mapping

import duckdb
from google.protobuf import json_format
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from opentelemetry.proto.trace.v1 import trace_pb2

from harness.serving.engines import server_span_columns
from harness.store import BatchWriter
from harness.tracing.span_rows import span_row

# (span name, attributes) -> typed columns of a server's per-request span, or None for other spans.
SpanColumns = Callable[[str, Mapping[str, Any]], "dict[str, Any] | None"]

log = logging.getLogger(__name__)

TRACES_PATH = "/v1/traces"
MAX_BODY_BYTES = 64 * 1024 * 1024

_KIND = {v: k.removeprefix("SPAN_KIND_") for k, v in trace_pb2.Span.SpanKind.items()}
_STATUS = {v: k.removeprefix("STATUS_CODE_") for k, v in trace_pb2.Status.StatusCode.items()}


class OTLPReceiver:
    """OTLP/HTTP trace endpoint on 127.0.0.1 in a background thread, writing spans via a BatchWriter.

    Rows are flushed after every export request (vLLM already batches), so a span that was
    acknowledged with 200 is in the store.
    """

    def __init__(self, writer: BatchWriter, host: str = "127.0.0.1", port: int = 0,
                 span_columns: SpanColumns | None = server_span_columns):
        self._writer = writer
        self._span_columns = span_columns  # default: every known engine's per-request span
        self._host = host
        self._port = port
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.spans_received = 0
        self.requests_received = 0
        self.spans_by_name: Counter[str] = Counter()  # servers also export start-up spans: count per name
        self.server_request_spans = 0  # spans `span_columns` recognised as a server's per-request span
        self.errors: list[str] = []
        self._count_lock = threading.Condition()

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("OTLP receiver is not started")
        return self._server.server_address[1]

    @property
    def endpoint(self) -> str:
        """The full traces URL, as vLLM's `--otlp-traces-endpoint` wants it."""
        return f"http://{self._host}:{self.port}{TRACES_PATH}"

    def start(self) -> "OTLPReceiver":
        if self._server is not None:
            return self
        receiver = self

        class Handler(_Handler):
            pass

        Handler.receiver = receiver
        self._server = ThreadingHTTPServer((self._host, self._port), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="otlp-receiver", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop accepting spans and flush what was received."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        self._writer.flush()

    def __enter__(self) -> "OTLPReceiver":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def ingest(self, request: ExportTraceServiceRequest) -> int:
        rows = spans_to_rows(request, self._span_columns)
        if rows:
            self._writer.add("spans", rows)
            self._writer.flush()
        with self._count_lock:
            self.spans_received += len(rows)
            self.requests_received += 1
            self.spans_by_name.update(r["name"] for r in rows)
            self.server_request_spans += sum(1 for r in rows if r.get("engine"))
            self._count_lock.notify_all()
        return len(rows)

    def wait_for_server_spans(self, count: int, timeout_s: float) -> bool:
        """Block until `count` per-request server spans (as `span_columns` recognises them) have been
        stored, or the timeout passes; returns whether they all arrived."""
        with self._count_lock:
            return self._count_lock.wait_for(lambda: self.server_request_spans >= count, timeout=timeout_s)

    def wait_for_spans(self, name: str, count: int, timeout_s: float) -> bool:
        """Block until `count` spans called `name` have been stored, or the
        timeout passes; returns whether they all arrived (servers export in batches, every ~5 s)."""
        with self._count_lock:
            return self._count_lock.wait_for(lambda: self.spans_by_name[name] >= count, timeout=timeout_s)


class _Handler(BaseHTTPRequestHandler):
    receiver: OTLPReceiver
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        log.debug("otlp receiver: " + format, *args)

    def do_POST(self) -> None:  # noqa: N802 - stdlib name
        if self.path.split("?")[0] != TRACES_PATH:
            self._reply(HTTPStatus.NOT_FOUND, b"only /v1/traces is served here", "text/plain")
            return
        try:
            length = int(self.headers.get("Content-Length") or 0)
            if length > MAX_BODY_BYTES:
                raise ValueError(f"body of {length} bytes is over the {MAX_BODY_BYTES} byte limit")
            body = _decompress(self.rfile.read(length), self.headers.get("Content-Encoding", ""))
            content_type = (self.headers.get("Content-Type") or "application/x-protobuf").split(";")[0].strip()
            is_json = content_type == "application/json"
            request = parse_json_request(body) if is_json else parse_protobuf_request(body)
        except Exception as e:  # a bad export must not kill the receiver; tell the sender why (not retryable)
            self._reject(HTTPStatus.BAD_REQUEST, e)
            return
        try:
            self.receiver.ingest(request)
        except Exception as e:  # the store failed, not the sender: 503 makes OTLP exporters retry the batch
            self._reject(HTTPStatus.SERVICE_UNAVAILABLE, e)
            return
        response = ExportTraceServiceResponse()
        if is_json:
            self._reply(HTTPStatus.OK, json_format.MessageToJson(response).encode(), "application/json")
        else:
            self._reply(HTTPStatus.OK, response.SerializeToString(), "application/x-protobuf")

    def _reject(self, status: HTTPStatus, error: Exception) -> None:
        message = f"{type(error).__name__}: {error}"
        self.receiver.errors.append(message)
        log.warning("otlp receiver rejected an export (%d): %s", status, message)
        self._reply(status, message.encode(), "text/plain")

    def _reply(self, status: HTTPStatus, body: bytes, content_type: str) -> None:
        try:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
            # The exporter hung up before the answer (a vLLM server exiting right after its last export);
            # the batch is already handled, so there is no one to tell and nothing to print.
            self.close_connection = True


def _decompress(body: bytes, encoding: str) -> bytes:
    encoding = encoding.strip().lower()
    if encoding == "gzip":
        return gzip.decompress(body)
    if encoding == "deflate":
        return zlib.decompress(body)
    if encoding in ("", "identity"):
        return body
    raise ValueError(f"unsupported Content-Encoding {encoding!r}")


def parse_protobuf_request(body: bytes) -> ExportTraceServiceRequest:
    request = ExportTraceServiceRequest()
    request.ParseFromString(body)
    return request


_ID_KEYS = ("traceId", "spanId", "parentSpanId")


def parse_json_request(body: bytes) -> ExportTraceServiceRequest:
    """OTLP JSON writes ids as hex, where protobuf's JSON mapping expects base64: convert, then parse."""
    data = json.loads(body)

    def fix_ids(node: Any) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if key in _ID_KEYS and isinstance(value, str) and value:
                    node[key] = base64.b64encode(bytes.fromhex(value)).decode()
                else:
                    fix_ids(value)
        elif isinstance(node, list):
            for item in node:
                fix_ids(item)

    fix_ids(data)
    return json_format.ParseDict(data, ExportTraceServiceRequest(), ignore_unknown_fields=True)


def any_value(value: AnyValue) -> Any:
    """An OTLP AnyValue as a plain JSON-able Python value."""
    which = value.WhichOneof("value")
    if which is None:
        return None
    if which == "array_value":
        return [any_value(v) for v in value.array_value.values]
    if which == "kvlist_value":
        return {kv.key: any_value(kv.value) for kv in value.kvlist_value.values}
    if which == "bytes_value":
        return value.bytes_value.hex()
    return getattr(value, which)


def spans_to_rows(request: ExportTraceServiceRequest, span_columns: SpanColumns | None = None) -> list[dict[str, Any]]:
    """One `spans` row per span, with the resource's service.name; `span_columns` adds the typed
    columns of a serving engine's per-request span."""
    rows = []
    for resource_spans in request.resource_spans:
        resource = {kv.key: any_value(kv.value) for kv in resource_spans.resource.attributes}
        service = resource.get("service.name")
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                attrs = {kv.key: any_value(kv.value) for kv in span.attributes}
                extra = span_columns(span.name, attrs) if span_columns else None
                rows.append(span_row(
                    trace_id=span.trace_id.hex(), span_id=span.span_id.hex(), parent_span_id=span.parent_span_id.hex() or None,
                    name=span.name, kind=_KIND.get(span.kind, str(span.kind)), service_name=service,
                    start_ns=span.start_time_unix_nano, end_ns=span.end_time_unix_nano,
                    status_code=_STATUS.get(span.status.code, str(span.status.code)), status_message=span.status.message,
                    attributes={**attrs, "otel.resource": resource} if resource else attrs, extra=extra,
                ))
    return rows


def attach_server_spans(con: duckdb.DuckDBPyConnection, run_id: str | None = None) -> int:
    """Copy run_id, route, prompt_id, cohort and sample from each client span to the server spans
    under it (same trace, parent = client span), so server spans filter like client spans.

    Returns how many server spans were updated. Safe to call repeatedly.
    """
    where_run = "AND c.run_id = ?" if run_id else ""
    params = [run_id] if run_id else []
    before = con.execute("SELECT count(*) FROM spans WHERE run_id IS NOT NULL").fetchone()[0]
    con.execute(
        f"""
        UPDATE spans AS s SET
            run_id = c.run_id, route = c.route, prompt_id = c.prompt_id,
            cohort = c.cohort, sample = c.sample
        FROM spans AS c
        WHERE s.trace_id = c.trace_id AND s.parent_span_id = c.span_id
          AND s.run_id IS NULL AND c.run_id IS NOT NULL {where_run}
        """,
        params,
    )
    after = con.execute("SELECT count(*) FROM spans WHERE run_id IS NOT NULL").fetchone()[0]
    return after - before


