"""The serving stage: servers for `serve:` routes, started, watched, scraped and stopped.

    engines/    what differs per serving engine (vLLM first): command, environment, memory,
                metric names, the per-request span; add one engine = one module + one line
    process.py  one server process: start, health, log tail, stop (process groups, parent death)
    pool.py     the servers of a run: memory-planned start batches, `serving()` context
    metrics.py  Prometheus scrapes before / during / after a run
"""

from harness.serving.engines import ENGINES, GiB, Engine, engine_for
from harness.serving.errors import ServeError
from harness.serving.pool import ServerPool, dir_size_bytes, estimate_server_bytes, plan_start_batches, serving
from harness.serving.process import (
    LOG_TAIL_LINES,
    SERVE_TAG_ENV,
    ServerHandle,
    build_command,
    build_env,
    find_server_processes,
    free_port,
    log_tail,
    start_server,
    stop_server,
    wait_ready,
)

__all__ = [
    "ENGINES", "GiB", "LOG_TAIL_LINES", "SERVE_TAG_ENV", "Engine", "ServeError", "ServerHandle", "ServerPool",
    "build_command", "build_env", "dir_size_bytes", "engine_for", "estimate_server_bytes", "find_server_processes",
    "free_port", "log_tail", "plan_start_batches", "serving", "start_server", "stop_server", "wait_ready",
]
