"""A proxy session, in two processes: this one starts the `serve:` routes' servers (as `mirror`
does), owns the store and records; a child process (server.serve) answers the clients and mirrors.

The serving process hands each finished call over a pipe (records.py) and never touches the store,
the spans or anything else that would share its CPU time or its GIL; this process reads the calls
in order, records them (recorder.py) at a lower CPU priority, and writes once a second. SIGTERM or
Ctrl-C here is passed on as SIGTERM: the serving process stops accepting, finishes the primary calls
in flight, gives mirrored calls their grace and says it has ended; then the runs are marked and
every row and span written. A SIGKILL of this process kills the serving process too (Linux).
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Callable

from harness.config import ConfigError, RouteConfig, RoutesFile
from harness.mirror.runner import _loop_factory
from harness.proxy.options import ProxyOptions
from harness.proxy.priority import Priority
from harness.proxy.recorder import Recorder
from harness.proxy.records import Ended, Failed, MirrorCall, PrimaryCall, Ready, read
from harness.proxy.server import read_token, resolve_routes, serve
from harness.serving.engines import engine_for, server_span_columns
from harness.serving.metrics import MetricsScraper
from harness.serving.pool import serving
from harness.store import BatchWriter, connect, shared
from harness.store.redact import Redactor
from harness.tracing.otlp_receiver import OTLPReceiver, attach_server_spans

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
STORE_MEMORY_LIMIT = "64MB"
FLUSH_INTERVAL_S = 1.0
START_TIMEOUT_S = 120.0


@dataclass
class ProxyReady:
    url: str
    primary: RouteConfig
    candidates: list[RouteConfig]
    run_id: str  # the first run's


@dataclass
class ProxySummary:
    run_ids: list[str]
    status: str
    primary_calls: int
    mirror_calls: int
    not_mirrored: int


def run_proxy(routes: RoutesFile, opts: ProxyOptions, on_ready: Callable[[ProxyReady], None] | None = None,
              scrape_interval_s: float = 10.0) -> ProxySummary:
    """Serve until stopped; `on_ready` is called once the serving process accepts connections."""
    served = [r for r in routes.routes if r.serve is not None]
    engines = {r.name: engine_for(r) for r in served}  # an unknown engine fails before anything starts
    owner = f"routecheck proxy on {opts.host}:{opts.port}"
    con = connect(opts.db, owner=owner)
    # DuckDB keeps written blocks cached up to its memory limit (80 % of RAM by default): over hours
    # of traffic that is the proxy's memory growth. Rows are written once and read by other
    # processes, so a small cache costs nothing.
    con.execute(f"SET memory_limit = '{STORE_MEMORY_LIMIT}'")
    # The proxy's statements are small batched inserts: one DuckDB thread costs a third less CPU
    # per insert than two (docs/benchmarks.md, "Shadow proxy").
    con.execute("SET threads = 1")
    writer = BatchWriter(con)
    try:
        with contextlib.ExitStack() as stack:
            stack.enter_context(shared(opts.db, writer, owner))  # `report`, `runs`, ... read snapshots meanwhile
            urls: dict[str, str] = {}
            receiver = None
            if served:
                receiver = stack.enter_context(OTLPReceiver(writer, span_columns=server_span_columns))
                log_dir = opts.db.parent / "logs" / ("proxy-" + datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ"))
                urls = stack.enter_context(serving(served, log_dir, receiver.endpoint))
            resolved, primary = resolve_routes(routes, opts, urls)
            token = read_token(opts.auth_token_env)
            # Keys (and the clients' token) are replaced in everything stored: a server may echo one back.
            secrets = [(r.api_key_env, r.api_key()) for r in resolved if r.api_key_env]
            redactor = Redactor(secrets + ([(opts.auth_token_env, token)] if token else []))
            if writer.redactor is None and redactor:
                writer.redactor = redactor
            priority = Priority()
            child = ServingProcess(routes, opts, urls, priority)
            stack.callback(child.kill)
            # From here this thread, and the threads it starts (span export, metrics), yield the CPU to
            # the serving process (priority.py); the servers above were started at the normal priority.
            stack.enter_context(priority.lowered())
            recorder = Recorder(writer, opts, resolved, primary, redactor, priority)
            with child.forward_signals():
                ready = child.wait_ready(recorder)
                if on_ready:
                    on_ready(ProxyReady(ready.url, primary, [r for r in resolved if r.name != primary.name], ready.run_id))
                if served:
                    stack.enter_context(MetricsScraper(urls, writer, ready.run_id, interval_s=scrape_interval_s, engines=engines))
                status = child.pump(recorder)
            run_ids = recorder.close(status)
            if receiver is not None:  # servers export their request spans in batches: wait for them
                receiver.wait_for_server_spans(sum(s.primary + s.mirror_calls for s in recorder.runs.values()), 15.0)
        writer.flush()
        with writer.locked() as c:
            for run_id in run_ids:
                attach_server_spans(c, run_id)
        runs = recorder.runs.values()
        return ProxySummary(run_ids, status, sum(s.primary for s in runs), sum(s.mirror_calls for s in runs),
                            sum(c["not_sampled"] + c["queue_full"] + c["shutdown"] for s in runs for c in s.notice.mirror.values()))
    finally:
        writer.flush()
        con.close()


class ServingProcess:
    """The child that answers clients (server.serve), and the pipe its records come through."""

    def __init__(self, routes: RoutesFile, opts: ProxyOptions, base_urls: dict[str, str], priority: Priority):
        ctx = multiprocessing.get_context("spawn")  # this process has threads and a DuckDB connection: no fork
        self.conn, theirs = ctx.Pipe(duplex=False)
        self.proc = ctx.Process(target=serve, args=(routes, opts, base_urls, theirs, _loop_factory()),
                                name="routecheck-proxy-serving", daemon=True)
        self.proc.start()
        theirs.close()
        self.priority = priority
        self._stopping = False

    @contextlib.contextmanager
    def forward_signals(self):
        """SIGINT and SIGTERM stop the serving process gracefully; SIGHUP reaches it (re-read --config)."""
        def stop(signum, frame) -> None:
            self._stopping = True
            self.priority.stopping()
            self.signal(signal.SIGTERM)

        previous = {sig: signal.getsignal(sig) for sig in (*STOP_SIGNALS, signal.SIGHUP)}
        for sig in STOP_SIGNALS:
            signal.signal(sig, stop)
        signal.signal(signal.SIGHUP, lambda signum, frame: self.signal(signal.SIGHUP))
        try:
            yield
        finally:
            for sig, handler in previous.items():
                with contextlib.suppress(ValueError, TypeError):
                    signal.signal(sig, handler)

    def signal(self, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError, TypeError):
            os.kill(self.proc.pid, sig)

    def wait_ready(self, recorder: Recorder) -> Ready:
        """Record what comes before the serving process listens (the first run); its Ready, or a ConfigError."""
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if not self.conn.poll(max(0.0, deadline - time.monotonic())):
                raise ConfigError(f"routecheck proxy: the serving process did not start within {START_TIMEOUT_S:g} s")
            try:
                msg = read(self.conn.recv_bytes())
            except (EOFError, OSError):
                raise ConfigError(f"routecheck proxy: the serving process exited at start (exit code {self._exit_code()})") from None
            if isinstance(msg, Failed):
                raise ConfigError(msg.message)
            if isinstance(msg, Ready):
                return msg
            recorder.handle(msg)

    def pump(self, recorder: Recorder) -> str:
        """Record every message until the serving process has ended; flush once a second. Returns the
        session's status ("failed" when the serving process died without saying it had ended).
        How long ago the calls read ended tells `priority` whether this process keeps up."""
        status = "failed"
        next_flush = time.monotonic() + FLUSH_INTERVAL_S
        while True:
            try:
                if self.conn.poll(max(0.0, next_flush - time.monotonic())):
                    msg = read(self.conn.recv_bytes())
                    if isinstance(msg, Ended):
                        status = msg.status
                        break
                    recorder.handle(msg)
                    if isinstance(msg, (PrimaryCall, MirrorCall)):
                        self.priority.observe(time.time() - msg.ex.wall(msg.ex.t_end))
                else:
                    self.priority.idle()
            except (EOFError, OSError):  # the pipe's end without an Ended: the serving process died
                break
            if time.monotonic() >= next_flush:
                recorder.flush()
                next_flush = time.monotonic() + FLUSH_INTERVAL_S
        self.priority.stopping()
        self.proc.join(30)
        return status

    def _exit_code(self) -> int | None:
        self.proc.join(5)
        return self.proc.exitcode

    def kill(self) -> None:
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join(5)
