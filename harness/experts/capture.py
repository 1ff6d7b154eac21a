"""Routing recorded by the server itself: the live-capture spool and vLLM's returned `routed_experts`.

Live capture (`harness/serving/engines/vllm_capture.py`, a vLLM plugin) appends one JSON line per
engine step to `<spool dir>/experts-<pid>.jsonl`, written by the process that runs the model:

    {"meta": {"num_experts": E, "top_k": k, "layers": [decoder layer ids], "probs": "softmax" | null}}
    {"reqs": [[request_id, external_id, start, n], ...], "dtype": "uint8",
     "ids": b64(T x L x k), "logits": b64(float32 T x L x E) | null}

`reqs` lists the step's requests in batch order: request `i` owns the next `n` tokens of the
step, and `start` is the position of its first one in the request's sequence (prefill chunks,
decode tokens, a recomputation after preemption: all are placed by position, the last write of
a position wins). `external_id` is the id the OpenAI server answered with (the response `id`,
the server span's `gen_ai.request.id`). The format is defined here once: the plugin calls
`step_line` / `meta_line`, routecheck reads with `Spool`.

Returned ids: a vLLM started with `--enable-return-routed-experts` puts on each non-streamed
choice `routed_experts`, base64 of an `np.save`d integer array (tokens, layers, k).
"""

from __future__ import annotations

import base64
import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from harness.experts.stats import DEFAULT_CAPACITY_FACTORS, ResponseRecord, response_record

SPOOL_GLOB = "experts-*.jsonl"


def spool_file(spool_dir: str | Path, pid: int) -> Path:
    return Path(spool_dir) / f"experts-{pid}.jsonl"


def _b64(array: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(array).tobytes()).decode("ascii")


def meta_line(num_experts: int, top_k: int, layers: Sequence[int], probs: str | None) -> bytes:
    return (json.dumps({"meta": {"num_experts": int(num_experts), "top_k": int(top_k), "layers": [int(x) for x in layers],
                                 "probs": probs}}) + "\n").encode()


def step_line(reqs: Sequence[tuple[str, str, int, int]], ids: np.ndarray, logits: np.ndarray | None,
              dtype: str = "uint8") -> bytes:
    """One engine step: `ids` (tokens, layers, k) integer, `logits` (tokens, layers, E) or None;
    `dtype` of the ids on disk: uint8 for E <= 256, else int16."""
    return (json.dumps({
        "reqs": [[r, e, int(s), int(n)] for r, e, s, n in reqs], "shape": list(ids.shape), "dtype": dtype,
        "ids": _b64(ids.astype(dtype)),
        "logits": None if logits is None else _b64(logits.astype(np.float32)),
    }) + "\n").encode()


@dataclass
class _Request:
    positions: dict[int, tuple[np.ndarray, np.ndarray | None]] = field(default_factory=dict)  # pos -> (L x k, L x E)
    meta: dict[str, Any] | None = None


class Spool:
    """Reads a spool directory incrementally (files may still be growing): `poll()` takes what was
    appended since the last call, `record(external_id)` is that request's routing so far."""

    def __init__(self, spool_dir: str | Path):
        self.dir = Path(spool_dir)
        self._offsets: dict[Path, int] = {}
        self._meta: dict[Path, dict[str, Any]] = {}
        self._requests: dict[str, _Request] = {}
        self.bad_lines = 0

    def poll(self) -> int:
        """Read new complete lines from every spool file; returns how many step lines were read."""
        steps = 0
        if not self.dir.is_dir():
            return 0
        for path in sorted(self.dir.glob(SPOOL_GLOB)):
            offset = self._offsets.get(path, 0)
            with open(path, "rb") as f:
                f.seek(offset)
                data = f.read()
            end = data.rfind(b"\n")
            if end < 0:
                continue
            self._offsets[path] = offset + end + 1
            for line in data[: end + 1].splitlines():
                try:
                    obj = json.loads(line)
                    if "meta" in obj:
                        self._meta[path] = obj["meta"]
                    else:
                        self._step(path, obj)
                        steps += 1
                except (ValueError, KeyError, TypeError):
                    self.bad_lines += 1
        return steps

    def _step(self, path: Path, obj: dict[str, Any]) -> None:
        meta = self._meta[path]
        T, L, k = obj["shape"]
        ids = np.frombuffer(base64.b64decode(obj["ids"]), dtype=obj["dtype"]).reshape(T, L, k)
        logits = None
        if obj.get("logits") is not None:
            logits = np.frombuffer(base64.b64decode(obj["logits"]), dtype=np.float32).reshape(T, L, meta["num_experts"])
        at = 0
        for _rid, ext, start, n in obj["reqs"]:
            req = self._requests.setdefault(ext, _Request())
            req.meta = meta
            for i in range(n):
                req.positions[start + i] = (ids[at + i], None if logits is None else logits[at + i])
            at += n

    def request_ids(self) -> list[str]:
        return sorted(self._requests)

    def record(self, external_id: str, capacity_factors: Sequence[float] = DEFAULT_CAPACITY_FACTORS,
               source: str = "live") -> ResponseRecord | None:
        """The request's routing as a ResponseRecord (tokens in position order), None if never seen."""
        req = self._requests.get(external_id)
        if req is None or not req.positions or req.meta is None:
            return None
        order = sorted(req.positions)
        ids = np.stack([req.positions[p][0] for p in order]).astype(np.int64)  # T x L x k
        have_logits = req.meta.get("probs") == "softmax" and all(req.positions[p][1] is not None for p in order)
        logits = np.stack([req.positions[p][1] for p in order]).astype(np.float64) if have_logits else None
        return ids_record(ids, req.meta["num_experts"], logits=logits, capacity_factors=capacity_factors, source=source)


