"""Expert-routing statistics of Mixtral-style MoE routers: the definitions, written once.

Pure numpy, no I/O. The flow is two steps, so per-response rows can be stored and pooled later:

1. `response_record(layers, num_experts=E, top_k=k)` turns one response's routing (per MoE layer:
   the top-k expert ids per token, `tokens x k`, and optionally the softmax router probabilities,
   `tokens x E`) into a `ResponseRecord` of *sums only*: assignment counts per expert, the token
   count, the sum over tokens of router entropy and of top-k mass, and the dropped slots / tokens
   of a capacity simulation at each capacity factor.
2. `aggregate(records, source=...)` sums those records (one response, or a group such as a
   (route, cohort) pair) and returns `GroupStats`; `GroupStats.to_json()` is the report shape.

Pooling is by sums, never by averaging per-response shares: utilisation is pooled assignment
counts, router entropy and top-k mass are per-token means over all the group's tokens, capacity
rates are pooled dropped slots (tokens) over pooled slots (tokens). The capacity simulation
itself always runs with one response (its prompt + answer tokens) as the batch.

Layer means: every layer of a group sees the same tokens, so the layer mean of a rate is also the
rate pooled over layers. Entropies, CV and max/mean are computed per layer and then averaged (an
entropy of the layer-mean utilisation would hide a skew that differs between layers).
See docs/experts.md for the formulas and why each matters.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any, Iterable, Sequence

import numpy as np

DEFAULT_CAPACITY_FACTORS: tuple[float, ...] = (1.0, 1.25, 1.5, 2.0)
# Router probability rows must sum to 1 within this (float32 softmax is within ~1e-6).
PROB_SUM_TOLERANCE = 1e-3


# ----------------------------------------------------------------------------- records


@dataclass(frozen=True)
class CapacityCounts:
    """Capacity simulation of one layer of one response at one capacity factor."""

    factor: float
    capacity: int  # per-expert capacity used, ceil(factor * tokens * k / E); -1 in a merged (pooled) record
    dropped_slots: int  # (token, slot) assignments beyond their expert's capacity
    dropped_tokens: int  # tokens whose k slots were all dropped


@dataclass(frozen=True)
class LayerRecord:
    """Sums for one MoE layer of one response (or of a pooled group, after `merge_records`)."""

    layer: int  # index of the MoE layer (position in the model's router outputs)
    counts: tuple[int, ...]  # length E: (token, slot) assignments each expert received
    tokens: int
    entropy_sum: float | None  # sum over tokens of H(p_t) in nats; None without probabilities
    mass_sum: float | None  # sum over tokens of the probability mass of the k chosen experts
    capacity: tuple[CapacityCounts, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "layer": self.layer, "counts": list(self.counts), "tokens": self.tokens,
            "entropy_sum": self.entropy_sum, "mass_sum": self.mass_sum,
            "capacity": [[c.factor, c.capacity, c.dropped_slots, c.dropped_tokens] for c in self.capacity],
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "LayerRecord":
        return cls(
            layer=int(d["layer"]), counts=tuple(int(c) for c in d["counts"]), tokens=int(d["tokens"]),
            entropy_sum=None if d.get("entropy_sum") is None else float(d["entropy_sum"]),
            mass_sum=None if d.get("mass_sum") is None else float(d["mass_sum"]),
            capacity=tuple(CapacityCounts(float(f), int(c), int(s), int(t)) for f, c, s, t in d.get("capacity", [])),
        )


@dataclass(frozen=True)
class ResponseRecord:
    """One response's routing as sums, one `LayerRecord` per MoE layer; compact and summable."""

    num_experts: int
    top_k: int
    tokens: int
    layers: tuple[LayerRecord, ...]
    source: str = ""  # free label, e.g. a response id

    def to_dict(self) -> dict[str, Any]:
        return {"source": self.source, "num_experts": self.num_experts, "top_k": self.top_k, "tokens": self.tokens,
                "layers": [layer.to_dict() for layer in self.layers]}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ResponseRecord":
        return cls(num_experts=int(d["num_experts"]), top_k=int(d["top_k"]), tokens=int(d["tokens"]),
                   layers=tuple(LayerRecord.from_dict(x) for x in d["layers"]), source=str(d.get("source", "")))


