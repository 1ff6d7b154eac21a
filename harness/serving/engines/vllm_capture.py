"""routecheck's vLLM plugin (entry point group `vllm.general_plugins`): live expert capture.

vLLM calls `register()` in every process it starts (API server, engine core, workers). It does
nothing unless `ROUTECHECK_EXPERT_SPOOL` names a directory (routecheck sets it for a route with
`expert_capture: true`). Then, in the process that runs the model, it wraps the V1 model
runner's `execute_model` (the runner the CPU build uses; `CPUModelRunner` inherits it):

- on CPU, at registration (before the model is built), it ends every router's `select_experts`
  with an opaque custom op (`_install_tap`) that torch.compile keeps as a call, so its Python body
  sees each step's top-k ids and router logits while the whole model stays compiled; on GPUs (served
  with --enforce-eager) it binds, at the first real step, `BaseRouter.set_capture_fn` (the logical
  top-k ids, vLLM's own hook) and a wrapper around `select_experts` (the logits);
- during a step the two callbacks only keep references to the tensors; after the step the ids
  (T x L x k) and logits (T x L x E) are cut into the step's requests (batch order, each
  request's scheduled token count, its first token's position) and appended as one line to
  `<spool>/experts-<pid>.jsonl` (format: `harness/experts/capture.py`), before the step's tokens
  are sampled, so a request's routing is on disk before the client sees its last token;
- dummy and profiling runs (outside `execute_model`) are ignored.

CUDA graphs replay kernels without Python, so on GPUs routecheck adds `--enforce-eager` to such a route.

Request ids: the engine's internal id is the API server's id plus `-` and 8 random characters
(`InputProcessor.assign_request_id`); the spool carries both, the external one being the
response `id` and the server span's `gen_ai.request.id`.
"""

from __future__ import annotations

import logging
import os
import re
import time
from functools import partial
from typing import Any

import numpy as np

SPOOL_ENV = "ROUTECHECK_EXPERT_SPOOL"
_SUFFIX = re.compile(r"^(.*)-[0-9A-Za-z]{8}$")

log = logging.getLogger("vllm.plugins.routecheck_experts")  # under vLLM's logger: its handlers print it
_registered = False


def external_request_id(internal: str) -> str:
    """The API server's request id of an engine request id (vLLM appends `-` + 8 random characters)."""
    m = _SUFFIX.match(internal)
    return m.group(1) if m else internal


def register() -> None:
    """The plugin entry point: patch the model runner once per process when a spool is named."""
    global _registered
    spool = os.environ.get(SPOOL_ENV)
    if _registered or not spool:
        return
    _registered = True
    _install_tap()
    try:
        from vllm.v1.worker import gpu_model_runner
    except Exception as e:  # a vLLM without the V1 runner: say so in the server log, serve anyway
        log.warning("routecheck expert capture: cannot patch the model runner: %s", e)
        return
    runner_cls = gpu_model_runner.GPUModelRunner
    if getattr(runner_cls.execute_model, "_routecheck_capture", False):
        return
    original = runner_cls.execute_model

    def execute_model(self: Any, scheduler_output: Any, *args: Any, **kwargs: Any) -> Any:
        cap = getattr(self, "_routecheck_capture", None)
        if cap is None:
            cap = self._routecheck_capture = _Capture(spool)
        if not cap.bound:
            cap.bind(self)
        cap.begin()
        t0 = time.perf_counter()
        try:
            return original(self, scheduler_output, *args, **kwargs)
        finally:
            t1 = time.perf_counter()
            cap.end(self, scheduler_output)
            cap.timing(t1 - t0, time.perf_counter() - t1)

    execute_model._routecheck_capture = True  # type: ignore[attr-defined]
    runner_cls.execute_model = execute_model


_tap: Any = None  # the bound capture's per-layer callback (ids, logits); None while nothing records
_lib: Any = None  # the torch library holding routecheck::expert_tap (kept alive)
_tap_s = [0.0]  # seconds in the op's body while capturing (inside execute_model's time), for the log


