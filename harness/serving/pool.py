"""The servers of a run: started in batches that fit in memory, health-checked, stopped together."""

from __future__ import annotations

import contextlib
import os
import threading
from pathlib import Path
from typing import Iterator, Sequence

import psutil

from harness.config import RouteConfig
from harness.serving.engines import GiB, engine_for
from harness.serving.process import (
    ServerHandle,
    _failure,
    _spec,
    build_env,
    signals_raise,
    start_server,
    stop_server,
    wait_ready,
)

__all__ = ["GiB", "ServerPool", "dir_size_bytes", "estimate_server_bytes", "pinned", "plan_cpu_sets", "plan_start_batches", "serving"]


def dir_size_bytes(path: str | Path) -> int:
    path = Path(path)
    if not path.is_dir():
        return 0
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def estimate_server_bytes(route: RouteConfig) -> int:
    """Host memory one server needs, as its engine estimates it from its environment and model size."""
    env = build_env(route, tag="estimate")
    return engine_for(route).memory_bytes(env, dir_size_bytes(_spec(route).model))


def plan_start_batches(routes: Sequence[RouteConfig], available_bytes: int | None = None) -> list[list[RouteConfig]]:
    """Group routes into batches started together, so each batch fits in available memory
    (with 20% headroom). A route too large on its own still gets its own batch."""
    budget = int(0.8 * (psutil.virtual_memory().available if available_bytes is None else available_bytes))
    batches: list[list[RouteConfig]] = []
    current: list[RouteConfig] = []
    used = 0
    for route in routes:
        need = estimate_server_bytes(route)
        if current and used + need > budget:
            batches.append(current)
            current, used = [], 0
        current.append(route)
        used += need
    if current:
        batches.append(current)
    return batches


def plan_cpu_sets(routes: Sequence[RouteConfig], cpus: Sequence[int] | None = None) -> dict[str, list[int]]:
    """Disjoint cores for each served route whose engine can bind its threads, so two servers of
    one run (an A/A pair above all) get equal CPU instead of fighting over every core. Only when
    two or more such routes run and there is at least a core for each; a route whose serve.env
    already sets the binding keeps it (and is left out of the split)."""
    cpus = sorted(os.sched_getaffinity(0) if cpus is None else cpus)
    bindable = []
    for r in routes:
        if r.serve is None:
            continue
        binding = getattr(engine_for(r), "cpu_binding", lambda _c: None)(cpus[:1])
        if binding and not set(binding) & set(r.serve.env):
            bindable.append(r)
    if len(bindable) < 2 or len(cpus) < len(bindable):
        return {}
    share = len(cpus) // len(bindable)
    return {r.name: list(cpus[i * share:(i + 1) * share]) for i, r in enumerate(bindable)}


def pinned(route: RouteConfig, cpus: list[int] | None) -> RouteConfig:
    """The route with its engine's binding to `cpus` added to serve.env (unchanged without cpus)."""
    if not cpus or route.serve is None:
        return route
    env = {**(engine_for(route).cpu_binding(cpus) or {}), **route.serve.env}
    return route.model_copy(update={"serve": route.serve.model_copy(update={"env": env})})


class ServerPool:
    """The servers of a run. `start()` launches them (in parallel batches that fit in memory) and
    waits until all are ready; `stop()` stops them all."""

    def __init__(self, routes: Sequence[RouteConfig], log_dir: Path, otlp_traces_endpoint: str | None = None,
                 grace_s: float = 10.0, available_bytes: int | None = None):
        self.routes = [r for r in routes if r.serve is not None]
        self.log_dir = Path(log_dir)
        self.otlp_traces_endpoint = otlp_traces_endpoint
        self.grace_s = grace_s
        self.available_bytes = available_bytes
        self.handles: dict[str, ServerHandle] = {}
        self.batches: list[list[str]] = []
        self.cpu_sets = plan_cpu_sets(self.routes)  # route -> its own cores (engines that can bind)

    @property
    def base_urls(self) -> dict[str, str]:
        return {name: h.base_url for name, h in self.handles.items()}

    def start(self) -> dict[str, str]:
        try:
            for batch in plan_start_batches(self.routes, self.available_bytes):
                self.batches.append([r.name for r in batch])
                started = []
                for r in batch:  # recorded one by one, so an interrupt mid-batch still stops them
                    h = start_server(pinned(r, self.cpu_sets.get(r.name)), self.log_dir, self.otlp_traces_endpoint)
                    self.handles[h.route] = h
                    started.append(h)
                wait_ready(started, {r.name: _spec(r).startup_timeout_s for r in batch})
        except BaseException:
            self.stop()
            raise
        return self.base_urls

    def check_alive(self) -> None:
        """Raise ServeError if a server died after start-up."""
        for h in self.handles.values():
            code = h.process.poll()
            if code is not None:
                raise _failure(h, f"exited with code {code} while serving")

    def stop(self) -> None:
        handles = list(self.handles.values())
        # Stop in parallel: each may take the whole grace period.
        threads = [threading.Thread(target=stop_server, args=(h, self.grace_s)) for h in handles]
        for t in threads:
            t.start()
        interrupted = False
        for t in threads:
            while t.is_alive():
                try:
                    t.join()
                except KeyboardInterrupt:  # a second Ctrl-C must not abandon the stop half-way
                    interrupted = True
        if interrupted:
            raise KeyboardInterrupt("interrupted while stopping servers (they were stopped)")


@contextlib.contextmanager
def serving(
    routes: Sequence[RouteConfig],
    log_dir: Path,
    otlp_traces_endpoint: str | None = None,
    grace_s: float = 10.0,
) -> Iterator[dict[str, str]]:
    """Start a vLLM server for every `serve:` route, yield {route name: base_url (.../v1)}, and stop
    them all on exit, error, Ctrl-C, SIGTERM or SIGHUP. Routes without `serve:` are ignored.

    Call it from the thread that lives as long as the servers (Linux ties each server's life to the
    thread that started it via PR_SET_PDEATHSIG).
    """
    pool = ServerPool(routes, log_dir, otlp_traces_endpoint, grace_s)
    with signals_raise():
        try:
            yield pool.start()
        finally:
            pool.stop()


