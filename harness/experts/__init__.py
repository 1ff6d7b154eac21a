"""Expert-routing statistics of MoE routes (`stats`, pure numpy) and an offline probe (`probe`, torch)."""

from harness.experts.stats import (
    DEFAULT_CAPACITY_FACTORS,
    CapacityCounts,
    CapacityStats,
    GroupStats,
    LayerRecord,
    PerLayer,
    ResponseRecord,
    aggregate,
    capacity_per_expert,
    layer_record,
    merge_records,
    response_record,
    response_stats,
    simulate_capacity,
)

__all__ = [
    "DEFAULT_CAPACITY_FACTORS", "CapacityCounts", "CapacityStats", "GroupStats", "LayerRecord", "PerLayer",
    "ResponseRecord", "aggregate", "capacity_per_expert", "layer_record", "merge_records", "response_record",
    "response_stats", "simulate_capacity",
]
