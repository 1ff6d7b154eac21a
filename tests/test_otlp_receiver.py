"""The OTLP/HTTP receiver, fed by the real OTel SDK exporter over real HTTP into a real DuckDB file."""

from __future__ import annotations

import gzip
import json
import time
from pathlib import Path

import httpx
import pytest
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.http import Compression
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.trace import SpanKind, Status, StatusCode

from harness.tracing.otlp_receiver import OTLPReceiver, attach_server_spans
from harness.store import BatchWriter, connect, upsert


@pytest.fixture
def store(tmp_path: Path):
    con = connect(tmp_path / "t.duckdb")
    yield con
    con.close()


def _provider(endpoint: str, compression: Compression = Compression.NoCompression) -> TracerProvider:
    provider = TracerProvider(resource=Resource.create({"service.name": "vllm:moe-candidate"}))
    provider.add_span_processor(SimpleSpanProcessor(OTLPSpanExporter(endpoint=endpoint, compression=compression)))
    return provider


def _span_rows(con):
    return con.execute(
        "SELECT trace_id, span_id, parent_span_id, name, kind, service_name, duration_s, status_code, "
        "status_message, attributes, input_tokens, output_tokens, ttft_s FROM spans ORDER BY start_time"
    ).fetchall()


@pytest.mark.parametrize("compression", [Compression.NoCompression, Compression.Gzip])
def test_sdk_exporter_spans_are_stored_under_the_remote_parent(store, compression):
    receiver = OTLPReceiver(BatchWriter(store)).start()
    try:
        assert receiver.endpoint.startswith("http://127.0.0.1:") and receiver.endpoint.endswith("/v1/traces")
        provider = _provider(receiver.endpoint, compression)
        tracer = provider.get_tracer("test")
        # The parent as the runner's traceparent header would carry it.
        parent = trace.SpanContext(
            trace_id=0x0AF7651916CD43DD8448EB211C80319C, span_id=0xB7AD6B7169203331, is_remote=True,
            trace_flags=trace.TraceFlags(1),
        )
        ctx = trace.set_span_in_context(trace.NonRecordingSpan(parent))
        span = tracer.start_span("llm_request", context=ctx, kind=SpanKind.SERVER, start_time=1_000_000_000)
        span.set_attributes({
            "gen_ai.latency.time_in_queue": 0.01,
            "gen_ai.latency.time_in_model_prefill": 0.02,
            "gen_ai.latency.time_in_model_decode": 0.5,
            "gen_ai.latency.time_to_first_token": 0.04,
            "gen_ai.usage.prompt_tokens": 12,
            "gen_ai.usage.completion_tokens": 7,
            "tags": ["a", "b"],
            "ok": True,
        })
        span.set_status(Status(StatusCode.ERROR, "boom"))
        span.end(end_time=1_750_000_000)
        provider.shutdown()
    finally:
        receiver.stop()

    rows = _span_rows(store)
    assert len(rows) == 1
    (trace_id, span_id, parent_id, name, kind, service, duration, status, message, attrs, tin, tout, ttft) = rows[0]
    assert trace_id == "0af7651916cd43dd8448eb211c80319c"
    assert parent_id == "b7ad6b7169203331"
    assert len(span_id) == 16 and span_id == span_id.lower()
    assert (name, kind, service, status, message) == ("llm_request", "SERVER", "vllm:moe-candidate", "ERROR", "boom")
    assert duration == pytest.approx(0.75)
    attrs = json.loads(attrs)
    assert attrs["gen_ai.latency.time_in_model_decode"] == 0.5
    assert attrs["tags"] == ["a", "b"] and attrs["ok"] is True
    assert (tin, tout, ttft) == (12, 7, pytest.approx(0.04))
    assert receiver.spans_received == 1 and receiver.errors == []


def test_many_spans_in_batches(store):
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    receiver = OTLPReceiver(BatchWriter(store)).start()
    provider = TracerProvider(resource=Resource.create({"service.name": "svc"}))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=receiver.endpoint), max_export_batch_size=64))
    tracer = provider.get_tracer("t")
    with tracer.start_as_current_span("root"):
        for i in range(300):
            with tracer.start_as_current_span(f"child-{i}"):
                pass
    provider.shutdown()
    receiver.stop()
    n, n_children, n_roots = store.execute(
        "SELECT count(*), count(*) FILTER (WHERE name LIKE 'child-%'), count(*) FILTER (WHERE parent_span_id IS NULL) FROM spans"
    ).fetchone()
    assert (n, n_children, n_roots) == (301, 300, 1)
    assert receiver.requests_received >= 5  # really arrived in several exports


