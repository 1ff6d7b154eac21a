"""The proxy's HTTP side (aiohttp): an OpenAI-compatible endpoint that answers from the primary route
byte for byte and offers each request to the shadow (shadow.py) for the candidates.

    POST /v1/chat/completions  streamed or not; the primary's status, headers and bytes, as they arrive
    GET  /v1/models            the primary's, passed through
    GET  /health               200 while serving (no token needed)
    GET  /admin/stats          counts per run, queue depths, the mirror rate
    GET|POST /admin/mirror-rate  read or set the share mirrored ({"mirror_rate": 0.25}), no restart

On the primary's path: read the body, parse it once (for the model name and the cohort rule),
choose the span ids, offer the job to the shadow (a queue put), stream the upstream's chunks to the
client while keeping them. This is the serving process: once a call has ended, all it does for the
record is hand the kept chunks to the recording process (sink.py, recorder.py), which reads them.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import gc
import hashlib
import hmac
import json
import os
import signal
import sys
import time
from multiprocessing.connection import Connection
from typing import Any

import aiohttp
from aiohttp import web
from multidict import CIMultiDict
from opentelemetry import propagate, trace

from harness.config import ConfigError, RouteConfig, RoutesFile
from harness.proxy.capture import Exchange
from harness.proxy.h1 import Answer, UpstreamError
from harness.proxy.options import ProxyOptions, load_settings, resolve_cohort
from harness.proxy.records import Ended, Failed, MirrorCall, PrimaryCall, Ready, TraceIds, new_span_id, new_trace_id
from harness.proxy.shadow import MirrorJob, Shadow
from harness.proxy.sink import LiveRun, Sink
from harness.proxy.upstream import CHAT_PATH, fetch, make_pool, make_session, new_exchange, request_headers, response_headers

PRIMARY_CONNECTIONS = 1024  # the primary serves real clients: its concurrency is theirs, not max_concurrency
CLIENT_BUFFER_LIMIT = 1 << 20  # bytes waiting for a slow client before the primary's connection stops being read
COUNTS_INTERVAL_S = 1.0  # how often mirror counts and ended windows go to the recording process


def error_body(status: int, message: str, kind: str) -> web.Response:
    """An error in OpenAI's shape, which the openai client turns into its typed exceptions."""
    return web.json_response({"error": {"message": message, "type": kind, "param": None, "code": status}}, status=status)


def resolve_primary(routes: RoutesFile, name: str | None) -> RouteConfig:
    if name is None:
        return routes.baseline
    for r in routes.routes:
        if r.name == name:
            return r
    raise ConfigError(f"--primary {name!r}: no such route (routes: {', '.join(r.name for r in routes.routes)})")


def resolve_routes(routes: RoutesFile, opts: ProxyOptions, base_urls: dict[str, str] | None) -> tuple[list[RouteConfig], RouteConfig]:
    """Every route with its URL (a `serve:` route's from its started server), and the primary."""
    urls = {r.name: r.base_url for r in routes.routes} | (base_urls or {})
    missing = [n for n, u in urls.items() if not u]
    if missing:
        raise ConfigError(f"routes {missing} have no base_url (serve: routes must be started first)")
    resolved = [r.model_copy(update={"base_url": urls[r.name]}) for r in routes.routes]
    chosen = resolve_primary(routes, opts.primary).name
    return resolved, next(r for r in resolved if r.name == chosen)


def read_token(env: str | None) -> str | None:
    if env is None:
        return None
    token = os.environ.get(env)
    if not token:
        raise ConfigError(f"--auth-token-env {env}: the environment variable is not set or empty")
    return token


def _token_digest(token: str) -> bytes:
    """Tokens are compared as SHA-256 digests: equal lengths, so the comparison time says nothing of the token."""
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()


async def _resume_when_drained(out: asyncio.Transport, conn, answer: Answer) -> None:
    while not answer.done.done() and not out.is_closing() and out.get_write_buffer_size() > CLIENT_BUFFER_LIMIT // 4:
        await asyncio.sleep(0.01)
    conn.resume()