def ids_record(ids: np.ndarray, num_experts: int, *, logits: np.ndarray | None = None,
               capacity_factors: Sequence[float] = DEFAULT_CAPACITY_FACTORS, source: str = "") -> ResponseRecord:
    """A ResponseRecord from (tokens, layers, k) expert ids and optional (tokens, layers, E) router
    logits. With logits, each token's k ids are put in the router's order (highest first, as the
    probe has them: vLLM's CPU top-k is unsorted) and the probabilities are their softmax."""
    ids = np.asarray(ids)
    if ids.ndim != 3:
        raise ValueError(f"routed expert ids must be (tokens, layers, k), got shape {ids.shape}")
    T, L, k = ids.shape
    layers = []
    for layer in range(L):
        top = ids[:, layer, :].astype(np.int64)
        probs = None
        if logits is not None:
            z = logits[:, layer, :]
            z = z - z.max(axis=1, keepdims=True)
            p = np.exp(z)
            probs = p / p.sum(axis=1, keepdims=True)
            if top.size and top.min() >= 0 and top.max() < num_experts:
                order = np.argsort(-np.take_along_axis(z, top, axis=1), axis=1, kind="stable")
                top = np.take_along_axis(top, order, axis=1)
        layers.append((top, probs))
    return response_record(layers, num_experts=num_experts, top_k=k, source=source, capacity_factors=capacity_factors)


def decode_routed_experts(value: str) -> np.ndarray:
    """vLLM's `routed_experts` field: base64 of an `np.save`d integer array (tokens, layers, k)."""
    raw = base64.b64decode(value, validate=True)
    array = np.load(io.BytesIO(raw), allow_pickle=False)
    if array.ndim != 3 or not np.issubdtype(array.dtype, np.integer):
        raise ValueError(f"routed_experts must be an integer array (tokens, layers, k), got {array.dtype} {array.shape}")
    return array


def encode_routed_experts(array: np.ndarray) -> str:
    """The inverse of `decode_routed_experts` (what vLLM's `numpy2base64` does): for the stub server and tests."""
    buf = io.BytesIO()
    np.save(buf, np.asarray(array), allow_pickle=False)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def span_figures(records: Iterable[ResponseRecord]) -> dict[str, float]:
    """What a call span carries: `routecheck.experts.active_mean`, the mean over tokens and MoE layers
    of the experts a token was sent to (k for top-k routing; fewer where a router sends slots to no
    expert), and `routecheck.experts.router_entropy` (normalised, layer mean) when probabilities are known."""
    from harness.experts.stats import aggregate

    recs = list(records)
    if not recs:
        return {}
    g = aggregate(recs)
    slots = sum(sum(layer.counts) for r in recs for layer in r.layers)
    token_layers = sum(layer.tokens for r in recs for layer in r.layers)
    out = {"routecheck.experts.active_mean": slots / token_layers} if token_layers else {}
    if g.router_entropy.mean is not None:
        out["routecheck.experts.router_entropy"] = g.router_entropy.mean
    return out
