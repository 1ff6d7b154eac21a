"""Recording proxied traffic like a corpus run: run rows (one per session or per window), prompt
rows, response rows and spans, written in batches once a second, off the event loop.

Nothing here runs before the client has its answer: the handler hands over the kept chunks, and
reading them (capture.read_call), ending the spans and building rows happen after. Rows go
through the shared BatchWriter; spans through the SDK's BatchSpanProcessor (both about 1 s), so a
SIGKILL loses at most the last second or so.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from opentelemetry import trace
from opentelemetry.trace import Status, StatusCode

from harness import __version__
from harness.config import RouteConfig
from harness.mirror.attributes import result_attributes
from harness.mirror.openai_stream import CallResult
from harness.mirror.runner import new_run_id
from harness.proxy.capture import Exchange, digest, read_call, redact_messages, redact_tool_calls
from harness.proxy.options import ProxyOptions
from harness.proxy.shadow import MirrorCounts
from harness.store import BatchWriter, columns, upsert
from harness.store.redact import Redactor

FLUSH_INTERVAL_S = 1.0
# The store's writes (validation, Arrow, DuckDB inserts and checkpoints: 50-100 ms of CPU a second at
# 200 req/s mirrored) and the span exporters run in threads at this nice value, so on the cores the
# event loop serves from they take what it leaves: at normal priority the writes took the loop's
# core in stretches of 100-185 ms and the primary's p99 swung from +6 to +19 ms between runs; at 10 they still get
# about a tenth of a contended core, enough to keep up (docs/benchmarks.md, "Shadow proxy"). Linux lets a
# process lower its threads' priority unprivileged.
BACKGROUND_NICE = 10

_RESPONSE_COLUMNS = frozenset(columns("responses"))
_RESULT_FIELDS = tuple(f.name for f in dataclasses.fields(CallResult) if f.name in _RESPONSE_COLUMNS)
_NOT_PARAMS = ("messages", "tools", "model")


def lower_thread_priority(nice: int = BACKGROUND_NICE) -> None:
    """Run the calling thread at `nice` (Linux: a thread is a schedulable task); a no-op where not possible."""
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), nice)
    except (AttributeError, OSError):  # not Linux, or not allowed: the writes keep the normal priority
        pass


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


def wall_ns(ex: Exchange, t: float) -> int:
    """A perf_counter time of an exchange as epoch nanoseconds (spans carry wall-clock times)."""
    return int((ex.wall_start + (t - ex.t_sent)) * 1e9)


@dataclass
class RunState:
    run_id: str
    started_at: datetime
    window_end: float | None  # epoch seconds; None: until the session ends
    primary: int = 0
    primary_errors: int = 0
    mirror_calls: int = 0  # mirrored calls recorded (a row each)
    in_flight: int = 0  # requests and mirrored calls not yet recorded
    status: str = "running"
    finished_at: datetime | None = None
    rate_changes: list[dict[str, Any]] = field(default_factory=list)


class Recorder:
    def __init__(self, writer: BatchWriter, opts: ProxyOptions, routes: list[RouteConfig], primary: RouteConfig,
                 counts: dict[tuple[str, str], MirrorCounts], redactor: Redactor | None = None):
        self.writer = writer
        self.redactor = redactor
        self.opts = opts
        self.routes = routes
        self.primary = primary
        self.counts = counts  # the shadow's, read when run rows are updated
        self.capture = opts.settings.capture_content
        self.capture_prompts = self.capture and all(getattr(r, "capture_content", True) for r in routes)
        self.runs: dict[str, RunState] = {}
        self.current: RunState | None = None
        self._session_start = time.time()
        self._flusher: asyncio.Task | None = None
        self._seq = 0
        self._written: dict[str, dict[str, Any]] = {}  # the last run row upserted per run: an idle proxy writes none
        self._store_thread = ThreadPoolExecutor(1, thread_name_prefix="routecheck-store", initializer=lower_thread_priority)

    # -- runs ------------------------------------------------------------------------------------
    def snapshot(self) -> list[dict[str, Any]]:
        return [r.snapshot() for r in self.routes]

    def run_for_now(self) -> RunState:
        """The run a request arriving now belongs to; opens the next window's run when one has ended."""
        now = time.time()
        cur = self.current
        if cur is not None and (cur.window_end is None or now < cur.window_end):
            return cur
        end = None
        if self.opts.window_s:
            k = int((now - self._session_start) // self.opts.window_s)
            end = self._session_start + (k + 1) * self.opts.window_s
        state = RunState(new_run_id(), datetime.now(timezone.utc), end)
        self.runs[state.run_id] = state
        self.current = state
        with self.writer.locked() as con:
            upsert(con, "runs", [self._run_row(state)])
        return state

    def _run_row(self, s: RunState) -> dict[str, Any]:
        return {"run_id": s.run_id, "started_at": s.started_at, "finished_at": s.finished_at, "status": s.status, "corpus_path": None,
                "corpus_sha256": None, "routes": self.snapshot(), "options": self._options(s),
                "tool_version": __version__, "n_prompts": s.primary, "n_expected": s.primary + s.mirror_calls,
                "note": f"proxy on {self.opts.host}:{self.opts.port}, primary {self.primary.name}"}

    def _options(self, s: RunState) -> dict[str, Any]:
        mirrors = {name: c.as_dict() for (run, name), c in list(self.counts.items()) if run == s.run_id}
        not_mirrored = {name: c["not_sampled"] + c["queue_full"] + c["shutdown"] for name, c in mirrors.items()}
        return {**self.opts.stored(), "primary": self.primary.name,
                "window_end": datetime.fromtimestamp(s.window_end, tz=timezone.utc).isoformat() if s.window_end else None,
                "calls": {"primary": s.primary, "primary_errors": s.primary_errors, "mirror": mirrors,
                          "not_mirrored": not_mirrored},
                "mirror_rate_changes": s.rate_changes}

    def rate_changed(self, rate: float) -> None:
        entry = {"at": datetime.now(timezone.utc).isoformat(), "mirror_rate": rate}
        for s in self.runs.values():
            if s.status == "running":
                s.rate_changes.append(entry)

    # -- rows ------------------------------------------------------------------------------------
    def next_prompt_id(self) -> tuple[str, int]:
        self._seq += 1
        return f"p{self._seq:09d}", self._seq

    def prompt(self, run: RunState, prompt_id: str, seq: int, cohort: str, body: dict[str, Any]) -> None:
        self.writer.add("prompts", [prompt_row(run.run_id, prompt_id, cohort, seq, body, self.capture_prompts)])

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
        span.end(end_time=wall_ns(ex, ex.t_end if ex.t_end is not None else time.perf_counter()))
        self.writer.add("responses", [response_row(run.run_id, prompt_id, cohort, route, r, span)])
        if route.name == self.primary.name:
            run.primary += 1
            run.primary_errors += 0 if r.ok else 1
        else:
            run.mirror_calls += 1
        run.in_flight -= 1
        return r

    # -- writing ---------------------------------------------------------------------------------
    def start(self) -> None:
        self._flusher = asyncio.create_task(self._flush_periodically())

    async def _flush_periodically(self) -> None:
        while True:
            await asyncio.sleep(FLUSH_INTERVAL_S)
            rows = self._due_run_rows()
            await asyncio.get_running_loop().run_in_executor(self._store_thread, self._write, rows)

    def _due_run_rows(self) -> list[dict[str, Any]]:
        """Run rows to update (built on the loop, where the counts change): every running run whose
        row changed since it was last written (a DuckDB upsert costs 15-30 ms of CPU, so an idle
        proxy writes nothing), and a window that has ended with nothing left in flight is completed."""
        now = time.time()
        rows = []
        for s in self.runs.values():
            if s.status != "running":
                continue
            if s.window_end is not None and now >= s.window_end and s.in_flight <= 0 and s is not self.current:
                s.status, s.finished_at = "completed", datetime.now(timezone.utc)
            row = self._run_row(s)
            if self._written.get(s.run_id) != row:
                self._written[s.run_id] = row
                rows.append(row)
        return rows

    def _write(self, run_rows: list[dict[str, Any]]) -> None:
        self.writer.flush()
        if run_rows:
            with self.writer.locked() as con:
                upsert(con, "runs", run_rows)

    async def close(self, status: str) -> list[str]:
        """Stop the periodic flush, write what is buffered, mark every open run; returns the run ids."""
        if self._flusher:
            self._flusher.cancel()
            await asyncio.gather(self._flusher, return_exceptions=True)
        rows = []
        for s in self.runs.values():
            if s.status == "running":
                s.status, s.finished_at = status, datetime.now(timezone.utc)
            rows.append(self._run_row(s))
        await asyncio.get_running_loop().run_in_executor(self._store_thread, self._write, rows)
        self._store_thread.shutdown(wait=False)
        return list(self.runs)
