"""Start, watch and stop one server process per `serve:` route, whatever its engine.

Each server runs in its own session (process group), so stopping it kills the server and every
process it forks, and a Ctrl-C in the terminal reaches routecheck only, which then stops the
servers in order. Stops happen on normal exit, on errors, on SIGINT/SIGTERM/SIGHUP (handlers
installed while servers run), at interpreter exit (atexit), and, should routecheck itself be
SIGKILLed, through PR_SET_PDEATHSIG on Linux. What differs per engine (command, environment)
comes from harness/serving/engines/.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator, Sequence

import httpx
import psutil

from harness.config import ConfigError, RouteConfig
from harness.serving.engines import engine_for
from harness.serving.errors import ServeError

# Set on every server we start (children inherit it): how leftover processes are found.
SERVE_TAG_ENV = "ROUTECHECK_SERVE_TAG"
LOG_TAIL_LINES = 30


@dataclass
class ServerHandle:
    """One running server."""

    route: str
    model: str
    port: int
    log_path: Path
    command: list[str]
    process: subprocess.Popen
    tag: str
    started_at: float = field(default_factory=time.monotonic)
    ready_s: float | None = None  # seconds from start to /health 200
    label: str = "model"  # the engine's name for itself, in messages

    @property
    def root_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def base_url(self) -> str:
        return self.root_url + "/v1"

    def alive(self) -> bool:
        return self.process.poll() is None


# -- command line and environment ------------------------------------------------------------------


def build_command(route: RouteConfig, port: int, otlp_traces_endpoint: str | None = None) -> list[str]:
    """The argv that starts `route`'s server (its engine's command, with the flags routecheck owns)."""
    spec = _spec(route)
    engine = engine_for(route)
    for arg in spec.args:
        flag = arg.split("=", 1)[0]
        if flag in engine.reserved_flags:
            raise ConfigError(f"route {route.name!r}: serve.args must not set {flag} (routecheck sets it)")
    return engine.command(route, port, otlp_traces_endpoint)


def build_env(
    route: RouteConfig, otlp_traces_endpoint: str | None = None, tag: str = "", base: dict[str, str] | None = None
) -> dict[str, str]:
    """The engine's defaults < the caller's environment < the route's `serve.env`, plus tracing settings."""
    spec = _spec(route)
    base = dict(os.environ if base is None else base)
    # A traceparent in our own environment would make the server parent its start-up spans under it.
    for key in ("traceparent", "tracestate", "TRACEPARENT", "TRACESTATE"):
        base.pop(key, None)
    env = engine_for(route).environment(route, otlp_traces_endpoint, base)
    env.update(spec.env)
    env[SERVE_TAG_ENV] = tag or f"{route.name}-{os.getpid()}"
    return env


_PORTS_GIVEN: set[int] = set()


def expert_spool_dir(log_dir: Path, route: str) -> Path:
    """Where a route's server writes its live expert capture (`expert_capture: true`), next to its log."""
    return Path(log_dir) / f"{route}.experts"


def free_port(host: str = "127.0.0.1") -> int:
    """A port the OS says is free now (bind to 0), never one already given to another server of
    this process (servers bind theirs seconds later, so the OS could hand it out twice)."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind((host, 0))
            port = s.getsockname()[1]
        if port not in _PORTS_GIVEN:
            _PORTS_GIVEN.add(port)
            return port
    raise ServeError("could not find a free port on 127.0.0.1")


def _port_for(route: RouteConfig) -> int:
    spec = _spec(route)
    if spec.port == "auto":
        return free_port()
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("127.0.0.1", spec.port))
        except OSError:
            raise ServeError(
                f"route {route.name!r}: serve.port {spec.port} is already in use on 127.0.0.1 "
                "(stop what listens there, or use port: auto)"
            ) from None
    return spec.port


def _spec(route: RouteConfig):
    if route.serve is None:
        raise ValueError(f"route {route.name!r} has no serve: section")
    return route.serve


def _check_model(route: RouteConfig) -> None:
    model = _spec(route).model
    path = Path(model)
    if path.exists():
        if path.is_dir() and not (path / "config.json").exists():
            raise ConfigError(f"route {route.name!r}: serve.model {model} has no config.json (not a model directory)")
        return
    looks_like_hub_id = model.count("/") == 1 and not model.startswith((".", "/", "~"))
    if not looks_like_hub_id:
        raise ConfigError(f"route {route.name!r}: serve.model {model} does not exist")


def _load_prctl():
    """Resolved once in the parent: the child may only call it (no imports between fork and exec,
    where another thread could hold the import lock)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        import ctypes

        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None