def _install_tap() -> bool:
    """On CPU, put an opaque custom op, `routecheck::expert_tap(topk_ids, router_logits) -> topk_ids`,
    at the end of every router's `select_experts`. The CPU build lets torch.compile trace each MoE
    layer, router included, into the model graph, where a Python callback would run once at tracing
    and never again; a custom op stays a call in the compiled graph, so its Python body runs at every
    step while everything around it stays compiled. It hands copies of the ids and logits to the
    capture (inductor may reuse the buffers after the op) and returns a copy of the ids, which the
    MoE kernel then uses, so the op is never dead code. MoE layers call it in layer order within a
    forward pass. Returns whether the op is installed (not on GPUs: CUDA graphs replay without Python,
    so routecheck serves capture routes there with --enforce-eager and vLLM's own capture hook)."""
    global _lib
    try:
        import torch
        from vllm.model_executor.layers.fused_moe.router.fused_moe_router import FusedMoERouter
        from vllm.platforms import current_platform

        if not current_platform.is_cpu():
            return False
        if getattr(FusedMoERouter.select_experts, "_routecheck_tap", False):
            return True
        lib = torch.library.Library("routecheck", "FRAGMENT")
        lib.define("expert_tap(Tensor topk_ids, Tensor router_logits) -> Tensor")

        def expert_tap(topk_ids: Any, router_logits: Any) -> Any:
            hook = _tap
            if hook is None:
                return topk_ids.clone()
            t0 = time.perf_counter()
            hook(topk_ids, router_logits)
            out = topk_ids.clone()
            _tap_s[0] += time.perf_counter() - t0
            return out

        lib.impl("expert_tap", expert_tap, "CompositeExplicitAutograd")
        torch.library.register_fake("routecheck::expert_tap", lambda topk_ids, router_logits: torch.empty_like(topk_ids),
                                    lib=lib)
        _lib = lib
        original = FusedMoERouter.select_experts

        def select_experts(self: Any, hidden_states: Any, router_logits: Any, topk_indices_dtype: Any = None, *,
                           input_ids: Any = None) -> Any:
            weights, ids = original(self, hidden_states, router_logits, topk_indices_dtype, input_ids=input_ids)
            return weights, torch.ops.routecheck.expert_tap(ids, router_logits)

        select_experts._routecheck_tap = True  # type: ignore[attr-defined]
        FusedMoERouter.select_experts = select_experts
        return True
    except Exception as e:  # an unknown vLLM layout: say so; the route can add --enforce-eager
        log.warning("routecheck expert capture: cannot install the router tap: %s", e)
        return False


def _host_copy(t: Any) -> np.ndarray:
    try:
        return t.numpy().copy()
    except TypeError:  # bfloat16 has no numpy dtype
        return t.float().numpy()


def _np(x: Any) -> np.ndarray:
    """The tap's numpy copies as they are; tensors from vLLM's own hooks (GPU, eager) to host numpy."""
    if isinstance(x, np.ndarray):
        return x
    return x.detach().float().cpu().numpy() if x.is_floating_point() else x.detach().cpu().numpy()