def test_json_body_and_bad_bodies(store):
    receiver = OTLPReceiver(BatchWriter(store)).start()
    body = {
        "resourceSpans": [{
            "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": "json-svc"}}]},
            "scopeSpans": [{"spans": [{
                "traceId": "5b8efff798038103d269b633813fc60c", "spanId": "eee19b7ec3c1b174",
                "parentSpanId": "eee19b7ec3c1b173", "name": "llm_request", "kind": 2,
                "startTimeUnixNano": "1544712660000000000", "endTimeUnixNano": "1544712661000000000",
                "attributes": [{"key": "gen_ai.latency.time_in_queue", "value": {"doubleValue": 0.25}},
                               {"key": "n", "value": {"intValue": "3"}}],
            }]}],
        }]
    }
    try:
        with httpx.Client(trust_env=False) as client:
            ok = client.post(receiver.endpoint, content=json.dumps(body), headers={"Content-Type": "application/json"})
            assert ok.status_code == 200 and ok.headers["content-type"] == "application/json"
            gz = client.post(receiver.endpoint, content=gzip.compress(b"\xff\xff\xff not protobuf"),
                             headers={"Content-Type": "application/x-protobuf", "Content-Encoding": "gzip"})
            assert gz.status_code == 400 and "DecodeError" in gz.text
            assert client.post(receiver.endpoint.replace("/v1/traces", "/v1/metrics"), content=b"").status_code == 404
            # still serving after a bad request
            assert client.post(receiver.endpoint, content=json.dumps(body), headers={"Content-Type": "application/json"}).status_code == 200
    finally:
        receiver.stop()
    rows = _span_rows(store)
    assert len(rows) == 1  # same key twice: replaced, not duplicated
    assert rows[0][:6] == ("5b8efff798038103d269b633813fc60c", "eee19b7ec3c1b174", "eee19b7ec3c1b173",
                           "llm_request", "SERVER", "json-svc")
    assert rows[0][6] == pytest.approx(1.0)
    assert json.loads(rows[0][9])["n"] == 3
    assert len(receiver.errors) == 1


def test_attach_server_spans_copies_run_and_route_from_the_client_span(store):
    upsert(store, "spans", [
        {"trace_id": "t1", "span_id": "c1", "name": "chat m", "kind": "CLIENT", "run_id": "r1", "route": "moe",
         "prompt_id": "p1", "cohort": "sql", "sample": 0},
        {"trace_id": "t1", "span_id": "s1", "parent_span_id": "c1", "name": "llm_request", "kind": "SERVER"},
        {"trace_id": "t2", "span_id": "s2", "parent_span_id": "zz", "name": "llm_request", "kind": "SERVER"},
    ])
    assert attach_server_spans(store, "r1") == 1
    assert attach_server_spans(store, "r1") == 0
    row = store.execute("SELECT run_id, route, prompt_id, cohort, sample FROM spans WHERE span_id = 's1'").fetchone()
    assert row == ("r1", "moe", "p1", "sql", 0)
    assert store.execute("SELECT run_id FROM spans WHERE span_id = 's2'").fetchone() == (None,)


def test_server_timings_join_responses_to_their_server_span(store):
    from harness.serving.engines import server_span_columns
    from harness.store.views import server_timings

    upsert(store, "responses", [
        {"run_id": "r1", "prompt_id": "p1", "route": "moe", "sample": 0, "cohort": "sql", "latency_s": 1.0,
         "ttft_s": 0.2, "trace_id": "t1", "span_id": "c1"},
        {"run_id": "r1", "prompt_id": "p2", "route": "moe", "sample": 0, "cohort": "sql", "latency_s": 2.0,
         "trace_id": "t2", "span_id": "c2"},
    ])
    attributes = {"gen_ai.latency.time_in_queue": 0.1, "gen_ai.latency.time_in_model_prefill": 0.05,
                  "gen_ai.latency.time_in_model_decode": 0.6, "gen_ai.latency.time_to_first_token": 0.16,
                  "gen_ai.latency.e2e": 0.9}
    upsert(store, "spans", [  # as the receiver stores it: with the engine's typed columns
        {"trace_id": "t1", "span_id": "s1", "parent_span_id": "c1", "name": "llm_request", "kind": "SERVER",
         "attributes": attributes, **server_span_columns("llm_request", attributes)},
    ])
    df = server_timings(store, "r1").set_index("prompt_id")
    assert df.loc["p1", "server_queue_s"] == 0.1 and df.loc["p1", "server_decode_s"] == 0.6
    assert df.loc["p1", "outside_server_s"] == pytest.approx(0.1)
    assert df["server_queue_s"].isna()["p2"] and df["outside_server_s"].isna()["p2"]