# ----------------------------------------------------------------------------- single-layer definitions


def capacity_per_expert(factor: float, tokens: int, num_experts: int, top_k: int) -> int:
    """ceil(factor * tokens * k / E), computed exactly (the factor read as its decimal string: 1.1 is 11/10)."""
    if factor <= 0:
        raise ValueError(f"capacity factor must be positive, got {factor}")
    return math.ceil(Fraction(str(float(factor))) * tokens * top_k / num_experts)


def simulate_capacity(top_k_ids: np.ndarray, num_experts: int, factor: float) -> CapacityCounts:
    """First come, first served in token order (within a token, slot order); beyond capacity a slot is dropped."""
    ids = np.asarray(top_k_ids)
    tokens, k = ids.shape
    cap = capacity_per_expert(factor, tokens, num_experts, k)
    flat = ids.reshape(-1)  # token-major: token 0 slots 0..k-1, then token 1, ...
    # Rank of each assignment among earlier assignments to the same expert (0 = first to arrive).
    order = np.argsort(flat, kind="stable")
    sorted_ids = flat[order]
    starts = np.searchsorted(sorted_ids, sorted_ids, side="left")
    rank = np.empty_like(flat)
    rank[order] = np.arange(flat.size) - starts
    dropped = (rank >= cap).reshape(tokens, k)
    return CapacityCounts(factor=float(factor), capacity=cap, dropped_slots=int(dropped.sum()),
                          dropped_tokens=int(dropped.all(axis=1).sum()))


def _check_layer(top_k_ids: Any, probs: Any | None, num_experts: int, top_k: int) -> tuple[np.ndarray, np.ndarray | None]:
    ids = np.asarray(top_k_ids)
    if ids.ndim != 2 or ids.shape[1] != top_k:
        raise ValueError(f"top-k ids must be (tokens, {top_k}), got shape {ids.shape}")
    if ids.size and not np.issubdtype(ids.dtype, np.integer):
        raise ValueError(f"top-k ids must be integers, got {ids.dtype}")
    ids = ids.astype(np.int64, copy=False)
    if ids.size and (ids.min() < 0 or ids.max() >= num_experts):
        raise ValueError(f"expert ids must be in [0, {num_experts}), got [{ids.min()}, {ids.max()}]")
    if probs is None:
        return ids, None
    p = np.asarray(probs, dtype=np.float64)
    if p.shape != (ids.shape[0], num_experts):
        raise ValueError(f"router probabilities must be ({ids.shape[0]}, {num_experts}), got {p.shape}")
    if p.size and (not np.all(np.isfinite(p)) or p.min() < 0 or np.abs(p.sum(axis=1) - 1).max() > PROB_SUM_TOLERANCE):
        raise ValueError("router probabilities must be finite, non-negative rows summing to 1 (softmax)")
    return ids, p


def layer_record(layer: int, top_k_ids: Any, probs: Any | None, *, num_experts: int, top_k: int,
                 capacity_factors: Sequence[float] = DEFAULT_CAPACITY_FACTORS) -> LayerRecord:
    """Sums of one MoE layer for one response: ids `tokens x k`, probs `tokens x E` (softmax) or None."""
    ids, p = _check_layer(top_k_ids, probs, num_experts, top_k)
    counts = np.bincount(ids.reshape(-1), minlength=num_experts)
    entropy_sum = mass_sum = None
    if p is not None:
        with np.errstate(divide="ignore", invalid="ignore"):
            plogp = np.where(p > 0, p * np.log(p), 0.0)  # 0 log 0 = 0
        entropy_sum = float(-plogp.sum())
        mass_sum = float(np.take_along_axis(p, ids, axis=1).sum())
    factors = sorted({float(f) for f in capacity_factors})
    capacity = tuple(simulate_capacity(ids, num_experts, f) for f in factors) if ids.shape[0] else tuple(
        CapacityCounts(f, 0, 0, 0) for f in factors)
    return LayerRecord(layer=layer, counts=tuple(int(c) for c in counts), tokens=int(ids.shape[0]),
                       entropy_sum=entropy_sum, mass_sum=mass_sum, capacity=capacity)


