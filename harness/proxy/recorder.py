"""The recording process: the serving process's messages (records.py) become run rows (one per
session or per window), prompt rows, response rows and spans, exactly as a corpus run writes them.

Reading the kept chunks (capture.read_call), span attributes and rows happen here, never in the
process that answers clients: done beside the event loop (on it, or in threads sharing its GIL)
they added up to 15 ms to the primary's p99 at 100 % mirroring (docs/benchmarks.md, "Shadow proxy").
Rows go through the shared BatchWriter and spans through the SDK's BatchSpanProcessor; `flush`
runs each second, so a SIGKILL loses at most the last second or so.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.trace.id_generator import IdGenerator, RandomIdGenerator
from opentelemetry.trace import NonRecordingSpan, SpanContext, SpanKind, Status, StatusCode, TraceFlags, TraceState

from harness import __version__
from harness.config import RouteConfig
from harness.mirror.attributes import request_attributes, result_attributes
from harness.mirror.openai_stream import CallResult
from harness.proxy.capture import Exchange, digest, read_call, redact_messages, redact_tool_calls
from harness.proxy.options import ProxyOptions
from harness.proxy.priority import Priority
from harness.proxy.records import Counts, Message, MirrorCall, PrimaryCall, RunNotice, RunOpened, TraceIds
from harness.store import BatchWriter, columns, upsert
from harness.store.redact import Redactor
from harness.tracing.provider import make_tracer_provider, tracer

_RESPONSE_COLUMNS = frozenset(columns("responses"))
_RESULT_FIELDS = tuple(f.name for f in dataclasses.fields(CallResult) if f.name in _RESPONSE_COLUMNS)
_NOT_PARAMS = ("messages", "tools", "model")


def prompt_row(run_id: str, prompt_id: str, cohort: str, seq: int, body: dict[str, Any], capture: bool) -> dict[str, Any]:
    """The prompts row of a proxied request: messages and tools as sent, the other request fields in metadata."""
    messages = body.get("messages") or []
    params = {k: v for k, v in body.items() if k not in _NOT_PARAMS}
    if not capture:
        messages = redact_messages(messages)
        for key in ("user", "metadata", "prediction"):
            if key in params:
                params[key] = digest(params[key] if isinstance(params[key], str) else repr(params[key]))
    return {"run_id": run_id, "prompt_id": prompt_id, "cohort": cohort, "messages": messages, "context": None,
            "tools": body.get("tools"), "expected": None, "source_line": seq,
            "metadata": {"source": "proxy", "client_model": body.get("model"), "request": params}}


def response_row(run_id: str, prompt_id: str, cohort: str, route: RouteConfig, r: CallResult, span: trace.Span) -> dict[str, Any]:
    """A responses row: every CallResult field the table has a column for, as a corpus run writes it."""
    ctx = span.get_span_context()
    row = {k: getattr(r, k) for k in _RESULT_FIELDS}  # shallow: asdict's deep copy cost more than the rest of the row
    row.update(run_id=run_id, prompt_id=prompt_id, route=route.name, sample=0, role=route.role, cohort=cohort,
               model=route.model, started_at=datetime.fromtimestamp(r.started_at, tz=timezone.utc),
               trace_id=f"{ctx.trace_id:032x}", span_id=f"{ctx.span_id:016x}", warmup=False)
    return {k: v for k, v in row.items() if k in _RESPONSE_COLUMNS}


def wall_ns(ex: Exchange, t: float | None) -> int:
    """A perf_counter time of an exchange as epoch nanoseconds (spans carry wall-clock times); None: when it was sent."""
    return int(ex.wall(t) * 1e9)


class PresetIds(IdGenerator):
    """Gives the SDK the ids set just before a span is started; random ids otherwise."""

    def __init__(self) -> None:
        self.trace_id = self.span_id = 0
        self._random = RandomIdGenerator()

    def generate_span_id(self) -> int:
        v, self.span_id = self.span_id, 0
        return v or self._random.generate_span_id()

    def generate_trace_id(self) -> int:
        v, self.trace_id = self.trace_id, 0
        return v or self._random.generate_trace_id()


def parent_context(ids: TraceIds) -> Context | None:
    """The context a span with these ids starts in: its parent's, or none for a root span."""
    if not ids.parent_id:
        return Context()
    state = TraceState.from_header([ids.tracestate]) if ids.tracestate else None
    parent = SpanContext(ids.trace_id, ids.parent_id, is_remote=ids.remote,
                         trace_flags=TraceFlags(TraceFlags.SAMPLED if ids.sampled else TraceFlags.DEFAULT), trace_state=state)
    return trace.set_span_in_context(NonRecordingSpan(parent))


