"""Spans also leave over OTLP/HTTP when an endpoint is set: received by a real OTLP receiver."""

import time

import duckdb

from conftest import write_corpus, write_routes
from harness.config import load_routes
from harness.tracing.otlp_receiver import OTLPReceiver
from harness.mirror.runner import MirrorOptions, run_mirror
from harness.store import BatchWriter, connect


def test_spans_exported_over_otlp(tmp_path, stub_server):
    stub = stub_server()
    collector_con = connect(tmp_path / "collector.duckdb")
    with OTLPReceiver(BatchWriter(collector_con)) as receiver:
        routes = write_routes(tmp_path / "routes.yaml", [{"name": "r", "role": "baseline", "model": "m", "base_url": stub.base_url}])
        corpus = write_corpus(tmp_path / "c.jsonl", [{"id": f"p{i}", "cohort": "c", "prompt": "hi"} for i in range(5)])
        run_mirror(load_routes(routes), MirrorOptions(corpus=corpus, db=tmp_path / "s.duckdb", warmup=0,
                                                      otlp_endpoint=receiver.endpoint.removesuffix("/v1/traces")))
        deadline = time.monotonic() + 10
        while receiver.spans_received < 10 and time.monotonic() < deadline:
            time.sleep(0.1)
    got = collector_con.execute("SELECT name, service_name, count(*) FROM spans GROUP BY ALL ORDER BY 1").fetchall()
    assert got == [("chat m", "routecheck", 5), ("mirror", "routecheck", 5)]
    local = duckdb.connect(str(tmp_path / "s.duckdb"), read_only=True)
    assert set(local.execute("SELECT span_id FROM spans").fetchall()) == set(collector_con.execute("SELECT span_id FROM spans").fetchall())