def response_record(layers: Sequence[tuple[Any, Any | None]], *, num_experts: int, top_k: int, source: str = "",
                    capacity_factors: Sequence[float] = DEFAULT_CAPACITY_FACTORS) -> ResponseRecord:
    """One response: `layers[i] = (top_k_ids, probs_or_None)` for MoE layer i, all with the same tokens."""
    if num_experts < 2 or not 1 <= top_k <= num_experts:
        raise ValueError(f"need E >= 2 and 1 <= k <= E, got E={num_experts}, k={top_k}")
    if not layers:
        raise ValueError("a response record needs at least one MoE layer")
    recs = tuple(layer_record(i, ids, p, num_experts=num_experts, top_k=top_k, capacity_factors=capacity_factors)
                 for i, (ids, p) in enumerate(layers))
    tokens = {r.tokens for r in recs}
    if len(tokens) != 1:
        raise ValueError(f"every layer of a response must see the same tokens, got counts {sorted(tokens)}")
    return ResponseRecord(num_experts=num_experts, top_k=top_k, tokens=tokens.pop(), layers=recs, source=source)


# ----------------------------------------------------------------------------- aggregation


def _sum_optional(values: Iterable[float | None]) -> float | None:
    values = list(values)
    return None if any(v is None for v in values) else float(sum(values))


def merge_records(records: Sequence[ResponseRecord], source: str = "") -> ResponseRecord:
    """Sum records into one pooled record (counts, tokens, sums; dropped counts for factors all records have)."""
    if not records:
        raise ValueError("nothing to merge")
    first = records[0]
    for r in records:
        if (r.num_experts, r.top_k, len(r.layers)) != (first.num_experts, first.top_k, len(first.layers)):
            raise ValueError("records differ in E, k or number of MoE layers; aggregate one model at a time")
    factors = sorted(set.intersection(*({c.factor for layer in r.layers for c in layer.capacity} for r in records)))
    layers = []
    for i, base in enumerate(first.layers):
        group = [r.layers[i] for r in records]
        if any(layer.layer != base.layer for layer in group):
            raise ValueError(f"records disagree on the index of MoE layer {i}")
        counts = np.sum([layer.counts for layer in group], axis=0)
        capacity = []
        for f in factors:
            hits = [next(c for c in layer.capacity if c.factor == f) for layer in group]
            capacity.append(CapacityCounts(f, -1, sum(c.dropped_slots for c in hits), sum(c.dropped_tokens for c in hits)))
        layers.append(LayerRecord(
            layer=base.layer, counts=tuple(int(c) for c in counts), tokens=sum(layer.tokens for layer in group),
            entropy_sum=_sum_optional(layer.entropy_sum for layer in group),
            mass_sum=_sum_optional(layer.mass_sum for layer in group), capacity=tuple(capacity),
        ))
    return ResponseRecord(num_experts=first.num_experts, top_k=first.top_k, tokens=sum(r.tokens for r in records),
                          layers=tuple(layers), source=source)


@dataclass(frozen=True)
class PerLayer:
    """A statistic per MoE layer, and its mean over layers (None when undefined, e.g. no probabilities)."""

    layers: tuple[float | None, ...]
    mean: float | None

    @classmethod
    def of(cls, values: Sequence[float | None]) -> "PerLayer":
        values = tuple(values)
        defined = [v for v in values if v is not None]
        mean = float(np.mean(defined)) if defined and len(defined) == len(values) else None
        return cls(values, mean)

    def to_json(self) -> dict[str, Any]:
        return {"layers": list(self.layers), "mean": self.mean}


@dataclass(frozen=True)
class CapacityStats:
    factor: float
    assignment_overflow_rate: PerLayer  # dropped slots / all slots
    dropped_token_rate: PerLayer  # tokens with all k slots dropped / tokens