@dataclass
class RunState:
    run_id: str
    started_at: datetime
    window_end: float | None  # epoch seconds; None: until the session ends
    primary: int = 0
    primary_errors: int = 0
    mirror_calls: int = 0  # mirrored calls recorded (a row each)
    notice: RunNotice = field(default_factory=RunNotice)  # the serving process's part


class Recorder:
    def __init__(self, writer: BatchWriter, opts: ProxyOptions, routes: list[RouteConfig], primary: RouteConfig,
                 redactor: Redactor | None = None, priority: Priority | None = None):
        self.writer = writer
        self.priority = priority  # how often this process fell behind goes into the run rows
        self.redactor = redactor
        self.opts = opts
        self.routes = routes
        self._by_name = {r.name: r for r in routes}
        self.primary = primary
        self.capture = opts.settings.capture_content
        self.capture_prompts = self.capture and all(getattr(r, "capture_content", True) for r in routes)
        self._ids = PresetIds()
        self.provider = make_tracer_provider(writer, opts.otlp_endpoint, id_generator=self._ids)
        self.tracer = tracer(self.provider)
        self.runs: dict[str, RunState] = {}
        self.records_dropped = 0  # by the serving process (its buffer full)
        self.records_failed = 0  # here (a message that could not be recorded)
        self._written: dict[str, dict[str, Any]] = {}  # the last run row upserted per run: an idle proxy writes none

    def handle(self, msg: Message) -> None:
        """Record one message. A message that cannot be recorded (a bug) costs that call, not the
        session: it is counted in the run rows (`options.calls.records_failed`) and said on stderr."""
        try:
            self._handle(msg)
        except Exception as e:
            self.records_failed += 1
            if self.records_failed <= 5:
                print(f"routecheck proxy: a {type(msg).__name__} could not be recorded: {type(e).__name__}: {e}",
                      file=sys.stderr, flush=True)

    def _handle(self, msg: Message) -> None:
        if isinstance(msg, PrimaryCall):
            self.primary_call(msg)
        elif isinstance(msg, MirrorCall):
            self.mirror_call(msg)
        elif isinstance(msg, Counts):
            self.records_dropped = msg.records_dropped
            for run_id, notice in msg.runs.items():
                if run_id in self.runs:
                    self.runs[run_id].notice = notice
        elif isinstance(msg, RunOpened):
            state = RunState(msg.run_id, msg.started_at, msg.window_end)
            self.runs[msg.run_id] = state
            with self.writer.locked() as con:  # the run row exists from the first moment
                upsert(con, "runs", [self._run_row(state)])

    # -- runs ------------------------------------------------------------------------------------
    def snapshot(self) -> list[dict[str, Any]]:
        return [r.snapshot() for r in self.routes]

    def _run_row(self, s: RunState) -> dict[str, Any]:
        return {"run_id": s.run_id, "started_at": s.started_at, "finished_at": s.notice.finished_at, "status": s.notice.status,
                "corpus_path": None, "corpus_sha256": None, "routes": self.snapshot(), "options": self._options(s),
                "tool_version": __version__, "n_prompts": s.primary, "n_expected": s.primary + s.mirror_calls,
                "note": f"proxy on {self.opts.host}:{self.opts.port}, primary {self.primary.name}"}

    def _options(self, s: RunState) -> dict[str, Any]:
        mirrors = s.notice.mirror
        not_mirrored = {name: c["not_sampled"] + c["queue_full"] + c["shutdown"] for name, c in mirrors.items()}
        return {**self.opts.stored(), "primary": self.primary.name,
                "window_end": datetime.fromtimestamp(s.window_end, tz=timezone.utc).isoformat() if s.window_end else None,
                "calls": {"primary": s.primary, "primary_errors": s.primary_errors, "mirror": mirrors,
                          "not_mirrored": not_mirrored, "records_dropped": self.records_dropped,
                          "records_failed": self.records_failed,
                          "recording_fell_behind": self.priority.fell_behind if self.priority else 0},
                "mirror_rate_changes": s.notice.rate_changes}

    # -- calls -----------------------------------------------------------------------------------
    def _span(self, name: str, ids: TraceIds, kind: SpanKind, start_ns: int, attributes: dict[str, Any]) -> trace.Span:
        self._ids.trace_id, self._ids.span_id = ids.trace_id, ids.span_id
        return self.tracer.start_span(name, context=parent_context(ids), kind=kind, start_time=start_ns, attributes=attributes)

    def _run(self, run_id: str) -> RunState:
        """The run of a call; should its RunOpened have been dropped, a row is made for it now."""
        run = self.runs.get(run_id)
        if run is None:
            run = self.runs[run_id] = RunState(run_id, datetime.now(timezone.utc), None)
        return run

    def primary_call(self, m: PrimaryCall) -> None:
        run = self._run(m.run_id)
        body = json.loads(m.raw)  # the serving process answered 400 to a body that is not a JSON object
        p = self.primary
        sent = body if body.get("model") == p.model else {**body, "model": p.model}
        server_span = self._span("proxy chat", m.server, SpanKind.SERVER, m.server_start_ns,
                                 {"routecheck.run_id": m.run_id, "routecheck.prompt_id": m.prompt_id,
                                  "routecheck.cohort": m.cohort, "routecheck.sample": 0, "routecheck.primary": p.name,
                                  "http.request.method": "POST", "url.path": m.path})
        span = self._span(f"chat {p.model}", m.client, SpanKind.CLIENT, int(m.ex.wall_start * 1e9),
                          request_attributes(p, m.run_id, m.prompt_id, m.cohort, 0, sent))
        self.writer.add("prompts", [prompt_row(m.run_id, m.prompt_id, m.cohort, m.seq, body, self.capture_prompts)])
        r = self.call(run, m.prompt_id, m.cohort, p, sent, m.ex, span, {"routecheck.proxy.role": "primary"})
        server_span.set_attributes({"routecheck.mirrored_to": m.mirrored, "http.response.status_code": m.ex.status or 502})
        if not r.ok:
            server_span.set_status(Status(StatusCode.ERROR, r.error_message))
        server_span.end(end_time=wall_ns(m.ex, m.ex.t_end))

    def mirror_call(self, m: MirrorCall) -> None:
        run = self._run(m.run_id)
        route = self._by_name[m.route]
        sent = {**json.loads(m.raw), "model": route.model}
        attrs = request_attributes(route, m.run_id, m.prompt_id, m.cohort, 0, sent)
        attrs["routecheck.proxy.role"] = "mirror"
        attrs["routecheck.queue_wait_s"] = m.queue_wait_s
        span = self._span(f"chat {route.model}", m.span, SpanKind.CLIENT, int(m.ex.wall_start * 1e9), attrs)
        self.call(run, m.prompt_id, m.cohort, route, sent, m.ex, span)

    def call(self, run: RunState, prompt_id: str, cohort: str, route: RouteConfig, body: dict[str, Any],
             ex: Exchange, span: trace.Span, extra: dict[str, Any] | None = None) -> CallResult:
        """Read an exchange, finish its span, buffer its response row."""
        r = read_call(body, ex)
        if r.error_message and self.redactor:  # before the span status: a server may echo a key
            r.error_message = self.redactor.text(r.error_message)
        attrs = result_attributes(r)
        if extra:
            attrs.update(extra)
        if not (self.capture and getattr(route, "capture_content", True)):
            d = digest(r.text)
            if d:
                attrs["routecheck.text_sha256"], attrs["routecheck.text_chars"] = d["sha256"], d["chars"]
            r = dataclasses.replace(r, text=None, tool_calls=redact_tool_calls(r.tool_calls))
        span.set_attributes(attrs)
        if not r.ok:
            span.set_status(Status(StatusCode.ERROR, r.error_message))
        span.end(end_time=wall_ns(ex, ex.t_end))
        self.writer.add("responses", [response_row(run.run_id, prompt_id, cohort, route, r, span)])
        if route.name == self.primary.name:
            run.primary += 1
            run.primary_errors += 0 if r.ok else 1
        else:
            run.mirror_calls += 1
        return r

    # -- writing ---------------------------------------------------------------------------------
    def flush(self) -> None:
        """Write what is buffered, and the run rows that changed since they were last written (a
        DuckDB upsert costs 15-30 ms of CPU, so an idle proxy writes nothing)."""
        rows = []
        for s in self.runs.values():
            row = self._run_row(s)
            if self._written.get(s.run_id) != row:
                self._written[s.run_id] = row
                rows.append(row)
        self.writer.flush()
        if rows:
            with self.writer.locked() as con:
                upsert(con, "runs", rows)

    def close(self, status: str) -> list[str]:
        """Flush the spans, mark every run still open with `status`, write everything; returns the run ids."""
        self.provider.force_flush()
        self.provider.shutdown()
        now = datetime.now(timezone.utc)
        for s in self.runs.values():
            if s.notice.status == "running":
                s.notice = dataclasses.replace(s.notice, status=status, finished_at=now)
        self.flush()
        return list(self.runs)