_PRCTL = _load_prctl()
_PR_SET_PDEATHSIG = 1


def _set_parent_death_signal() -> None:  # runs in the child between fork and exec
    _PRCTL(_PR_SET_PDEATHSIG, int(signal.SIGTERM))


def start_server(
    route: RouteConfig, log_dir: Path, otlp_traces_endpoint: str | None = None, tag: str | None = None
) -> ServerHandle:
    """Launch `route`'s server (not yet ready); output goes to `log_dir/<route>.log` (appended)."""
    _check_model(route)
    port = _port_for(route)
    cmd = build_command(route, port, otlp_traces_endpoint)
    tag = tag or f"{route.name}-{os.getpid()}-{time.time_ns()}"
    env = build_env(route, otlp_traces_endpoint, tag=tag)
    if route.expert_capture:
        env.update(engine_for(route).capture_environment(route, expert_spool_dir(log_dir, route.name), env))
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"{route.name}.log"
    with open(log_path, "ab") as log:
        stamp = datetime.now(timezone.utc).isoformat(timespec="seconds")
        log.write(f"\n=== routecheck {stamp}: starting route {route.name}: {' '.join(cmd)}\n".encode())
        log.flush()
        process = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,  # own process group: one killpg stops EngineCore and workers too
            preexec_fn=_set_parent_death_signal if _PRCTL is not None else None,
        )
    handle = ServerHandle(route=route.name, model=_spec(route).model, port=port, log_path=log_path,
                          command=cmd, process=process, tag=tag, label=engine_for(route).label)
    _LIVE[id(handle)] = handle
    return handle


# Lines a dying vLLM prints after the real error (nanobind leak reports, semaphore warnings):
# left out of quoted tails so the error itself stays in view.
_NOISE = re.compile(r"^(nanobind: |\s+- leaked |See https://nanobind|.*resource_tracker|\s+warnings\.warn\()")
_ERROR_LINE = re.compile(r"\b[A-Z]\w*(Error|Exception|Exit)\b")


def _current_start_lines(path: Path) -> list[str]:
    """The log lines since routecheck's last `=== routecheck` header (logs are appended)."""
    try:
        with open(path, errors="replace") as f:
            lines = f.read().splitlines()
    except OSError as e:
        return [f"(cannot read {path}: {e.strerror})"]
    starts = [i for i, line in enumerate(lines) if line.startswith("=== routecheck ")]
    return lines[starts[-1] + 1 :] if starts else lines


def log_tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    """The last `lines` meaningful lines of the server's current start, preceded by the last line
    naming an error when that one is further up."""
    current = [line for line in _current_start_lines(path) if not _NOISE.match(line)]
    tail = current[-lines:]
    errors = [line for line in current if _ERROR_LINE.search(line)]
    if errors and errors[-1] not in tail:
        tail = [f"(last error line further up: {errors[-1].strip()})", "..."] + tail
    return "\n".join(tail)


def _failure(handle: ServerHandle, what: str) -> ServeError:
    return ServeError(
        f"route {handle.route}: {handle.label} server {what}.\n"
        f"command: {' '.join(handle.command)}\n"
        f"log: {handle.log_path} (last {LOG_TAIL_LINES} lines below)\n"
        f"{log_tail(handle.log_path)}"
    )


