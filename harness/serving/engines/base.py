"""The Engine protocol: the engine-neutral terms the rest of routecheck speaks."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Mapping, Protocol

if TYPE_CHECKING:
    from pathlib import Path

    from harness.config import RouteConfig

GiB = 1024**3

# Typed `spans` columns an engine fills for its per-request server span (seconds).
SPAN_TIMING_COLUMNS = ("queue_s", "prefill_s", "decode_s", "ttft_s", "e2e_s")


class Engine(Protocol):
    name: str
    label: str  # how messages name it ("vLLM server exited ...")
    # Flags routecheck sets itself; a route's serve.args must not set them.
    reserved_flags: tuple[str, ...]
    # Prometheus families kept from /metrics (None keeps all of the engine's), and the
    # engine-neutral quantity of each kept sample name (see store/views.py for the names used).
    metric_families: frozenset[str] | None
    quantities: Mapping[str, str]
    metrics_path: str

    def check_installed(self) -> None: ...

    def command(self, route: "RouteConfig", port: int, otlp_traces_endpoint: str | None) -> list[str]: ...

    def environment(self, route: "RouteConfig", otlp_traces_endpoint: str | None, base: Mapping[str, str]) -> dict[str, str]: ...

    def capture_environment(self, route: "RouteConfig", spool_dir: "Path", base: Mapping[str, str]) -> dict[str, str]:
        """Extra environment for a route with `expert_capture: true`: the server records each
        request's routing into `spool_dir` (format: harness/experts/capture.py)."""
        ...

    def memory_bytes(self, env: Mapping[str, str], model_bytes: int) -> int:
        """Host memory one server needs, given its environment and the model's size on disk."""
        ...

    def cpu_binding(self, cpus: list[int]) -> dict[str, str] | None:
        """Environment that confines the server's compute threads to `cpus` (so two servers on one
        machine do not fight over cores), or None where the engine cannot (a GPU engine). Optional:
        an engine without this method is never pinned."""
        ...

    def span_columns(self, name: str, attributes: Mapping[str, Any]) -> dict[str, Any] | None:
        """Typed columns (`engine` and SPAN_TIMING_COLUMNS) for the engine's per-request span;
        None for any other span."""
        ...