class Proxy:
    def __init__(self, routes: RoutesFile, opts: ProxyOptions, sink: Sink, base_urls: dict[str, str] | None = None):
        self.routes, self.primary = resolve_routes(routes, opts, base_urls)
        self.candidates = [r for r in self.routes if r.name != self.primary.name]
        self.opts = opts
        token = read_token(opts.auth_token_env)
        self._token = _token_digest(token) if token is not None else None
        self._keys = {r.name: r.api_key() for r in self.routes}  # from the environment; never logged or stored
        self.shadow = Shadow(self.candidates, opts.queue_size, opts.mirror_rate, self._mirror_call, opts.seed)
        self.sink = sink
        self._rules = opts.settings.cohort_rules
        self._session: aiohttp.ClientSession | None = None  # GET /v1/models only
        self._pools = {}
        self._runner: web.AppRunner | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._counter: asyncio.Task | None = None
        self._seq = 0
        self.url: str | None = None

    # -- life cycle ------------------------------------------------------------------------------
    def app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/v1/chat/completions", self.chat)
        app.router.add_get("/v1/models", self.models)
        app.router.add_get("/health", self.health)
        app.router.add_get("/admin/stats", self.stats)
        app.router.add_get("/admin/mirror-rate", self.mirror_rate)
        app.router.add_post("/admin/mirror-rate", self.mirror_rate)
        return app

    async def start(self, sock=None) -> str:
        """Open the sessions and the pipe to the recording process, start the shadow, listen. Returns the base URL."""
        self._loop = asyncio.get_running_loop()
        await self.sink.attach(self._loop)
        self._session = make_session(self.primary, 16)
        self._pools = {r.name: make_pool(r, PRIMARY_CONNECTIONS if r is self.primary else r.max_concurrency) for r in self.routes}
        self.sink.run_for_now()  # the run row exists from the start
        self.shadow.start()
        self._counter = asyncio.create_task(self._send_counts())
        self._runner = web.AppRunner(self.app(), access_log=None, shutdown_timeout=max(self.primary.timeout_s, 1.0))
        await self._runner.setup()
        site = web.SockSite(self._runner, sock, backlog=2048) if sock is not None else \
            web.TCPSite(self._runner, self.opts.host, self.opts.port, backlog=2048)
        await site.start()
        host, port = self._runner.addresses[0][:2]
        self.url = f"http://{host if ':' not in host else f'[{host}]'}:{port}"
        return self.url

    async def stop(self, status: str = "completed") -> None:
        """Stop accepting, finish in-flight primary calls, give mirrored calls their grace, hand every
        record and the runs' end to the recording process."""
        if self._runner is not None:
            await self._runner.cleanup()  # waits for handlers in flight (up to the primary's timeout)
        await asyncio.sleep(0)  # the records the last handlers scheduled
        await self.shadow.stop(self.opts.shutdown_grace_s)
        await self.close_clients()
        if self._counter is not None:
            self._counter.cancel()
            await asyncio.gather(self._counter, return_exceptions=True)
        self.sink.counts(self.shadow.counts, final_status=status)
        self.sink.send(Ended(status))
        await self.sink.close()

    async def close_clients(self) -> None:
        for pool in self._pools.values():
            await pool.close()
        if self._session is not None:
            await self._session.close()

    async def _send_counts(self) -> None:
        while True:
            await asyncio.sleep(COUNTS_INTERVAL_S)
            self.sink.counts(self.shadow.counts)

    # -- helpers ---------------------------------------------------------------------------------
    def _authorized(self, request: web.Request) -> bool:
        if self._token is None:
            return True
        given = request.headers.get("Authorization", "")
        scheme, _, value = given.partition(" ")
        ok = hmac.compare_digest(_token_digest(value.strip()), self._token)
        return ok and scheme.lower() == "bearer"

    def set_mirror_rate(self, rate: float) -> None:
        self.shadow.rate = rate
        self.sink.rate_changed(rate)

    def reload(self) -> str:
        """SIGHUP: re-read --config; its mirror_rate and cohort_rules apply to the next request. Returns what changed."""
        if self.opts.config_path is None:
            return "SIGHUP: no --config to re-read"
        try:
            settings = load_settings(self.opts.config_path)
        except ConfigError as e:
            return f"SIGHUP: {e} (settings unchanged)"
        self._rules = settings.cohort_rules
        if settings.mirror_rate is not None and settings.mirror_rate != self.shadow.rate:
            self.set_mirror_rate(settings.mirror_rate)
        return f"SIGHUP: re-read {self.opts.config_path}: mirror rate {self.shadow.rate:g}, {len(self._rules)} cohort rules"

    def _upstream_headers(self, route: RouteConfig, base: dict[str, str], span: TraceIds) -> dict[str, str]:
        headers = dict(base)
        key = self._keys[route.name]
        if key:
            headers["Authorization"] = f"Bearer {key}"
        headers.update(span.traceparent())  # the server's own span joins the trace
        return headers

    @staticmethod
    def _server_ids(request: web.Request) -> TraceIds:
        """The proxy span's ids: in the client's trace when it sent a traceparent (sampled as it says)."""
        if "traceparent" not in request.headers:  # most requests: no propagator run
            return TraceIds(new_trace_id(), new_span_id())
        parent = trace.get_current_span(propagate.extract(request.headers)).get_span_context()
        if parent.is_valid:
            return TraceIds(parent.trace_id, new_span_id(), parent.span_id, parent.trace_flags.sampled,
                            parent.trace_state.to_header() if parent.trace_state else "", True)
        return TraceIds(new_trace_id(), new_span_id())

    # -- handlers --------------------------------------------------------------------------------
    async def health(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def models(self, request: web.Request) -> web.StreamResponse:
        if not self._authorized(request):
            return error_body(401, "missing or wrong bearer token", "invalid_api_key")
        p = self.primary
        headers = request_headers(request.headers, self._keys[p.name])
        try:
            async with self._session.get(p.base_url.rstrip("/") + "/models", headers=headers,
                                                  timeout=aiohttp.ClientTimeout(total=min(30.0, p.timeout_s))) as up:
                data = await up.read()
                return web.Response(body=data, status=up.status, headers=CIMultiDict(response_headers(up.headers.items())))
        except (aiohttp.ClientError, OSError, TimeoutError) as e:
            return error_body(502, f"routecheck proxy: primary route {p.name} unreachable ({type(e).__name__})", "upstream_error")

    async def stats(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return error_body(401, "missing or wrong bearer token", "invalid_api_key")
        runs = {r.run_id: r.stats() for r in self.sink.runs.values()}
        mirror = {f"{run}/{route}": c.as_dict() for (run, route), c in self.shadow.counts.items()}
        return web.json_response({"primary": self.primary.name, "mirror_rate": self.shadow.rate, "runs": runs,
                                  "mirror": mirror, "queue_depth": self.shadow.depth(), "mirror_in_flight": self.shadow.in_flight})

    async def mirror_rate(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return error_body(401, "missing or wrong bearer token", "invalid_api_key")
        if request.method == "POST":
            try:
                rate = float((await request.json())["mirror_rate"])
            except (ValueError, KeyError, TypeError):
                return error_body(400, 'expected {"mirror_rate": a number from 0 to 1}', "invalid_request_error")
            if not 0.0 <= rate <= 1.0:
                return error_body(400, f"mirror_rate {rate} is outside 0..1", "invalid_request_error")
            self.set_mirror_rate(rate)
        return web.json_response({"mirror_rate": self.shadow.rate})

    async def chat(self, request: web.Request) -> web.StreamResponse:
        if not self._authorized(request):
            return error_body(401, "missing or wrong bearer token", "invalid_api_key")
        raw = await request.read()
        try:
            body = json.loads(raw)
        except ValueError:
            return error_body(400, "the body must be JSON", "invalid_request_error")
        if not isinstance(body, dict) or not isinstance(body.get("messages"), list):
            return error_body(400, "the body must be a JSON object with a 'messages' list", "invalid_request_error")

        server_start_ns = time.time_ns()
        run = self.sink.run_for_now()
        run.in_flight += 1
        self._seq += 1
        prompt_id, seq = f"p{self._seq:09d}", self._seq
        cohort = resolve_cohort(request.headers, body, self._rules)
        p = self.primary
        server = self._server_ids(request)
        forwarded = request_headers(request.headers, None)
        mirrored = self.shadow.offer(MirrorJob(run.run_id, prompt_id, cohort, raw, body, forwarded, server))
        run.in_flight += len(mirrored)

        data = raw if body.get("model") == p.model else json.dumps({**body, "model": p.model}).encode()
        client = server.child()
        headers = self._upstream_headers(p, forwarded, client)
        ex = new_exchange()
        resp: web.StreamResponse | None = None
        try:
            resp = await self._stream_primary(request, data, headers, ex)
        finally:
            ex.t_end = time.perf_counter()
            # Handed to the recording process once this response is out (and whatever else is ready has run).
            self._loop.call_soon(self._record, run, True, ex,
                                 PrimaryCall(run.run_id, prompt_id, seq, cohort, raw, request.path, server, client,
                                             server_start_ns, ex, mirrored))
        return resp

    async def _stream_primary(self, request: web.Request, data: bytes, headers: dict[str, str], ex: Exchange) -> web.StreamResponse:
        """The primary's answer to the client: its head once it has arrived, then each piece written to
        the client's transport inside the read that received it (h1.Answer.on_piece): no task switch
        per chunk. aiohttp has sent the headers at `prepare` and writes the closing chunk at `write_eof`;
        the pieces between are framed here as it would frame them."""
        p = self.primary
        pool = self._pools[p.name]
        answer = Answer(self._loop, ex.chunks, ex.times)
        resp: web.StreamResponse | None = None
        conn, ok = None, False
        try:
            async with asyncio.timeout(p.timeout_s):
                conn = await pool.post(CHAT_PATH, data, headers, answer)
                ex.status = answer.status
                ex.content_type = answer.header("content-type") or ""
                resp = web.StreamResponse(status=answer.status, reason=answer.reason or None,
                                          headers=CIMultiDict(response_headers(answer.headers)))
                if answer.length is not None and not answer.chunked:
                    resp.content_length = answer.length
                await resp.prepare(request)
                out = request.transport
                framed = (resp.content_length is None and request.version >= aiohttp.HttpVersion11
                          and answer.status not in (204, 304) and answer.status >= 200)

                def forward(piece: bytes) -> None:
                    if out is None or out.is_closing():
                        answer.fail(UpstreamError("client_disconnected", "the client went away mid-answer"))
                        return
                    out.write(b"%x\r\n%s\r\n" % (len(piece), piece) if framed else piece)
                    if out.get_write_buffer_size() > CLIENT_BUFFER_LIMIT and not conn.paused:
                        conn.pause()  # a slow client: read the primary on once its buffer has drained
                        self._loop.create_task(_resume_when_drained(out, conn, answer))

                arrived = b"".join(ex.chunks)  # with the head, or while the headers went out
                if arrived:
                    forward(arrived)
                answer.on_piece = forward
                await answer.done
                ok = True
                await resp.write_eof()
                return resp
        except TimeoutError:
            ex.error_type, ex.error_message, ex.timed_out = "timeout", f"no complete answer within {p.timeout_s:g} s", True
            if resp is None:
                return error_body(504, f"routecheck proxy: primary route {p.name} gave no answer within {p.timeout_s:g} s", "upstream_timeout")
        except UpstreamError as e:
            ex.error_type, ex.error_message = e.kind, (str(e) or e.kind)[:500]
            if e.kind == "client_disconnected":
                return resp
            if resp is None:
                return error_body(502, f"routecheck proxy: primary route {p.name} unreachable ({e.kind})", "upstream_error")
        except (ConnectionError, aiohttp.ClientConnectionResetError):  # the client went away (write_eof)
            ex.error_type, ex.error_message = "client_disconnected", "the client went away mid-answer"
            return resp
        finally:
            answer.on_piece = None
            if conn is not None:
                pool.finish(conn, ok)
        # The upstream failed after the answer started: end the connection without the closing chunk,
        # so the client sees a broken answer (as it would calling the server directly), not a short one.
        if request.transport is not None:
            request.transport.close()
        return resp

    def _record(self, run: LiveRun, primary: bool, ex: Exchange, msg: PrimaryCall | MirrorCall) -> None:
        if primary:
            run.primary += 1
            run.primary_errors += 1 if ex.error_type or ex.status != 200 else 0
        else:
            run.mirror_calls += 1
        run.in_flight -= 1
        self.sink.send(msg)

    async def _mirror_call(self, route: RouteConfig, job: MirrorJob) -> None:
        run = self.sink.runs[job.run_id]
        span = job.server.child()
        queue_wait_s = time.perf_counter() - job.enqueued
        ex = new_exchange()
        msg = MirrorCall(job.run_id, job.prompt_id, job.cohort, route.name, job.raw, span, queue_wait_s, ex)
        try:
            await fetch(self._pools[route.name], json.dumps({**job.body, "model": route.model}).encode(),
                        self._upstream_headers(route, job.headers, span), route.timeout_s, ex)
        except asyncio.CancelledError:
            ex.t_end = time.perf_counter()
            ex.error_type, ex.error_message = "shutdown", "the proxy stopped before the mirrored answer was complete"
            self._record(run, False, ex, msg)
            raise
        self._record(run, False, ex, msg)


# -- the serving process ---------------------------------------------------------------------------
def _die_with_parent() -> None:
    """Linux: SIGKILL this process when the recording process dies (a SIGKILL of it must not leave the
    port served with nothing recorded). Elsewhere the pipe's end stops it (the counts task)."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def serve(routes: RoutesFile, opts: ProxyOptions, base_urls: dict[str, str], conn: Connection, loop_factory: Any = None) -> None:
    """The serving process's whole life: answer clients until SIGTERM (the recording process forwards
    its stop signals; SIGINT itself is ignored here), then stop gracefully and say so."""
    _die_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    parent = os.getppid()
    sink = Sink(conn, opts.window_s)
    try:
        proxy = Proxy(routes, opts, sink, base_urls)
    except ConfigError as e:
        sink.send(Failed(str(e)))
        conn.close()
        return

    async def main() -> None:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        with contextlib.suppress(NotImplementedError, RuntimeError, AttributeError):
            loop.add_signal_handler(signal.SIGHUP, lambda: print(proxy.reload(), file=sys.stderr, flush=True))
        try:
            url = await proxy.start()
        except OSError as e:
            await proxy.close_clients()
            sink.send(Failed(f"--listen {opts.host}:{opts.port}: {e.strerror or e}"))
            await sink.close()
            return
        # The cyclic GC's full collections walk every object; ~175k of them are the libraries and
        # start-up state, which made a full collection a pause of ~100 ms of the event loop (the
        # primary's p99). Frozen, they are never walked again; what requests allocate still is.
        gc.collect()
        gc.freeze()
        sink.send(Ready(url, sink.current.run_id))
        status = "failed"
        try:
            while not stop.is_set():  # stop, or the recording process is gone (not Linux: no PDEATHSIG)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), 1.0)
                if os.getppid() != parent:
                    break
            status = "completed"
        finally:
            await proxy.stop(status)

    with asyncio.Runner(loop_factory=loop_factory) as runner:
        runner.run(main())