def test_wait_for_spans_counts_by_name(store):
    import threading

    receiver = OTLPReceiver(BatchWriter(store)).start()
    provider = _provider(receiver.endpoint)
    tracer = provider.get_tracer("t")
    try:
        with tracer.start_as_current_span("Overall Loading"):  # like vLLM's start-up spans
            pass
        assert receiver.wait_for_spans("llm_request", 1, timeout_s=0.3) is False

        def later():
            time.sleep(0.3)
            for _ in range(2):
                with tracer.start_as_current_span("llm_request"):
                    pass

        threading.Thread(target=later).start()
        assert receiver.wait_for_spans("llm_request", 2, timeout_s=10) is True
        assert receiver.spans_by_name == {"Overall Loading": 1, "llm_request": 2}
    finally:
        provider.shutdown()
        receiver.stop()


def test_spans_arriving_while_the_runner_uses_the_connection_are_all_stored(store):
    """The runner updates its run row on the connection the receiver writes through. DuckDB refuses
    (rather than queues) a call on a busy connection, which once lost a batch of vLLM's spans."""
    import threading

    writer = BatchWriter(store)
    upsert(store, "runs", [{"run_id": "r1", "status": "running"}])
    receiver = OTLPReceiver(writer).start()
    provider = _provider(receiver.endpoint)
    tracer = provider.get_tracer("t")
    stop = threading.Event()

    def runner_updates() -> None:
        while not stop.is_set():
            with writer.locked() as con:
                con.execute("UPDATE runs SET note = ? WHERE run_id = 'r1'", [str(time.monotonic())])

    thread = threading.Thread(target=runner_updates)
    thread.start()
    try:
        for i in range(200):
            with tracer.start_as_current_span(f"s-{i}"):
                pass
    finally:
        stop.set()
        thread.join()
        provider.shutdown()
        receiver.stop()
    assert receiver.errors == []
    assert store.execute("SELECT count(*) FROM spans").fetchone()[0] == 200


def test_a_half_fetched_read_on_the_owners_connection_does_not_refuse_spans(store):
    """The owner polls the store with `fetchone()`, which leaves the result open on its connection.
    The writer's flushes go through their own cursor, so the receiver stores every span meanwhile
    (they once answered 503 "unfinished result" for all of vLLM's spans)."""
    receiver = OTLPReceiver(BatchWriter(store)).start()
    provider = _provider(receiver.endpoint)
    try:
        pending = store.execute("SELECT * FROM range(10)")
        assert pending.fetchone() == (0,)  # unfinished: nine rows left
        with provider.get_tracer("t").start_as_current_span("llm_request"):
            pass
        provider.force_flush()
        assert receiver.errors == []
        assert receiver.spans_received == 1
    finally:
        provider.shutdown()
        receiver.stop()
    assert store.execute("SELECT name FROM spans").fetchall() == [("llm_request",)]


def test_a_store_failure_is_answered_with_a_retryable_503(tmp_path):
    broken = connect(tmp_path / "b.duckdb")
    broken.close()  # every write now fails, as a full disk or a lost file would
    receiver = OTLPReceiver(BatchWriter(broken)).start()
    try:
        from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans

        with TracerProvider().get_tracer("t").start_as_current_span("x") as span:
            pass
        with httpx.Client(trust_env=False) as client:
            reply = client.post(receiver.endpoint, content=encode_spans([span]).SerializeToString(),
                                headers={"Content-Type": "application/x-protobuf"})
        assert reply.status_code == 503, reply.text  # OTLP exporters retry 503; a 400 would drop the batch
        assert receiver.errors and receiver.spans_received == 0
    finally:
        receiver.stop()
