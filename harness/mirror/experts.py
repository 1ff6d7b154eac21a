"""The mirror's side of server-reported MoE routing, per route: returned `routed_experts` ids
(`return_routed_experts: true`) are decoded at the end of each call and stored as `expert_stats`
rows with source `returned`; live capture (`expert_capture: true`) is read from the server's spool
for the call span's attributes, and stored once at the end of the run (`collect_live`), when every
request id can be joined to its response row."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import duckdb

from harness.config import RouteConfig
from harness.experts.capture import Spool, decode_routed_experts, ids_record, span_figures
from harness.experts.records import to_rows
from harness.experts.run import store_live
from harness.experts.stats import DEFAULT_CAPACITY_FACTORS, merge_records
from harness.mirror.openai_stream import CallResult


class RouteExperts:
    def __init__(self, route: RouteConfig):
        self.route = route
        factors = set(DEFAULT_CAPACITY_FACTORS)
        if route.capacity_factor:
            factors.add(float(route.capacity_factor))
        self.capacity_factors = tuple(sorted(factors))
        self.spool: Spool | None = None

    def attach_spool(self, spool_dir: Path) -> None:
        self.spool = Spool(spool_dir)

    def span_attributes(self, result: CallResult) -> dict[str, Any]:
        """The call's measured routing (`routecheck.experts.*`); keeps the record on the result."""
        record = None
        if result.routed_experts is not None and self.route.return_routed_experts:
            try:
                ids = decode_routed_experts(result.routed_experts)
                record = ids_record(ids, int(self.route.num_experts or 0), capacity_factors=self.capacity_factors,
                                    source="returned")
            except ValueError:
                result.flags.append("routed_experts_invalid")
        elif self.spool is not None and result.response_id:
            self.spool.poll()
            record = self.spool.record(result.response_id, self.capacity_factors)
        result.expert_record = record
        return span_figures([record]) if record is not None else {}

    def returned_rows(self, run_id: str, prompt_id: str, sample: int, results: Sequence[CallResult]) -> list[dict[str, Any]]:
        """`expert_stats` rows of one response from its calls' returned ids (a trajectory's steps are summed)."""
        recs = [r.expert_record for r in results if r.expert_record is not None and r.expert_record.source == "returned"]
        if not recs:
            return []
        return to_rows(run_id, prompt_id, self.route.name, sample, "returned", merge_records(recs, source="returned"))


def collect_live(con: duckdb.DuckDBPyConnection, run_id: str, experts: RouteExperts) -> int:
    """Store the route's live-captured routing of the run; returns the responses stored."""
    assert experts.spool is not None
    experts.spool.poll()
    return store_live(con, run_id, experts.route.name, experts.spool, experts.capacity_factors)
