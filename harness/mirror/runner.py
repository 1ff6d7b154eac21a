"""Mirror a corpus through routes: every prompt goes to all routes at the same moment (a mirror group).

A group waits for a free slot on every route it needs, then fires all calls together, so both
routes see the same load and the same moment. Completed calls are written to the store within
about a second; `resume` re-sends only the (prompt, route, sample) calls that have no successful row.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import httpx
from opentelemetry import propagate, trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from harness import __version__
from harness.config import ConfigError, RouteConfig, RoutesFile
from harness.corpus import CorpusStats, PromptRecord, corpus_sha256, read_corpus
from harness.mirror.http_pool import ShardedTransport
from harness.mirror.latency import FIGURES
from harness.mirror.openai_stream import CallResult, RetryPolicy, stream_chat
from harness.mirror.trajectory import play_trajectory
from harness.store import BatchWriter, connect, upsert
from harness.mirror.attributes import request_attributes, result_attributes
from harness.serving.engines import engine_for, server_span_columns
from harness.serving.metrics import MetricsScraper
from harness.serving.pool import serving
from harness.tracing.otlp_receiver import OTLPReceiver, attach_server_spans
from harness.tracing.provider import make_tracer_provider, tracer

FLUSH_INTERVAL_S = 1.0
SERVER_SPAN_WAIT_S = 15.0


@dataclass
class MirrorOptions:
    corpus: Path
    db: Path
    samples: int = 1
    limit: int | None = None
    cohorts: list[str] | None = None
    skip_invalid: bool = False
    rate: float | None = None  # requests per second over all routes, None = unbounded
    otlp_endpoint: str | None = None
    run_id: str | None = None  # None: a new id is made
    resume: bool = False  # finish run `run_id` instead of starting it

    def stored(self) -> dict[str, Any]:
        """The options a resumed run must keep, so it finishes the same work."""
        return {"samples": self.samples, "limit": self.limit, "cohorts": self.cohorts, "skip_invalid": self.skip_invalid, "rate": self.rate}


@dataclass
class RouteTally:
    done: int = 0
    errors: int = 0
    output_tokens: int = 0
    requests: int = 0  # model calls: one per response, one per step of a trajectory


@dataclass
class MirrorSummary:
    run_id: str
    status: str
    prompts: int
    calls: int
    skipped_rows: int
    resumed_skipped_calls: int
    duration_s: float
    per_route: dict[str, RouteTally] = field(default_factory=dict)


class _RateLimiter:
    """Spaces request starts evenly at `rate` per second (no bursts)."""

    def __init__(self, rate: float):
        self._interval = 1.0 / rate
        self._next = time.monotonic()
        self._lock = asyncio.Lock()

    async def wait(self) -> None:
        async with self._lock:
            now = time.monotonic()
            delay = self._next - now
            self._next = max(now, self._next) + self._interval
        if delay > 0:
            await asyncio.sleep(delay)


def new_run_id() -> str:
    return datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ-") + uuid.uuid4().hex[:6]


def _build_body(route: RouteConfig, record: PromptRecord, sample: int) -> dict[str, Any]:
    req = route.request
    body: dict[str, Any] = {
        "model": route.model,
        "messages": record.request_messages(),
        "stream": True,
        "stream_options": {"include_usage": True},
        "temperature": req.temperature,
        "max_tokens": req.max_tokens,
    }
    if req.seed is not None:
        body["seed"] = req.seed + sample  # each sample its own reproducible draw
    if req.top_p is not None:
        body["top_p"] = req.top_p
    if record.tools:
        body["tools"] = record.tools
    return body


def _response_row(run_id: str, route: RouteConfig, record: PromptRecord, sample: int, r: CallResult, span: trace.Span) -> dict[str, Any]:
    ctx = span.get_span_context()
    return {
        "run_id": run_id,
        "prompt_id": record.id,
        "route": route.name,
        "sample": sample,
        "role": route.role,
        "cohort": record.cohort,
        "model": route.model,
        "response_model": r.response_model,
        "response_id": r.response_id,
        "text": r.text,
        "tool_calls": r.tool_calls,
        "finish_reason": r.finish_reason,
        "input_tokens": r.input_tokens,
        "output_tokens": r.output_tokens,
        "total_tokens": r.total_tokens,
        "usage_source": r.usage_source,
        "started_at": datetime.fromtimestamp(r.started_at, tz=timezone.utc),
        **{key: getattr(r, key) for key in FIGURES},  # every latency figure (harness/mirror/latency.py)
        "attempts": r.attempts,
        "http_status": r.http_status,
        "error_type": r.error_type,
        "error_message": r.error_message,
        "timed_out": r.timed_out,
        "trace_id": f"{ctx.trace_id:032x}",
        "span_id": f"{ctx.span_id:016x}",
    }


class Mirror:
    """One mirror run. Use `asyncio.run(Mirror(routes, opts).run())`."""

    def __init__(self, routes: RoutesFile, opts: MirrorOptions,
                 on_progress: Callable[[str, RouteTally], None] | None = None):
        self.routes = routes.routes
        self.opts = opts
        self.base_urls: dict[str, str | None] = {r.name: r.base_url for r in self.routes}
        self.on_progress = on_progress
        self.tally = {r.name: RouteTally() for r in self.routes}
        self.run_id = opts.run_id or new_run_id()
        self.con = connect(opts.db)
        self.writer = BatchWriter(self.con)
        self._slots = {r.name: asyncio.Semaphore(r.max_concurrency) for r in self.routes}
        self._limiter = _RateLimiter(opts.rate) if opts.rate else None

    # -- run bookkeeping -------------------------------------------------------------------------
    def _start_run(self) -> set[tuple[str, str, int]]:
        """Create the run row, or for a resume check it and return the calls already done."""
        sha = corpus_sha256(self.opts.corpus)
        snapshot = [r.snapshot() for r in self.routes]
        for snap in snapshot:
            snap["base_url"] = self.base_urls[snap["name"]]
        # vLLM servers may already be exporting start-up spans through the same connection.
        with self.writer.locked() as con:
            if self.opts.resume:
                row = con.execute("SELECT corpus_sha256, options FROM runs WHERE run_id = ?", [self.run_id]).fetchone()
                if row is None:
                    raise ConfigError(f"--resume {self.run_id}: no such run in {self.opts.db}")
                if row[0] != sha:
                    raise ConfigError(f"--resume {self.run_id}: {self.opts.corpus} has changed since the run started (SHA-256 differs)")
                stored = json.loads(row[1])
                for key, value in stored.items():
                    setattr(self.opts, key, value)
                con.execute("UPDATE runs SET status = 'running', routes = ?, note = 'resumed' WHERE run_id = ?",
                            [json.dumps(snapshot), self.run_id])
                done = con.execute(
                    "SELECT prompt_id, route, sample FROM responses WHERE run_id = ? AND error_type IS NULL", [self.run_id]
                ).fetchall()
                return {(p, r, s) for p, r, s in done}
            upsert(con, "runs", [{
                "run_id": self.run_id, "started_at": datetime.now(timezone.utc), "status": "running",
                "corpus_path": str(self.opts.corpus), "corpus_sha256": sha, "routes": snapshot,
                "options": self.opts.stored(), "tool_version": __version__,
            }])
            return set()

    def _finish_run(self, status: str, n_prompts: int) -> None:
        with self.writer.locked() as con:  # the OTLP receiver may be flushing server spans right now
            con.execute(
                "UPDATE runs SET status = ?, finished_at = ?, n_prompts = ?, n_expected = ? WHERE run_id = ?",
                [status, datetime.now(timezone.utc), n_prompts, n_prompts * len(self.routes) * self.opts.samples, self.run_id],
            )

    # -- the run -----------------------------------------------------------------------------------
    async def run(self) -> MirrorSummary:
        t0 = time.monotonic()
        missing = [name for name, url in self.base_urls.items() if not url]
        if missing:
            raise ConfigError(f"routes {missing} have no base_url (serve: routes must be started first)")
        done = self._start_run()
        provider = make_tracer_provider(self.writer, self.opts.otlp_endpoint)
        self._tracer = tracer(provider)
        stats = CorpusStats()
        status, n_prompts, n_calls, n_skipped_done = "failed", 0, 0, 0
        clients = {
            r.name: httpx.AsyncClient(
                base_url=self.base_urls[r.name].rstrip("/") + "/",
                headers={"Authorization": f"Bearer {key}"} if (key := r.api_key()) else {},
                timeout=httpx.Timeout(r.timeout_s, connect=min(10.0, r.timeout_s)),
                transport=ShardedTransport(r.max_concurrency),
            )
            for r in self.routes
        }
        groups: set[asyncio.Task] = set()
        # A group holds a slot on each route; bound groups in flight by the widest route.
        group_slots = asyncio.Semaphore(max(r.max_concurrency for r in self.routes))
        flusher = asyncio.create_task(self._flush_periodically())
        try:
            for record in read_corpus(self.opts.corpus, self.opts.skip_invalid, stats):
                if self.opts.cohorts and record.cohort not in self.opts.cohorts:
                    continue
                if self.opts.limit is not None and n_prompts >= self.opts.limit:
                    break
                n_prompts += 1
                self.writer.add("prompts", [record.store_row(self.run_id)])
                for sample in range(self.opts.samples):
                    todo = [r for r in self.routes if (record.id, r.name, sample) not in done]
                    n_skipped_done += len(self.routes) - len(todo)
                    if not todo:
                        continue
                    await group_slots.acquire()
                    task = asyncio.create_task(self._group(record, sample, todo, clients))
                    task.add_done_callback(lambda _t: group_slots.release())
                    groups.add(task)
                    task.add_done_callback(groups.discard)
                    n_calls += len(todo)
            if groups:
                await asyncio.gather(*groups)
            status = "completed"
        except (asyncio.CancelledError, KeyboardInterrupt):
            status = "interrupted"
            for g in groups:
                g.cancel()
            await asyncio.gather(*groups, return_exceptions=True)
            raise
        finally:
            flusher.cancel()
            for c in clients.values():
                await c.aclose()
            provider.force_flush()
            provider.shutdown()
            self.writer.flush()
            self._finish_run(status, n_prompts)
        return MirrorSummary(self.run_id, status, n_prompts, n_calls, stats.skipped, n_skipped_done,
                             time.monotonic() - t0, self.tally)

    async def _flush_periodically(self) -> None:
        while True:
            await asyncio.sleep(FLUSH_INTERVAL_S)
            await asyncio.to_thread(self.writer.flush)  # the event loop keeps streaming meanwhile

    async def _group(self, record: PromptRecord, sample: int, todo: list[RouteConfig], clients: dict[str, httpx.AsyncClient]) -> None:
        # Fixed acquisition order (route order) means two groups can never deadlock on slots.
        for r in todo:
            await self._slots[r.name].acquire()
        try:
            if self._limiter:
                await self._limiter.wait()
            with self._tracer.start_as_current_span(
                "mirror", kind=SpanKind.INTERNAL,
                attributes={"routecheck.run_id": self.run_id, "routecheck.prompt_id": record.id,
                            "routecheck.cohort": record.cohort, "routecheck.sample": sample,
                            "routecheck.routes": [r.name for r in todo]},
            ):
                await asyncio.gather(*(self._call(r, record, sample, clients[r.name]) for r in todo))
        finally:
            for r in todo:
                self._slots[r.name].release()

    async def _call(self, route: RouteConfig, record: PromptRecord, sample: int, client: httpx.AsyncClient) -> None:
        body = _build_body(route, record, sample)
        if record.is_trajectory:  # an agent row: the tool loop, one call span per step (harness/mirror/trajectory.py)
            traj = await play_trajectory(self._tracer, route, self.run_id, record, sample, client, body)
            self.writer.add("steps", traj.step_rows(self.run_id, route.name, record.id, sample))
            self.writer.add("responses", [{**_response_row(self.run_id, route, record, sample, traj.total, traj.span), **traj.columns()}])
            self._count(route, traj.total, len(traj.steps))
            return
        with self._tracer.start_as_current_span(
            f"chat {route.model}", kind=SpanKind.CLIENT,
            attributes=request_attributes(route, self.run_id, record.id, record.cohort, sample, body),
            record_exception=False, set_status_on_exception=False,
        ) as span:
            headers: dict[str, str] = {}
            propagate.inject(headers)  # W3C traceparent: server-side spans join this trace
            result = await stream_chat(client, body, headers, route.timeout_s, RetryPolicy(max_retries=route.max_retries))
            span.set_attributes(result_attributes(result))
            if not result.ok:
                span.set_status(Status(StatusCode.ERROR, result.error_message))
            self.writer.add("responses", [_response_row(self.run_id, route, record, sample, result, span)])
        self._count(route, result)

    def _count(self, route: RouteConfig, result: CallResult, requests: int = 1) -> None:
        t = self.tally[route.name]
        t.done += 1
        t.requests += requests
        t.errors += 0 if result.ok else 1
        t.output_tokens += result.output_tokens or 0
        if self.on_progress:
            self.on_progress(route.name, t)


def run_mirror(routes: RoutesFile, opts: MirrorOptions, on_progress: Callable[[str, RouteTally], None] | None = None,
               scrape_interval_s: float = 10.0) -> MirrorSummary:
    """Run a mirror: start the serve: routes' servers (with an OTLP receiver for their spans and a
    metrics scraper), send the corpus, stop the servers. SIGTERM and Ctrl-C mark the run interrupted.
    """
    served = [r for r in routes.routes if r.serve is not None]
    engines = {r.name: engine_for(r) for r in served}  # an unknown engine fails before anything starts
    mirror = Mirror(routes, opts, on_progress)
    try:
        with contextlib.ExitStack() as stack:
            if served:
                receiver = stack.enter_context(OTLPReceiver(mirror.writer, span_columns=server_span_columns))
                log_dir = opts.db.parent / "logs" / mirror.run_id
                urls = stack.enter_context(serving(served, log_dir, receiver.endpoint))
                mirror.base_urls.update(urls)
                stack.enter_context(MetricsScraper(urls, mirror.writer, mirror.run_id, interval_s=scrape_interval_s,
                                                   engines=engines))
            summary = _run_loop(mirror)
            if served:
                # Servers export their request spans in batches every few seconds: wait for them before stopping.
                expected = sum(summary.per_route[r.name].requests for r in served)
                receiver.wait_for_server_spans(expected, SERVER_SPAN_WAIT_S)
        if served:
            mirror.writer.flush()
            attach_server_spans(mirror.con, mirror.run_id)
        return summary
    finally:
        mirror.writer.flush()
        mirror.con.close()


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def _run_loop(mirror: Mirror) -> MirrorSummary:
    async def main() -> MirrorSummary:
        task = asyncio.current_task()
        loop = asyncio.get_running_loop()
        # SIGINT too: with uvloop, asyncio.Runner's own SIGINT handler can go unheard once the loop
        # handles any signal itself, and Ctrl-C would let the run finish as "completed".
        for sig in STOP_SIGNALS:
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, task.cancel)
        return await mirror.run()

    # The loop resets the signals it handled to their defaults when it closes: put back whoever handled
    # them before (serving() turns SIGTERM into an interrupt so the servers are stopped; Python's SIGINT
    # handler raises KeyboardInterrupt).
    previous = {sig: signal.getsignal(sig) for sig in STOP_SIGNALS}
    try:
        with asyncio.Runner(loop_factory=_loop_factory()) as runner:
            return runner.run(main())
    except asyncio.CancelledError:
        raise KeyboardInterrupt from None
    finally:
        for sig, handler in previous.items():
            with contextlib.suppress(ValueError, TypeError):
                signal.signal(sig, handler)


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop where installed (it roughly halves the runner's CPU per request), else asyncio's loop."""
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop
