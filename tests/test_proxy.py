"""`routecheck proxy` in its own process in front of stub routes on 127.0.0.1, called with the real
`openai` client (sync and async, streamed and not, tool calls, content as a list of parts).

Each test starts its proxy (~4 s of imports); the stubs keep the exact bytes they sent
(`record_bodies`), so "the client sees the primary's bytes" is a byte comparison.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import statistics
import threading
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import duckdb
import httpx
import openai
import pytest
from typer.testing import CliRunner

from conftest import REPO, write_routes
from harness.testing.proxy_process import ProxyProcess

TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "Weather in a city",
                                           "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}]
PARTS = [{"type": "text", "text": "describe this picture"},
         {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgoAAAANSUhEUg=="}}]


@pytest.fixture
def proxies():
    """Factory: `proxies(routes, db, *args, env=...)` starts `routecheck proxy`; killed at teardown if still up."""
    started: list[ProxyProcess] = []

    def start(routes: Path, db: Path, *args: str, env: dict[str, str] | None = None) -> ProxyProcess:
        p = ProxyProcess(routes, db, args, env={"PYTHONPATH": str(REPO), **(env or {})}, cwd=REPO)
        started.append(p)
        return p

    yield start
    for p in started:
        if p.proc.poll() is None:
            p.stop(signal.SIGKILL)


def two_routes(tmp: Path, base_url: str, cand_url: str, **cand: Any) -> Path:
    return write_routes(tmp / "routes.yaml", [
        {"name": "dense", "role": "baseline", "model": "dense-model", "base_url": base_url},
        {"name": "moe", "role": "candidate", "model": "moe-model", "base_url": cand_url, **cand}])


def client(p: ProxyProcess, **kw: Any) -> openai.OpenAI:
    return openai.OpenAI(base_url=p.base_url, api_key=kw.pop("api_key", "unused"), max_retries=0, **kw)


def rows(db: Path, sql: str, *params: Any) -> list[tuple]:
    con = duckdb.connect(str(db), read_only=True)
    try:
        return con.execute(sql, list(params)).fetchall()
    finally:
        con.close()


def sse_chunks(raw: bytes) -> list[dict[str, Any]]:
    return [json.loads(line[6:]) for line in raw.decode().splitlines() if line.startswith("data: {")]


def stats(p: ProxyProcess, token: str | None = None) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.get(p.url + "/admin/stats", headers=headers).json()


def wait_for(cond, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.05)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def closed_port() -> int:
    """A port nothing listens on and nothing will: below the ephemeral range, so no server started on
    port 0 later (the proxy itself) takes it, and no outgoing connection starts from it (a TCP
    self-connect, which once made this 'dead' route answer garbage instead of refusing)."""
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    for port in range(low - 1, 1024, -1):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port below the ephemeral range")


# -- the primary's bytes, the mirror's rows ------------------------------------------------------
def test_openai_clients_get_the_primarys_bytes_and_both_calls_are_recorded(tmp_path, stub_server, proxies):
    base = stub_server(record_bodies=100, tool_arguments={"city": "Paris"}, fail_on={"[[boom]]": 400})
    cand = stub_server(record_bodies=100, tool_arguments={"city": "Lyon"}, answer="candidate says hi")
    db = tmp_path / "store.duckdb"
    p = proxies(two_routes(tmp_path, base.base_url, cand.base_url), db)
    c = client(p)

    def sent() -> dict[str, str]:
        return httpx.get(base.url + "/stub/bodies").json()

    # sync, not streamed, content as parts
    raw = c.chat.completions.with_raw_response.create(model="anything", messages=[{"role": "user", "content": PARTS}])
    done = raw.parse()
    assert done.choices[0].message.content == "Echo: describe this picture"
    assert raw.content == sent()[done.id].encode()
    assert raw.headers["content-type"] == "application/json"

    # sync, streamed, tool call: bytes and the client's assembled call
    with c.chat.completions.with_streaming_response.create(
            model="anything", stream=True, tools=TOOLS, stream_options={"include_usage": True},
            messages=[{"role": "system", "content": "be brief"}, {"role": "user", "content": "weather?"}]) as resp:
        assert resp.headers["content-type"].startswith("text/event-stream")
        streamed = b"".join(resp.iter_bytes())
    chunks = sse_chunks(streamed)
    assert streamed == sent()[chunks[0]["id"]].encode()
    args = "".join(ch["choices"][0]["delta"]["tool_calls"][0]["function"]["arguments"]
                   for ch in chunks if ch["choices"] and ch["choices"][0]["delta"].get("tool_calls"))
    assert json.loads(args) == {"city": "Paris"} and chunks[-1]["usage"]["completion_tokens"] > 0

    # sync streamed through the typed iterator; not streamed with tools
    text = "".join(ch.choices[0].delta.content or "" for ch in
                   c.chat.completions.create(model="x", stream=True, messages=[{"role": "user", "content": "one two three"}]) if ch.choices)
    assert text == "Echo: one two three"
    tc = c.chat.completions.create(model="x", tools=TOOLS, messages=[{"role": "user", "content": "weather?"}])
    assert tc.choices[0].message.tool_calls[0].function.name == "get_weather"

    # async, streamed and not
    async def async_calls() -> tuple[bytes, str, str]:
        ac = openai.AsyncOpenAI(base_url=p.base_url, api_key="unused", max_retries=0)
        async with ac.chat.completions.with_streaming_response.create(
                model="x", stream=True, messages=[{"role": "user", "content": PARTS}]) as r:
            data = b"".join([b async for b in r.iter_bytes()])
        plain = await ac.chat.completions.create(model="x", messages=[{"role": "user", "content": "async plain"}])
        await ac.close()
        return data, plain.id, plain.choices[0].message.content

    data, plain_id, plain_text = asyncio.run(async_calls())
    assert data == sent()[sse_chunks(data)[0]["id"]].encode()
    assert plain_text == "Echo: async plain" and plain_id in sent()

    # an error from the primary reaches the client as the primary's error
    with pytest.raises(openai.BadRequestError) as e:
        c.chat.completions.create(model="x", messages=[{"role": "user", "content": "[[boom]]"}])
    assert e.value.status_code == 400 and "stub failure 400" in str(e.value)

    assert p.stop() == 0
    n = 7
    assert "7 primary calls, 7 mirrored, 0 not mirrored" in p.output
    assert rows(db, "SELECT count(*), count(DISTINCT run_id) FROM prompts") == [(n, 1)]
    by_route = dict(rows(db, "SELECT route, count(*) FROM responses GROUP BY route"))
    assert by_route == {"dense": n, "moe": n}
    # the stored prompt keeps the content parts as sent; the candidate's own answer is recorded
    stored = json.loads(rows(db, "SELECT messages FROM prompts WHERE prompt_id = 'p000000001'")[0][0])
    assert stored == [{"role": "user", "content": PARTS}]
    assert rows(db, "SELECT text, model FROM responses WHERE prompt_id = 'p000000001' AND route = 'moe'") == [
        ("candidate says hi", "moe-model")]
    calls = json.loads(rows(db, "SELECT tool_calls FROM responses WHERE prompt_id = 'p000000002' AND route = 'moe'")[0][0])
    assert json.loads(calls[0]["function"]["arguments"]) == {"city": "Lyon"}
    assert rows(db, "SELECT error_type FROM responses WHERE prompt_id = 'p000000007' AND route = 'dense'") == [("http_400",)]
    # one trace per request: the proxy's SERVER span, the primary's and the candidate's CLIENT spans under it
    traces = rows(db, """SELECT r.prompt_id, count(DISTINCT r.trace_id), list(DISTINCT s.name ORDER BY s.name)
                         FROM responses r JOIN spans s ON s.trace_id = r.trace_id GROUP BY r.prompt_id""")
    assert len(traces) == n
    assert all(t[1] == 1 and t[2] == ["chat dense-model", "chat moe-model", "proxy chat"] for t in traces)
    parents = rows(db, """SELECT count(*) FROM spans c JOIN spans s ON c.parent_span_id = s.span_id AND c.trace_id = s.trace_id
                          WHERE s.name = 'proxy chat' AND c.name LIKE 'chat %'""")
    assert parents == [(2 * n,)]
    # what the candidate was sent: the client's body with its own model name
    assert json.loads(rows(db, "SELECT options FROM runs")[0][0])["calls"]["mirror"]["moe"]["mirrored"] == n
    assert rows(db, "SELECT status, n_prompts FROM runs") == [("completed", n)]


def test_models_health_and_an_incoming_traceparent(tmp_path, stub_server, proxies):
    base, cand = stub_server(model="dense-model"), stub_server()
    db = tmp_path / "store.duckdb"
    p = proxies(two_routes(tmp_path, base.base_url, cand.base_url), db)
    c = client(p)
    assert [m.id for m in c.models.list()] == ["dense-model"]
    assert httpx.get(p.url + "/health").json() == {"status": "ok"}
    trace_id, parent = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
    c.chat.completions.create(model="x", messages=[{"role": "user", "content": "traced"}],
                              extra_headers={"traceparent": f"00-{trace_id}-{parent}-01"})
    # the upstreams see the proxy's call span as their parent, in the application's trace
    assert httpx.get(base.url + "/stub/headers").json()[-1]["traceparent"].split("-")[1] == trace_id
    assert p.stop() == 0
    spans = rows(db, "SELECT name, trace_id, parent_span_id FROM spans ORDER BY name")
    assert {s[1] for s in spans} == {trace_id}
    assert dict((s[0], s[2]) for s in spans)["proxy chat"] == parent
    assert rows(db, "SELECT DISTINCT trace_id FROM responses") == [(trace_id,)]


# -- cohorts ------------------------------------------------------------------------------------
def test_cohort_from_header_else_rules_else_default(tmp_path, stub_server, proxies):
    base, cand = stub_server(), stub_server()
    config = tmp_path / "proxy.yaml"
    config.write_text(
        "cohort_rules:\n"
        "  - {system: 'You are the (?P<cohort>billing|legal) assistant'}\n"
        "  - {user: '^tenant-', cohort: tenants}\n"
        "  - {metadata: team}\n")
    db = tmp_path / "store.duckdb"
    p = proxies(two_routes(tmp_path, base.base_url, cand.base_url), db, "--config", str(config))
    c = client(p)
    ask = [{"role": "user", "content": "hello"}]
    c.chat.completions.create(model="x", messages=ask, extra_headers={"X-Routecheck-Cohort": "from-header"})
    c.chat.completions.create(model="x", messages=[{"role": "system", "content": [{"type": "text", "text": "You are the legal assistant."}]}, *ask])
    c.chat.completions.create(model="x", messages=ask, user="tenant-42")
    c.chat.completions.create(model="x", messages=ask, extra_body={"metadata": {"team": "search"}})
    c.chat.completions.create(model="x", messages=ask, user="someone")
    # the header wins over a matching rule
    c.chat.completions.create(model="x", messages=ask, user="tenant-1", extra_headers={"X-Routecheck-Cohort": "header-wins"})
    assert p.stop() == 0
    got = [r[0] for r in rows(db, "SELECT cohort FROM prompts ORDER BY prompt_id")]
    assert got == ["from-header", "legal", "tenants", "search", "default", "header-wins"]
    assert rows(db, "SELECT count(*) FROM responses r JOIN prompts p USING (run_id, prompt_id) WHERE r.cohort = p.cohort") == [(12,)]
    # routecheck's own header is not passed upstream
    assert all("x-routecheck-cohort" not in h for h in httpx.get(base.url + "/stub/headers").json())


# -- auth, keys ---------------------------------------------------------------------------------
def test_auth_token_enforced_and_keys_never_logged_or_stored(tmp_path, stub_server, proxies):
    key = "sk-route-secret-0123456789abcdef"
    token = "client-token-fedcba9876543210"
    base = stub_server()
    cand = stub_server(fault="echo_key_error")  # a candidate that echoes the API key it was sent
    routes = two_routes(tmp_path, base.base_url, cand.base_url, api_key_env="ROUTE_KEY")
    db = tmp_path / "store.duckdb"
    p = proxies(routes, db, "--auth-token-env", "PROXY_TOKEN", env={"ROUTE_KEY": key, "PROXY_TOKEN": token})
    msgs = [{"role": "user", "content": "hello"}]
    for wrong in ("nope", token + "x", token[:-1]):
        with pytest.raises(openai.AuthenticationError) as e:
            client(p, api_key=wrong).chat.completions.create(model="x", messages=msgs)
        assert e.value.status_code == 401
    assert httpx.post(p.base_url + "/chat/completions", json={"messages": msgs}).status_code == 401
    assert httpx.get(p.url + "/admin/stats").status_code == 401
    assert httpx.post(p.url + "/admin/mirror-rate", json={"mirror_rate": 0}).status_code == 401
    assert httpx.get(p.url + "/health").status_code == 200  # health needs no token
    ok = client(p, api_key=token).chat.completions.create(model="x", messages=msgs)
    assert ok.choices[0].message.content == "Echo: hello"
    wait_for(lambda: stats(p, token)["runs"] and list(stats(p, token)["runs"].values())[0]["mirror_calls"] == 1)
    # the candidate got the route's key, not the client's token
    assert httpx.get(cand.url + "/stub/headers").json()[-1]["authorization"] == f"Bearer {key}"
    assert all(token not in json.dumps(h) for h in httpx.get(base.url + "/stub/headers").json())
    assert p.stop() == 0
    assert key not in p.output and token not in p.output
    assert rows(db, "SELECT count(*) FROM responses WHERE route = 'moe' AND error_type IS NOT NULL") == [(1,)]
    con = duckdb.connect(str(db), read_only=True)
    for (table,) in con.execute("SELECT table_name FROM information_schema.tables").fetchall():
        dump = json.dumps(con.execute(f'SELECT * FROM "{table}"').fetchall(), default=str)
        assert key not in dump and token not in dump, table
    assert "[redacted ROUTE_KEY]" in con.execute("SELECT error_message FROM responses WHERE route = 'moe'").fetchone()[0]
    con.close()


def test_token_compared_in_constant_time(monkeypatch):
    """The check is hmac.compare_digest over SHA-256 digests: same length whatever the client sends."""
    from harness.proxy import server

    seen: list[tuple[int, int]] = []
    real = server.hmac.compare_digest
    monkeypatch.setattr(server.hmac, "compare_digest", lambda a, b: seen.append((len(a), len(b))) or real(a, b))
    me = SimpleNamespace(_token=server._token_digest("right-token"))
    for given, ok in [("Bearer right-token", True), ("Bearer wrong", False), ("bearer right-token", True),
                      ("Basic right-token", False), ("", False), ("Bearer " + "x" * 5000, False)]:
        assert server.Proxy._authorized(me, SimpleNamespace(headers={"Authorization": given})) is ok, given
    assert seen and set(seen) == {(32, 32)}


def test_loopback_by_default_and_a_warning_otherwise(tmp_path, stub_server, proxies):
    import inspect

    from harness.cli.proxy import proxy_command
    from harness.proxy.options import ProxyOptions

    assert inspect.signature(proxy_command).parameters["listen"].default.default == "127.0.0.1:8080"
    assert ProxyOptions(db=tmp_path / "x.duckdb").host == "127.0.0.1" and ProxyOptions(db=tmp_path / "x.duckdb").loopback
    base, cand = stub_server(), stub_server()
    routes = two_routes(tmp_path, base.base_url, cand.base_url)
    p = proxies(routes, tmp_path / "a.duckdb")
    assert p.url.startswith("http://127.0.0.1:") and "warning" not in p.output
    p.stop()
    port = free_port()
    p = ProxyProcess(routes, tmp_path / "b.duckdb", ["--listen", f"0.0.0.0:{port}"], env={"PYTHONPATH": str(REPO)}, cwd=REPO)
    try:
        assert "warning: listening on 0.0.0.0, not loopback, without --auth-token-env" in p.output
    finally:
        p.stop()


# -- candidates that misbehave ------------------------------------------------------------------
def test_slow_erroring_dead_and_crashing_candidates_never_touch_the_primary(tmp_path, stub_server, proxies):
    base = stub_server(record_bodies=1000)
    stalled = stub_server(ttft_s=30.0)  # answers after 30 s, streamed or not
    erroring = stub_server(fail_first=10**6, fail_status=500)
    truncating = stub_server(fault="content_length_short")  # breaks every answer mid-body
    crashing = stub_server()  # killed halfway through
    dead = f"http://127.0.0.1:{closed_port()}/v1"  # nothing listens
    routes = write_routes(tmp_path / "routes.yaml", [
        {"name": "dense", "role": "baseline", "model": "dense", "base_url": base.base_url},
        {"name": "stalled", "role": "candidate", "model": "c1", "base_url": stalled.base_url, "max_concurrency": 4},
        {"name": "erroring", "role": "candidate", "model": "c2", "base_url": erroring.base_url},
        {"name": "truncating", "role": "candidate", "model": "c3", "base_url": truncating.base_url},
        {"name": "crashing", "role": "candidate", "model": "c4", "base_url": crashing.base_url},
        {"name": "dead", "role": "candidate", "model": "c5", "base_url": dead},
    ])
    db = tmp_path / "store.duckdb"
    p = proxies(routes, db, "--shutdown-grace", "0.5")
    direct = openai.OpenAI(base_url=base.base_url, api_key="unused", max_retries=0)
    proxied = client(p)
    n = 30

    def timed(c: openai.OpenAI, i: int, stream: bool) -> tuple[float, Any]:
        t = time.perf_counter()
        msgs = [{"role": "user", "content": f"question {i}"}]
        if stream:
            out = "".join(ch.choices[0].delta.content or "" for ch in
                          c.chat.completions.create(model="dense", messages=msgs, stream=True) if ch.choices)
        else:
            out = c.chat.completions.create(model="dense", messages=msgs).choices[0].message.content
        return time.perf_counter() - t, out

    for i in range(5):  # warm both paths
        timed(direct, i, i % 2 == 0), timed(proxied, i, i % 2 == 0)
    lat_direct, lat_proxy = [], []
    for i in range(n):
        if i == n // 2:
            crashing.proc.kill()
            crashing.proc.wait()
        d, out_d = timed(direct, 100 + i, i % 2 == 0)
        t, out_p = timed(proxied, 100 + i, i % 2 == 0)
        assert out_p == out_d == f"Echo: question {100 + i}"
        lat_direct.append(d)
        lat_proxy.append(t)
    # the stalled candidate holds 4 calls for 30 s and has the rest queued: the primary never waits on it
    assert statistics.median(lat_proxy) < statistics.median(lat_direct) + 0.025, (lat_direct, lat_proxy)
    assert max(lat_proxy) < 1.0, lat_proxy
    s = stats(p)
    assert s["mirror_in_flight"]["stalled"] == 4 and s["queue_depth"]["stalled"] == n + 5 - 4
    t = time.perf_counter()
    assert p.stop() == 0
    assert time.perf_counter() - t < 10  # the 30 s stall is cut at --shutdown-grace
    calls = n + 5
    errors = dict(rows(db, """SELECT route, list(DISTINCT error_type ORDER BY error_type) FROM responses
                              WHERE route <> 'dense' GROUP BY route"""))
    assert errors["erroring"] == ["http_500"]
    assert errors["dead"] == ["ClientConnectorError"]
    assert errors["stalled"] == ["shutdown"]
    assert "ClientPayloadError" in errors["truncating"] and set(errors["truncating"]) <= {"ClientPayloadError", "shutdown"}
    assert None in errors["crashing"] and len(errors["crashing"]) >= 2  # fine, then refused
    assert rows(db, "SELECT count(*), count(error_type) FROM responses WHERE route = 'dense'") == [(2 * calls - calls, 0)]
    # stalled: 4 in flight were cut (shutdown rows), the queued ones were never sent (counted, no row)
    counts = json.loads(rows(db, "SELECT options FROM runs")[0][0])["calls"]["mirror"]
    assert counts["stalled"] == {"mirrored": 4, "not_sampled": 0, "queue_full": 0, "shutdown": calls - 4}
    assert rows(db, "SELECT count(*) FROM responses WHERE route = 'stalled'") == [(4,)]
    for r in ("erroring", "truncating", "crashing", "dead"):  # a row per call sent; the rest counted as dropped
        got = rows(db, "SELECT count(*) FROM responses WHERE route = ?", r)[0][0]
        assert got + counts[r]["shutdown"] == calls and counts[r]["queue_full"] == 0, (r, got, counts[r])
    assert counts["erroring"]["shutdown"] == counts["dead"]["shutdown"] == 0


def test_full_mirror_queue_drops_and_counts(tmp_path, stub_server, proxies):
    base = stub_server()
    stalled = stub_server(ttft_s=30.0)
    db = tmp_path / "store.duckdb"
    p = proxies(two_routes(tmp_path, base.base_url, stalled.base_url, max_concurrency=1), db,
                "--queue-size", "3", "--shutdown-grace", "0.2")
    c = client(p)
    for i in range(10):
        c.chat.completions.create(model="x", messages=[{"role": "user", "content": f"q{i}"}])
    run_id, = stats(p)["runs"]
    live = stats(p)["mirror"][f"{run_id}/moe"]
    assert live == {"mirrored": 4, "not_sampled": 0, "queue_full": 6, "shutdown": 0}  # 1 in flight + 3 queued
    assert stats(p)["queue_depth"] == {"moe": 3}
    assert p.stop() == 0
    assert "10 primary calls, 1 mirrored, 9 not mirrored" in p.output
    counts = json.loads(rows(db, "SELECT options FROM runs")[0][0])["calls"]
    assert counts["mirror"]["moe"] == {"mirrored": 1, "not_sampled": 0, "queue_full": 6, "shutdown": 3}
    assert counts["not_mirrored"] == {"moe": 9}
    assert rows(db, "SELECT route, count(*) FROM responses GROUP BY route ORDER BY route") == [("dense", 10), ("moe", 1)]


def test_mirror_rate_changes_live_by_admin_endpoint_and_sighup(tmp_path, stub_server, proxies):
    base, cand = stub_server(), stub_server()
    config = tmp_path / "proxy.yaml"
    config.write_text("mirror_rate: 0\n")
    db = tmp_path / "store.duckdb"
    p = proxies(two_routes(tmp_path, base.base_url, cand.base_url), db, "--config", str(config), "--seed", "7")
    c = client(p)

    def send(k: int) -> None:
        for i in range(k):
            c.chat.completions.create(model="x", messages=[{"role": "user", "content": f"q{i}"}])

    def counts() -> dict[str, int]:
        run_id, = stats(p)["runs"]
        return stats(p)["mirror"][f"{run_id}/moe"]

    assert httpx.get(p.url + "/admin/mirror-rate").json() == {"mirror_rate": 0.0}  # from --config
    send(4)
    assert counts()["not_sampled"] == 4 and counts()["mirrored"] == 0
    assert httpx.post(p.url + "/admin/mirror-rate", json={"mirror_rate": 1}).json() == {"mirror_rate": 1.0}
    assert httpx.post(p.url + "/admin/mirror-rate", json={"mirror_rate": 2}).status_code == 400
    assert httpx.post(p.url + "/admin/mirror-rate", json={"rate": 1}).status_code == 400
    send(5)
    assert counts()["mirrored"] == 5
    config.write_text("mirror_rate: 0.5\n")
    os.kill(p.pid, signal.SIGHUP)
    wait_for(lambda: httpx.get(p.url + "/admin/mirror-rate").json() == {"mirror_rate": 0.5})
    send(200)
    half = counts()
    assert half["mirrored"] + half["not_sampled"] == 209 and 70 < half["mirrored"] - 5 < 130
    config.write_text("mirror_rate: [not a number\n")  # a bad file leaves the settings alone
    os.kill(p.pid, signal.SIGHUP)
    wait_for(lambda: "settings unchanged" in p.output)
    assert httpx.get(p.url + "/admin/mirror-rate").json() == {"mirror_rate": 0.5}
    assert p.stop() == 0
    opts = json.loads(rows(db, "SELECT options FROM runs")[0][0])
    assert [ch["mirror_rate"] for ch in opts["mirror_rate_changes"]] == [1.0, 0.5]
    assert rows(db, "SELECT count(*) FROM responses WHERE route = 'moe'") == [(half["mirrored"],)]


# -- content that must not be kept --------------------------------------------------------------
def test_capture_content_false_keeps_hashes_and_lengths_only(tmp_path, stub_server, proxies):
    secret_q, secret_a = "my card number is 4111-1111", "your PIN is 2468"
    base, cand = stub_server(answer=secret_a), stub_server(answer=secret_a, tool_arguments={"pin": "2468"})

    def store_text(db: Path) -> str:
        con = duckdb.connect(str(db), read_only=True)
        out = json.dumps([con.execute(f'SELECT * FROM "{t}"').fetchall() for (t,) in
                          con.execute("SELECT table_name FROM information_schema.tables").fetchall()], default=str)
        con.close()
        return out

    # per route: the candidate must not keep content (its prompts neither); the baseline keeps its answers
    db = tmp_path / "route.duckdb"
    p = proxies(two_routes(tmp_path, base.base_url, cand.base_url, capture_content=False), db)
    c = client(p)
    assert c.chat.completions.create(model="x", messages=[{"role": "user", "content": secret_q}]).choices[0].message.content == secret_a
    c.chat.completions.create(model="x", tools=TOOLS, messages=[{"role": "user", "content": [{"type": "text", "text": secret_q}]}])
    assert p.stop() == 0
    assert secret_q not in store_text(db)
    assert rows(db, "SELECT route, text FROM responses WHERE prompt_id = 'p000000001' ORDER BY route") == [
        ("dense", secret_a), ("moe", None)]
    msg = json.loads(rows(db, "SELECT messages FROM prompts WHERE prompt_id = 'p000000001'")[0][0])[0]
    import hashlib
    assert msg == {"role": "user", "content_digest": {"sha256": hashlib.sha256(secret_q.encode()).hexdigest(), "chars": len(secret_q)}}
    attrs = json.loads(rows(db, "SELECT attributes FROM spans WHERE name = 'chat moe-model' AND prompt_id = 'p000000001'")[0][0])
    assert attrs["routecheck.text_sha256"] == hashlib.sha256(secret_a.encode()).hexdigest() and attrs["routecheck.text_chars"] == len(secret_a)
    call = json.loads(rows(db, "SELECT tool_calls FROM responses WHERE prompt_id = 'p000000002' AND route = 'moe'")[0][0])[0]
    assert call["function"]["name"] == "get_weather" and "arguments" not in call["function"]  # tool names stay scorable

    # global: nothing of either question or answer is kept
    db = tmp_path / "global.duckdb"
    p = proxies(two_routes(tmp_path, base.base_url, cand.base_url), db, "--no-capture-content")
    client(p).chat.completions.create(model="x", messages=[{"role": "user", "content": secret_q}], user="alice@example.com")
    assert p.stop() == 0
    dump = store_text(db)
    assert secret_q not in dump and secret_a not in dump and "alice@example.com" not in dump
    assert rows(db, "SELECT count(*), count(text) FROM responses") == [(2, 0)]
    assert json.loads(rows(db, "SELECT options FROM runs")[0][0])["capture_content"] is False


# -- stopping -----------------------------------------------------------------------------------
def test_sigterm_finishes_the_primary_in_flight_flushes_and_marks_the_run(tmp_path, stub_server, proxies):
    base = stub_server(ttft_s=1.0, tokens_per_s=20, answer="one two three four five six seven eight nine ten")
    cand = stub_server()
    db = tmp_path / "store.duckdb"
    p = proxies(two_routes(tmp_path, base.base_url, cand.base_url), db)
    c = client(p)
    for i in range(3):
        c.chat.completions.create(model="x", messages=[{"role": "user", "content": f"before {i}"}], max_tokens=1)
    got: dict[str, Any] = {}

    def slow_call() -> None:
        got["text"] = "".join(ch.choices[0].delta.content or "" for ch in
                              c.chat.completions.create(model="x", stream=True, messages=[{"role": "user", "content": "slow"}])
                              if ch.choices)

    th = threading.Thread(target=slow_call)
    th.start()
    wait_for(lambda: sum(r["in_flight"] for r in stats(p)["runs"].values()) > 0)
    time.sleep(0.3)
    os.kill(p.pid, signal.SIGTERM)
    time.sleep(0.3)
    with pytest.raises(openai.APIConnectionError):  # no longer accepting
        client(p, timeout=2).chat.completions.create(model="x", messages=[{"role": "user", "content": "too late"}])
    th.join(30)
    assert got["text"] == "one two three four five six seven eight nine ten"  # the answer in flight was finished
    assert p.stop() == 0
    assert rows(db, "SELECT status, finished_at IS NOT NULL, n_prompts FROM runs") == [("completed", True, 4)]
    assert rows(db, "SELECT route, count(*) FROM responses GROUP BY route ORDER BY route") == [("dense", 4), ("moe", 4)]
    assert rows(db, "SELECT text FROM responses WHERE route = 'dense' AND prompt_id = 'p000000004'") == [
        ("one two three four five six seven eight nine ten",)]
    assert rows(db, "SELECT count(*) FROM spans") == [(12,)]
    assert not Path(str(db) + ".owner.json").exists()


def test_sigkill_loses_at_most_the_last_second(tmp_path, stub_server, proxies):
    base, cand = stub_server(), stub_server()
    db = tmp_path / "store.duckdb"
    p = proxies(two_routes(tmp_path, base.base_url, cand.base_url), db)
    c = client(p)
    for i in range(20):
        c.chat.completions.create(model="x", messages=[{"role": "user", "content": f"q{i}"}])
    time.sleep(1.6)  # rows are written every second; spans batched with a 1 s delay
    p.stop(signal.SIGKILL)
    assert rows(db, "SELECT count(*) FROM prompts") == [(20,)]
    assert rows(db, "SELECT route, count(*) FROM responses GROUP BY route ORDER BY route") == [("dense", 20), ("moe", 20)]
    assert rows(db, "SELECT count(*) FROM spans") == [(60,)]
    assert rows(db, "SELECT status, n_prompts FROM runs") == [("running", 20)]  # killed: left running, as mirror does


def serving_process(p: ProxyProcess):
    """The child that answers (not multiprocessing's resource tracker)."""
    import psutil

    kids = [k for k in psutil.Process(p.pid).children() if "spawn_main" in " ".join(k.cmdline())]
    assert len(kids) == 1, kids
    return kids[0]


def test_two_processes_a_dead_serving_process_fails_the_session_and_keeps_what_it_handed_over(tmp_path, stub_server, proxies):
    """The clients are served by a child process; should it die, the command says so and exits 1,
    the calls it had handed over are recorded and the run is marked failed, not left running."""
    base, cand = stub_server(), stub_server()
    db = tmp_path / "store.duckdb"
    p = proxies(two_routes(tmp_path, base.base_url, cand.base_url), db)
    c = client(p)
    for i in range(5):
        c.chat.completions.create(model="x", messages=[{"role": "user", "content": f"q{i}"}])
    wait_for(lambda: list(stats(p)["runs"].values())[0]["mirror_calls"] == 5)
    serving_process(p).kill()
    assert p.proc.wait(30) == 1
    assert "the proxy's serving process ended unexpectedly" in p.output
    assert rows(db, "SELECT route, count(*) FROM responses GROUP BY route ORDER BY route") == [("dense", 5), ("moe", 5)]
    assert rows(db, "SELECT status, n_prompts FROM runs") == [("failed", 5)]
    assert rows(db, "SELECT count(*) FROM spans") == [(15,)]


def test_a_port_in_use_is_one_clear_error(tmp_path, stub_server, proxies):
    base, cand = stub_server(), stub_server()
    routes = two_routes(tmp_path, base.base_url, cand.base_url)
    p = proxies(routes, tmp_path / "a.duckdb")
    port = p.url.rsplit(":", 1)[1]
    me = threading.get_native_id()
    before = (os.sched_getscheduler(0), os.getpriority(os.PRIO_PROCESS, me))
    res = CliRunner().invoke(__import__("harness.cli", fromlist=["app"]).app,
                             ["proxy", "--routes", str(routes), "--db", str(tmp_path / "b.duckdb"), "--listen", f"127.0.0.1:{port}"])
    assert res.exit_code == 2, res.output
    # in-process, the recording side lowered this thread's priority for the session: put back after it
    assert (os.sched_getscheduler(0), os.getpriority(os.PRIO_PROCESS, me)) == before
    assert f"--listen 127.0.0.1:{port}:" in res.output and "address already in use" in res.output
    assert "Traceback" not in res.output and "Unclosed" not in res.output
    assert p.stop() == 0


# -- the stages after: score, report, gate; windows ---------------------------------------------
def test_score_report_and_gate_work_on_a_proxy_run(tmp_path, stub_server, proxies):
    base = stub_server(answer="The answer is 42.")
    cand = stub_server(answer="The answer is 42.", ttft_s=0.002)
    db = tmp_path / "store.duckdb"
    p = proxies(two_routes(tmp_path, base.base_url, cand.base_url), db, "--mirror-rate", "0.6", "--seed", "3")
    c = client(p)
    cohorts = ["billing", "legal"]
    for i in range(60):
        c.chat.completions.create(model="x", messages=[{"role": "user", "content": f"question {i}"}],
                                  extra_headers={"X-Routecheck-Cohort": cohorts[i % 2]})
    run_id, = stats(p)["runs"]
    mirrored = stats(p)["mirror"][f"{run_id}/moe"]["mirrored"]
    assert 20 < mirrored < 50
    assert p.stop() == 0

    from harness.cli import app

    runner = CliRunner()
    res = runner.invoke(app, ["score", run_id, "--db", str(db), "-e", "task_completion"])
    assert res.exit_code == 0, res.output
    assert rows(db, "SELECT count(*) FROM scores WHERE run_id = ?", run_id) == [(60 + mirrored,)]
    out = tmp_path / "report"
    res = runner.invoke(app, ["report", run_id, "--db", str(db), "--out-dir", str(out)])
    assert res.exit_code == 0, res.output
    report = json.loads((out / "report.json").read_text())
    assert report["baseline"] == "dense" and report["candidates"] == ["moe"]
    note = f"{60 - mirrored} of 60 primary calls were not mirrored to moe ({60 - mirrored} not sampled, 0 dropped"
    assert any(note in w for w in report["warnings"]), report["warnings"]
    assert note in (out / "report.md").read_text()
    latency = [x for x in report["comparisons"] if x["metric"].startswith("ttft") and x["scope"] == "overall"]
    assert latency and latency[0]["n_prompts"] == mirrored  # only mirrored prompts are paired
    assert {x["cohort"] for x in report["comparisons"] if x["scope"] == "cohort"} == set(cohorts)
    policy = tmp_path / "gate.yaml"
    policy.write_text("min_samples: 10\nmetrics:\n  ttft_p99_s: {margin_rel: 0.2}\n  error_rate: {margin: 0.05}\n")
    res = runner.invoke(app, ["gate", run_id, "--db", str(db), "--policy", str(policy), "--out-dir", str(out)])
    assert res.exit_code in (0, 1), res.output  # 2 would be "no data" or a policy the run cannot serve
    cases = {c.get("name") for c in ET.parse(out / "gate.junit.xml").getroot().iter("testcase")}
    assert {"(all) :: ttft_p99_s", "(all) :: error_rate"} <= cases, cases


def test_window_rolls_runs(tmp_path, stub_server, proxies):
    base, cand = stub_server(), stub_server()
    db = tmp_path / "store.duckdb"
    p = proxies(two_routes(tmp_path, base.base_url, cand.base_url), db, "--window", "1s")
    c = client(p)
    t_end = time.monotonic() + 3.5
    sent = 0
    while time.monotonic() < t_end:
        c.chat.completions.create(model="x", messages=[{"role": "user", "content": f"q{sent}"}])
        sent += 1
        time.sleep(0.05)
    assert p.stop() == 0
    runs = rows(db, "SELECT run_id, status, n_prompts, started_at FROM runs ORDER BY started_at")
    assert len(runs) >= 3 and {r[1] for r in runs} == {"completed"}
    assert sum(r[2] for r in runs) == sent
    per_run = dict(rows(db, "SELECT run_id, count(*) FROM responses GROUP BY run_id"))
    assert all(per_run.get(r[0], 0) == 2 * r[2] for r in runs)
    # prompts and responses of one request are in the same run
    assert rows(db, "SELECT count(*) FROM responses r LEFT JOIN prompts p USING (run_id, prompt_id) WHERE p.prompt_id IS NULL") == [(0,)]


def test_recorded_calls_read_like_the_standard_library_would():
    """capture.read_call decodes with msgspec, falling back to `json` for what msgspec refuses
    (lone surrogate escapes, NaN), so such answers are rows with their text, not read errors."""
    from harness.proxy.capture import Exchange, read_call

    def sse(*payloads: bytes) -> Exchange:
        chunks = [b"data: " + p + b"\n\n" for p in payloads] + [b"data: [DONE]\n\n"]
        return Exchange(wall_start=time.time(), t_sent=0.0, status=200, chunks=chunks,
                        times=[0.01 * (i + 1) for i in range(len(chunks))], t_end=0.1)

    r = read_call({"messages": []}, sse(b'{"id": "a", "choices": [{"index": 0, "delta": {"content": "x \\ud800"}}]}',
                                        b'{"id": "a", "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}], "x": NaN}'))
    assert r.error_type is None and r.text == "x \ud800" and r.finish_reason == "stop"
    assert r.ttft_s == pytest.approx(0.01)
    bad = read_call({"messages": []}, sse(b'{"choices": [oops'))
    assert bad.error_type == "bad_response"
    plain = Exchange(wall_start=time.time(), t_sent=0.0, status=200, chunks=[b'{"id": "b", "choices": [{"message": {"content": "hi"}, '
                                                                            b'"finish_reason": "stop"}], "usage": {"prompt_tokens": 3, '
                                                                            b'"completion_tokens": 1, "total_tokens": 4}}'],
                     times=[0.02], t_end=0.02)
    r = read_call({"messages": []}, plain)
    assert (r.text, r.output_tokens, r.usage_source, r.ttft_s) == ("hi", 1, "server", 0.02)


def test_a_connection_that_reaches_itself_is_a_refused_connect():
    """With nothing listening on a local port, a connection to it may be given that very port as its
    source and reach itself (TCP simultaneous open). It must be recorded as the refused connect it is,
    not as an answer that could not be parsed. Forced here with the source port set."""
    from harness.proxy.h1 import Answer, Pool, UpstreamError

    port = closed_port()

    async def go() -> UpstreamError:
        loop = asyncio.get_running_loop()
        pool = Pool(f"http://127.0.0.1:{port}/v1", 1, 5.0, local_addr=("127.0.0.1", port))
        try:
            with pytest.raises(UpstreamError) as e:
                await pool.post("/chat/completions", b"{}", {}, Answer(loop, [], []))
            return e.value
        finally:
            await pool.close()

    err = asyncio.run(go())
    assert err.kind == "ClientConnectorError"
    assert "the connection reached itself" in str(err)


def test_two_replicas_gathered_into_one_store_and_reported(tmp_path, stub_server, proxies):
    """docs/proxy.md's deployment sketch: each replica its own store; `routecheck gather` copies every
    run of each into one (a replica still serving through a snapshot), gathering again refreshes
    rather than duplicates; then `report` each run from the gathered store."""
    from harness.cli import app

    base, cand = stub_server(), stub_server(ttft_s=0.001)
    routes = two_routes(tmp_path, base.base_url, cand.base_url)
    stores = [tmp_path / "store-1.duckdb", tmp_path / "store-2.duckdb"]
    live = []
    for k, db in enumerate(stores):
        p = proxies(routes, db)
        for i in range(12 + k):
            client(p).chat.completions.create(model="x", messages=[{"role": "user", "content": f"replica {k} q{i}"}])
        live.append(p)
    assert live[0].stop() == 0
    gathered = tmp_path / "all.duckdb"
    runner = CliRunner()
    time.sleep(1.5)  # replica 2's last rows are flushed (once a second)
    res = runner.invoke(app, ["gather", str(gathered), *map(str, stores)])  # replica 2 still serving: a snapshot
    assert res.exit_code == 0, res.output
    assert "store-2.duckdb: 1 runs" in res.output
    assert rows(gathered, "SELECT count(*) FROM prompts") == [(25,)]
    assert live[1].stop() == 0
    res = runner.invoke(app, ["gather", str(gathered), *map(str, stores)])  # again, after it stopped: refreshed
    assert res.exit_code == 0, res.output
    tables = ("runs", "prompts", "responses", "spans")
    expected = {t: sum(rows(db, f"SELECT count(*) FROM {t}")[0][0] for db in stores) for t in tables}
    assert {t: rows(gathered, f"SELECT count(*) FROM {t}")[0][0] for t in tables} == expected
    assert expected["prompts"] == 25 and expected["responses"] == 50
    runs = rows(gathered, "SELECT run_id, n_prompts, status FROM runs ORDER BY n_prompts")
    assert [(n, st) for _, n, st in runs] == [(12, "completed"), (13, "completed")]
    for run_id, n, _ in runs:
        out = tmp_path / run_id
        res = runner.invoke(app, ["report", run_id, "--db", str(gathered), "--out-dir", str(out)])
        assert res.exit_code == 0, res.output
        report = json.loads((out / "report.json").read_text())
        assert any(f"0 of {n} primary calls were not mirrored" in w for w in report["warnings"])
    res = runner.invoke(app, ["gather", str(stores[0]), str(stores[0])])
    assert res.exit_code == 2 and "also a source" in res.output

    # --pool: one run of both replicas, one report over all 25 prompts; pooling again refreshes it
    pooled = tmp_path / "pooled.duckdb"
    for _ in range(2):
        res = runner.invoke(app, ["gather", str(pooled), *map(str, stores), "--pool", "all-replicas"])
        assert res.exit_code == 0, res.output
        assert "pooled 2 runs of 2 stores into run all-replicas" in res.output
    assert rows(pooled, "SELECT run_id, n_prompts, n_expected, status FROM runs") == [("all-replicas", 25, 50, "completed")]
    assert {t: rows(pooled, f"SELECT count(*) FROM {t}")[0][0] for t in tables} == {**expected, "runs": 1}
    ids = [p for (p,) in rows(pooled, "SELECT prompt_id FROM prompts ORDER BY prompt_id")]
    assert len(set(ids)) == 25 and {i.split("/")[0] for i in ids} == {r for r, _, _ in runs}
    assert rows(pooled, "SELECT count(*) FROM responses r JOIN prompts p USING (run_id, prompt_id)") == [(50,)]
    out = tmp_path / "pooled-report"
    res = runner.invoke(app, ["report", "all-replicas", "--db", str(pooled), "--out-dir", str(out)])
    assert res.exit_code == 0, res.output
    report = json.loads((out / "report.json").read_text())
    assert any("0 of 25 primary calls were not mirrored" in w for w in report["warnings"]), report["warnings"]
    res = runner.invoke(app, ["gather", str(gathered), *map(str, stores), "--pool", "all-replicas"])
    assert res.exit_code == 2 and "pool into a file of its own" in res.output  # the same spans under the replica runs
    res = runner.invoke(app, ["gather", str(pooled), str(stores[0]), "--pool", "again", "--run", "nope"])
    assert res.exit_code == 2 and "no run nope" in res.output
