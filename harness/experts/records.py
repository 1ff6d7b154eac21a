"""`expert_stats` rows <-> ResponseRecords, and per-cohort group statistics (pure: rows in, stats out)."""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime
from typing import Any, Iterable, Sequence

from harness.experts.stats import CapacityCounts, GroupStats, LayerRecord, ResponseRecord, aggregate

Key = tuple[str, str, int, str]  # (prompt_id, route, sample, source)


def to_rows(run_id: str, prompt_id: str, route: str, sample: int, source: str, record: ResponseRecord,
            recorded_at: datetime | None = None) -> list[dict[str, Any]]:
    """One `expert_stats` row per layer of one response."""
    return [{
        "run_id": run_id, "prompt_id": prompt_id, "route": route, "sample": sample, "source": source,
        "layer": layer.layer, "num_experts": record.num_experts, "top_k": record.top_k, "tokens": layer.tokens,
        "counts": list(layer.counts), "entropy_sum": layer.entropy_sum, "mass_sum": layer.mass_sum,
        "capacity_factors": [c.factor for c in layer.capacity],
        "dropped_slots": [c.dropped_slots for c in layer.capacity],
        "dropped_tokens": [c.dropped_tokens for c in layer.capacity],
        "recorded_at": recorded_at,
    } for layer in record.layers]


def from_rows(rows: Iterable[dict[str, Any]]) -> dict[Key, ResponseRecord]:
    """Rows (as `to_rows` writes them) back to one ResponseRecord per response."""
    layers: dict[Key, list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        layers[(r["prompt_id"], r["route"], int(r["sample"]), r["source"])].append(r)
    out: dict[Key, ResponseRecord] = {}
    for key, group in layers.items():
        group.sort(key=lambda r: int(r["layer"]))
        first = group[0]
        out[key] = ResponseRecord(
            num_experts=int(first["num_experts"]), top_k=int(first["top_k"]), tokens=int(first["tokens"]),
            layers=tuple(LayerRecord(
                layer=int(r["layer"]), counts=tuple(int(c) for c in r["counts"]), tokens=int(r["tokens"]),
                entropy_sum=_float(r["entropy_sum"]), mass_sum=_float(r["mass_sum"]),
                capacity=tuple(CapacityCounts(float(f), -1, int(s), int(t))
                               for f, s, t in zip(r["capacity_factors"] or (), r["dropped_slots"] or (),
                                                  r["dropped_tokens"] or ())),
            ) for r in group),
            source=key[3],
        )
    return out


def _float(value: Any) -> float | None:
    return None if value is None or value != value else float(value)


def cohort_stats(records: dict[Key, ResponseRecord], cohort_of: dict[str, str]) -> dict[tuple[str, str, str], GroupStats]:
    """(route, cohort, source) -> statistics, pooled over the cohort's responses; cohort '(all)' too."""
    groups: dict[tuple[str, str, str], list[ResponseRecord]] = defaultdict(list)
    for (prompt_id, route, _sample, source), rec in records.items():
        groups[(route, cohort_of.get(prompt_id, "default"), source)].append(rec)
        groups[(route, "(all)", source)].append(rec)
    return {key: aggregate(recs, source=key[2]) for key, recs in sorted(groups.items())}


def rest_stats(records: dict[Key, ResponseRecord], cohort_of: dict[str, str], route: str, cohort: str,
               source: str) -> GroupStats | None:
    """The route's other cohorts pooled: what a cohort's routing is compared against."""
    recs: Sequence[ResponseRecord] = [rec for (p, r, _s, src), rec in records.items()
                                      if r == route and src == source and cohort_of.get(p, "default") != cohort]
    return aggregate(recs, source=source) if recs else None