@dataclass(frozen=True)
class GroupStats:
    """Routing statistics of a group of responses (or one response); see docs/experts.md."""

    source: str
    responses: int
    tokens: int
    num_experts: int
    top_k: int
    utilization: tuple[tuple[float, ...], ...]  # per layer: E shares summing to 1
    utilization_mean: tuple[float, ...]  # mean over layers of the per-layer shares
    router_entropy: PerLayer  # mean_t H(p_t) / log E; None without probabilities
    utilization_entropy: PerLayer  # H(u) / log E
    top_k_mass: PerLayer  # mean_t sum of the chosen experts' probabilities; None without probabilities
    imbalance_cv: PerLayer  # std(counts) / mean(counts), population std
    max_over_mean: PerLayer  # max(counts) / mean(counts)
    capacity: tuple[CapacityStats, ...] = field(default_factory=tuple)

    def capacity_at(self, factor: float) -> CapacityStats:
        for c in self.capacity:
            if c.factor == float(factor):
                return c
        raise KeyError(f"no capacity simulation at factor {factor}; have {[c.factor for c in self.capacity]}")

    def to_json(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "responses": self.responses,
            "tokens": self.tokens,
            "num_experts": self.num_experts,
            "top_k": self.top_k,
            "utilization": {"layers": [list(u) for u in self.utilization], "mean": list(self.utilization_mean)},
            "router_entropy": self.router_entropy.to_json(),
            "utilization_entropy": self.utilization_entropy.to_json(),
            "top_k_mass": self.top_k_mass.to_json(),
            "imbalance_cv": self.imbalance_cv.to_json(),
            "max_over_mean": self.max_over_mean.to_json(),
            "capacity": {
                factor_key(c.factor): {"assignment_overflow_rate": c.assignment_overflow_rate.to_json(),
                                       "dropped_token_rate": c.dropped_token_rate.to_json()}
                for c in self.capacity
            },
        }


def factor_key(factor: float) -> str:
    """JSON key of a capacity factor: `1.0`, `1.25`, `2.0`."""
    return repr(float(factor))


def normalized_entropy(shares: np.ndarray) -> float:
    """H(shares) / log E for a distribution over E >= 2 outcomes (0 log 0 = 0)."""
    s = np.asarray(shares, dtype=np.float64)
    nz = s[s > 0]
    return float(-(nz * np.log(nz)).sum() / math.log(s.size))


def aggregate(records: Sequence[ResponseRecord], source: str = "") -> GroupStats:
    """Group statistics from per-response records, pooled by summing (see the module docstring)."""
    pooled = merge_records(records, source=source)
    E, k = pooled.num_experts, pooled.top_k
    log_e = math.log(E)
    util, cv, mom, h_util, h_router, mass = [], [], [], [], [], []
    if pooled.tokens == 0:
        raise ValueError("the group has no tokens; its routing statistics are undefined")
    for layer in pooled.layers:
        counts = np.asarray(layer.counts, dtype=np.float64)
        total = counts.sum()
        shares = counts / total
        util.append(tuple(float(s) for s in shares))
        mean = counts.mean()
        cv.append(float(counts.std() / mean))
        mom.append(float(counts.max() / mean))
        h_util.append(normalized_entropy(shares))
        h_router.append(None if layer.entropy_sum is None else layer.entropy_sum / layer.tokens / log_e)
        mass.append(None if layer.mass_sum is None else layer.mass_sum / layer.tokens)
    capacity = []
    for i, factor in enumerate(c.factor for c in (pooled.layers[0].capacity if pooled.layers else ())):
        overflow, dropped = [], []
        for layer in pooled.layers:
            c = layer.capacity[i]
            overflow.append(c.dropped_slots / (layer.tokens * k))
            dropped.append(c.dropped_tokens / layer.tokens)
        capacity.append(CapacityStats(factor, PerLayer.of(overflow), PerLayer.of(dropped)))
    util_mean = tuple(float(x) for x in np.mean(np.asarray(util, dtype=np.float64), axis=0))
    return GroupStats(
        source=source, responses=len(records), tokens=pooled.tokens, num_experts=E, top_k=k,
        utilization=tuple(util), utilization_mean=util_mean,
        router_entropy=PerLayer.of(h_router), utilization_entropy=PerLayer.of(h_util), top_k_mass=PerLayer.of(mass),
        imbalance_cv=PerLayer.of(cv), max_over_mean=PerLayer.of(mom), capacity=tuple(capacity),
    )


def response_stats(record: ResponseRecord) -> GroupStats:
    """The statistics of one response: the group of that response alone."""
    return aggregate([record], source=record.source)