def wait_ready(handles: Sequence[ServerHandle], timeouts_s: dict[str, float], poll_s: float = 0.5) -> None:
    """Poll every server's /health until all answer 200. Raises ServeError naming the first server
    that exits or misses its deadline."""
    pending = {h.route: h for h in handles}
    with httpx.Client(timeout=2.0, trust_env=False) as client:
        while pending:
            for name, h in list(pending.items()):
                code = h.process.poll()
                if code is not None:
                    raise _failure(h, f"exited with code {code} during start-up")
                try:
                    if client.get(h.root_url + "/health").status_code == 200:
                        h.ready_s = time.monotonic() - h.started_at
                        del pending[name]
                        continue
                except httpx.HTTPError:
                    pass
                if time.monotonic() - h.started_at > timeouts_s[name]:
                    raise _failure(h, f"was not ready within {timeouts_s[name]:.0f} s (serve.startup_timeout_s)")
            if pending:
                time.sleep(poll_s)


def server_processes(handle: ServerHandle) -> list[psutil.Process]:
    """Every live process of a server: its process tree, its process group, and anything else
    carrying its tag (a process that left the tree and the group still inherits the environment,
    unless it rewrote it: EngineCore's setproctitle clobbers /proc/PID/environ, hence all three)."""
    pgid = handle.process.pid  # start_new_session: the server leads its own group
    found: dict[int, psutil.Process] = {}
    with contextlib.suppress(psutil.Error):
        root = psutil.Process(handle.process.pid)
        if root.status() != psutil.STATUS_ZOMBIE:
            found[root.pid] = root
        for child in root.children(recursive=True):
            found[child.pid] = child
    for proc in psutil.process_iter(["pid"]):
        with contextlib.suppress(psutil.Error, OSError):
            if proc.pid in found or proc.status() == psutil.STATUS_ZOMBIE:
                continue
            if os.getpgid(proc.pid) == pgid or proc.environ().get(SERVE_TAG_ENV) == handle.tag:
                found[proc.pid] = proc
    return list(found.values())


def stop_server(handle: ServerHandle, grace_s: float = 10.0) -> None:
    """SIGTERM the server's process group, SIGKILL whatever is left after `grace_s`. Idempotent."""
    members = server_processes(handle)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(handle.process.pid, signal.SIGTERM)
    for proc in members:  # in case one left the group
        with contextlib.suppress(psutil.Error):
            proc.terminate()
    _, alive = psutil.wait_procs(members, timeout=grace_s)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(handle.process.pid, signal.SIGKILL)
    for proc in alive:
        with contextlib.suppress(psutil.Error):
            proc.kill()
    psutil.wait_procs(alive, timeout=5)
    with contextlib.suppress(subprocess.TimeoutExpired):
        handle.process.wait(timeout=5)  # reap the zombie
    _LIVE.pop(id(handle), None)


def find_server_processes(tag_prefix: str) -> list[psutil.Process]:
    """Live processes of servers whose ROUTECHECK_SERVE_TAG starts with `tag_prefix` (tags are
    `<route>-<routecheck pid>-<ns>`), with every member of their process groups (EngineCore and
    workers rewrite their environment, so they are found through the group)."""
    procs = [p for p in psutil.process_iter(["pid"]) if _alive(p)]
    tagged, groups = {}, set()
    for proc in procs:
        with contextlib.suppress(psutil.Error, OSError):
            if (proc.environ().get(SERVE_TAG_ENV) or "").startswith(tag_prefix):
                tagged[proc.pid] = proc
                groups.add(os.getpgid(proc.pid))
    for proc in procs:
        with contextlib.suppress(psutil.Error, OSError):
            if proc.pid not in tagged and os.getpgid(proc.pid) in groups:
                tagged[proc.pid] = proc
    return list(tagged.values())


def _alive(proc: psutil.Process) -> bool:
    try:
        return proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


# Every server started and not yet stopped, for the atexit and signal safety nets.
_LIVE: dict[int, ServerHandle] = {}


def _stop_all_live() -> None:
    for handle in list(_LIVE.values()):
        stop_server(handle, grace_s=5.0)


atexit.register(_stop_all_live)


class ServeInterrupted(KeyboardInterrupt):
    """SIGTERM/SIGHUP while servers run: unwinds like Ctrl-C so `finally` blocks stop the servers."""


@contextlib.contextmanager
def signals_raise() -> Iterator[None]:
    """Turn SIGTERM and SIGHUP into ServeInterrupted while servers run (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: object) -> None:
        raise ServeInterrupted(f"received {signal.Signals(signum).name}")

    previous = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)