class _Capture:
    def __init__(self, spool: str):
        self.spool = spool
        self.bound = False
        self.active = False
        self.layers: list[int] = []  # decoder layer ids of the MoE layers, in order
        self.ids: dict[int, Any] = {}
        self.logits: dict[int, Any] = {}
        self.num_experts = 0
        self.top_k = 0
        self.probs: str | None = None
        self.file: Any = None
        self.failed = False
        self.dtype = "uint8"
        self._external: dict[str, str] = {}
        self._positions: Any = None
        self._positions_of: Any = None

    # -- binding --------------------------------------------------------------------------------
    def bind(self, runner: Any) -> None:
        self.bound = True
        try:
            self._bind(runner.get_model())
        except Exception as e:
            self.failed = True
            log.warning("routecheck expert capture disabled: %s", e)

    def _bind(self, model: Any) -> None:
        from vllm.model_executor.layers.fused_moe.router.base_router import BaseRouter
        from vllm.model_executor.layers.fused_moe.runner.moe_runner import MoERunner

        runners = [m for m in model.modules() if isinstance(m, MoERunner)]
        if not runners:
            raise RuntimeError("the model has no MoE layers")
        for m in runners:
            if m.is_monolithic or not isinstance(m.router, BaseRouter):
                raise RuntimeError(f"MoE layer {m.layer_name} has no BaseRouter ({type(m.router).__name__})")
        self.layers = sorted({int(m.layer_id) for m in runners})
        first = runners[0]
        self.num_experts = int(first.router.global_num_experts)
        self.top_k = int(first.router.top_k)
        self.dtype = "uint8" if self.num_experts <= 256 else "int16"
        scoring = {getattr(m.router, "scoring_func", "softmax") for m in runners}
        global _tap
        if getattr(type(first.router).select_experts, "_routecheck_tap", False):
            self._calls: list[tuple[Any, Any]] = []
            _tap = self._on_tap  # ids and logits from the op, in layer order
        else:
            for m in runners:
                layer = int(m.layer_id)
                m.router.set_capture_fn(partial(self._on_ids, layer))
                m.router.select_experts = self._logits_tap(layer, m.router.select_experts)
        self.probs = "softmax" if scoring == {"softmax"} else None
        os.makedirs(self.spool, exist_ok=True)
        from harness.experts.capture import meta_line, spool_file

        self.file = open(spool_file(self.spool, os.getpid()), "ab", buffering=0)
        self.file.write(meta_line(self.num_experts, self.top_k, self.layers, self.probs))
        log.info("routecheck expert capture (%s): %d MoE layers, E=%d, k=%d, router logits %s, spool %s", __file__,
                 len(self.layers), self.num_experts, self.top_k, "on" if self.probs else "off", self.spool)

    _steps = 0
    _model_s = 0.0
    _capture_s = 0.0

    def timing(self, model_s: float, capture_s: float) -> None:
        """Every 500 steps, the server log says what capture costs next to the steps themselves
        (bench/experts.py reads the last such line: capture's own time, free of the runs' noise)."""
        self._steps += 1
        self._model_s += model_s
        self._capture_s += capture_s
        if self._steps % 500 == 0:
            log.info("routecheck expert capture: %d steps, %.1f ms per step in execute_model, %.3f ms writing, "
                     "%.3f ms in the tap", self._steps, 1e3 * self._model_s / self._steps,
                     1e3 * self._capture_s / self._steps, 1e3 * _tap_s[0] / self._steps)

    # -- during a step --------------------------------------------------------------------------
    def _on_tap(self, topk_ids: Any, router_logits: Any) -> None:
        if self.active:
            n = len(self.ids)
            if n < len(self.layers):
                layer = self.layers[n]
                # numpy copies: a tenth of torch.clone's dispatch cost on these few-byte tensors
                # (the compiled graph may reuse the buffers once the op returns, so copy, not keep)
                self.ids[layer] = _host_copy(topk_ids)
                self.logits[layer] = _host_copy(router_logits)

    def _on_ids(self, layer: int, topk_ids: Any) -> None:
        if self.active:
            self.ids[layer] = topk_ids

    def _logits_tap(self, layer: int, select_experts: Any) -> Any:
        """The router's own entry point, wrapped: it receives the gate's logits for the step's tokens."""
        def tapped(*args: Any, **kwargs: Any) -> Any:
            if self.active:
                logits = kwargs.get("router_logits", args[1] if len(args) > 1 else None)
                if logits is not None:
                    self.logits[layer] = logits
            return select_experts(*args, **kwargs)
        return tapped

    def begin(self) -> None:
        self.ids.clear()
        self.logits.clear()
        self.active = self.file is not None and not self.failed

    def end(self, runner: Any, scheduler_output: Any) -> None:
        if not self.active:
            return
        self.active = False
        try:
            self._write(runner, scheduler_output)
        except Exception as e:  # never take the server down for telemetry
            self.failed = True
            log.warning("routecheck expert capture stopped: %s", e)
        finally:
            self.ids.clear()
            self.logits.clear()

    def _write(self, runner: Any, scheduler_output: Any) -> None:
        from harness.experts.capture import step_line

        total = int(scheduler_output.total_num_scheduled_tokens)
        if not total or len(self.ids) < len(self.layers):
            return
        req_ids = runner.input_batch.req_ids
        scheduled = scheduler_output.num_scheduled_tokens
        if self._positions is None or self._positions_of is not runner.positions:
            self._positions_of = runner.positions
            self._positions = runner.positions.numpy() if runner.positions.device.type == "cpu" else None
        reqs, at = [], 0
        for rid in req_ids:
            n = scheduled.get(rid, 0)
            if n:
                ext = self._external.get(rid)
                if ext is None:
                    ext = self._external[rid] = external_request_id(rid)
                start = int(self._positions[at]) if self._positions is not None else int(runner.positions[at])
                reqs.append((rid, ext, start, n))
                at += n
        if at != total:
            return
        ids = np.stack([_np(self.ids[layer])[:total] for layer in self.layers], axis=1)
        logits = None
        if self.probs and len(self.logits) == len(self.layers):
            logits = np.stack([_np(self.logits[layer])[:total] for layer in self.layers], axis=1)
        self.file.write(step_line(reqs, ids, logits, dtype=self.dtype))
        if len(self._external) > 4096:  # finished requests' ids: keep the map small
            self._external.clear()
