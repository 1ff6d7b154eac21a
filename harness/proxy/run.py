"""A proxy session: start the serve: routes' servers (as `mirror` does), serve until SIGTERM or
Ctrl-C, then stop gracefully: stop accepting, finish the primary calls in flight, give mirrored calls
their grace, write every row and span, mark the runs, stop the servers."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import signal
import sys
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Callable

from harness.config import RoutesFile
from harness.mirror.runner import _loop_factory
from harness.proxy.options import ProxyOptions
from harness.proxy.server import Proxy
from harness.serving.engines import engine_for, server_span_columns
from harness.serving.metrics import MetricsScraper
from harness.serving.pool import serving
from harness.store import BatchWriter, connect, shared
from harness.tracing.otlp_receiver import OTLPReceiver, attach_server_spans

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
STORE_MEMORY_LIMIT = "64MB"
# The span exporter and the row flusher are threads: while one runs Python, the event loop waking
# from a read waits for the GIL up to the switch interval (5 ms by default) before it may forward
# the primary's next chunk. 1 ms bounds that wait at the cost of a few more switches.
GIL_SWITCH_INTERVAL_S = 0.001


@dataclass
class ProxySummary:
    run_ids: list[str]
    status: str
    primary_calls: int
    mirror_calls: int
    not_mirrored: int


def run_proxy(routes: RoutesFile, opts: ProxyOptions, on_ready: Callable[[Proxy], None] | None = None,
              scrape_interval_s: float = 10.0) -> ProxySummary:
    """Serve until stopped; `on_ready(proxy)` is called once it accepts connections (proxy.url)."""
    served = [r for r in routes.routes if r.serve is not None]
    engines = {r.name: engine_for(r) for r in served}  # an unknown engine fails before anything starts
    owner = f"routecheck proxy on {opts.host}:{opts.port}"
    con = connect(opts.db, owner=owner)
    # DuckDB keeps written blocks cached up to its memory limit (80 % of RAM by default): over hours
    # of traffic that is the proxy's memory growth. Rows are written once and read by other
    # processes, so a small cache costs nothing.
    con.execute(f"SET memory_limit = '{STORE_MEMORY_LIMIT}'")
    # The proxy's statements are small batched inserts: one DuckDB thread costs a third less CPU
    # per insert than two (docs/benchmarks.md, "Shadow proxy"), on the cores the proxy serves from.
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
            proxy = Proxy(routes, opts, writer, urls)
            first = proxy.recorder.run_for_now()
            if served:
                stack.enter_context(MetricsScraper(urls, writer, first.run_id, interval_s=scrape_interval_s, engines=engines))
            status, run_ids = _serve(proxy, on_ready)
            if receiver is not None:  # servers export their request spans in batches: wait for them
                receiver.wait_for_server_spans(sum(s.primary + s.mirror_calls for s in proxy.recorder.runs.values()
                                                   if s.run_id in run_ids), 15.0)
        writer.flush()
        with writer.locked() as c:
            for run_id in run_ids:
                attach_server_spans(c, run_id)
        runs = proxy.recorder.runs.values()
        counts = proxy.shadow.counts.values()
        return ProxySummary(run_ids, status, sum(s.primary for s in runs), sum(s.mirror_calls for s in runs),
                            sum(c.not_sampled + c.queue_full + c.shutdown for c in counts))
    finally:
        writer.flush()
        con.close()


def _serve(proxy: Proxy, on_ready: Callable[[Proxy], None] | None) -> tuple[str, list[str]]:
    async def main() -> tuple[str, list[str]]:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in STOP_SIGNALS:
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, stop.set)
        with contextlib.suppress(NotImplementedError, RuntimeError, AttributeError):
            loop.add_signal_handler(signal.SIGHUP, lambda: print(proxy.reload(), file=sys.stderr, flush=True))
        status = "failed"
        try:
            await proxy.start()
            # The cyclic GC's full collections walk every object; ~175k of them are the libraries and
            # start-up state, which made a full collection a pause of ~100 ms of the event loop (the
            # primary's p99). Frozen, they are never walked again; what requests allocate still is.
            gc.collect()
            gc.freeze()
            if on_ready:
                on_ready(proxy)
            await stop.wait()
            status = "completed"
        finally:
            run_ids = await proxy.stop(status)
        return status, run_ids

    previous = {sig: signal.getsignal(sig) for sig in (*STOP_SIGNALS, signal.SIGHUP)}
    interval = sys.getswitchinterval()
    sys.setswitchinterval(GIL_SWITCH_INTERVAL_S)
    try:
        with asyncio.Runner(loop_factory=_loop_factory()) as runner:
            return runner.run(main())
    finally:
        sys.setswitchinterval(interval)
        for sig, handler in previous.items():
            with contextlib.suppress(ValueError, TypeError):
                signal.signal(sig, handler)
