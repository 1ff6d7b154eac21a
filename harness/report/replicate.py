"""Do two runs of one comparison agree? Compares the verdicts of two reports cell by cell.

A serving verdict flagged (regression or improvement) in either run must have the same sign of
difference in the other run, or be inconclusive there; quality verdicts must be identical
(temperature 0: the same answers). Usage:

    python -m harness.report.replicate reports/RUN_A/report.json reports/RUN_B/report.json
    python -m harness.report.replicate --db traces/routecheck.duckdb RUN_A RUN_B
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

FLAGS = ("regression", "improvement")


@dataclass(frozen=True)
class Cell:
    candidate: str
    scope: str
    cohort: str
    metric: str
    kind: str
    verdict_a: str
    diff_a: float
    verdict_b: str
    diff_b: float

    @property
    def agreement(self) -> str:
        if self.kind == "quality":
            return "same" if self.verdict_a == self.verdict_b else "differs"
        if self.verdict_a == self.verdict_b:
            return "same"
        for mine, other, d_mine, d_other in ((self.verdict_a, self.verdict_b, self.diff_a, self.diff_b),
                                             (self.verdict_b, self.verdict_a, self.diff_b, self.diff_a)):
            if mine in FLAGS and other != "inconclusive" and _sign(d_other) != _sign(d_mine):
                return "sign flip"
        return "consistent"

    @property
    def ok(self) -> bool:
        return self.agreement in ("same", "consistent")


def _sign(x: float | None) -> int:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return 0
    return (x > 0) - (x < 0)


def compare_reports(a: dict[str, Any], b: dict[str, Any]) -> list[Cell]:
    """Cells present in both reports (report JSON dicts), in report A's order."""
    key = ("candidate", "scope", "cohort", "metric")
    other = {tuple(c[k] for k in key): c for c in b["comparisons"]}
    cells = []
    for c in a["comparisons"]:
        d = other.get(tuple(c[k] for k in key))
        if d is None:
            continue
        cells.append(Cell(c["candidate"], c["scope"], c["cohort"], c["metric"], c["kind"], c["verdict"],
                          _num(c.get("diff")), d["verdict"], _num(d.get("diff"))))
    return cells


def _num(x: Any) -> float:
    return float("nan") if x is None else float(x)


def replicates(cells: list[Cell]) -> bool:
    return all(c.ok for c in cells)


def table(cells: list[Cell], only_flagged: bool = False) -> str:
    """Markdown table; `only_flagged`: serving cells flagged in either run and every quality cell that differs."""
    rows = [c for c in cells if not only_flagged or c.verdict_a in FLAGS or c.verdict_b in FLAGS or not c.ok]
    out = ["| candidate | cohort | metric | run A | diff A | run B | diff B | agreement |", "|---|---|---|---|---|---|---|---|"]
    for c in rows:
        out.append(f"| {c.candidate} | {c.cohort} | {c.metric} | {c.verdict_a} | {c.diff_a:.4g} | {c.verdict_b} | "
                   f"{c.diff_b:.4g} | {c.agreement} |")
    return "\n".join(out)


def counts(cells: list[Cell]) -> dict[str, int]:
    flagged = {k: sum(1 for c in cells if c.kind == k and (c.verdict_a in FLAGS or c.verdict_b in FLAGS))
               for k in ("quality", "serving")}
    return {"cells": len(cells), "flagged_quality": flagged["quality"], "flagged_serving": flagged["serving"],
            "sign_flips": sum(1 for c in cells if c.agreement == "sign flip"),
            "quality_differs": sum(1 for c in cells if c.agreement == "differs")}


def _load(args: argparse.Namespace) -> tuple[dict[str, Any], dict[str, Any]]:
    if args.db:
        from harness.report.build import make_report

        return make_report(args.db, args.a).to_dict(), make_report(args.db, args.b).to_dict()
    return json.loads(Path(args.a).read_text()), json.loads(Path(args.b).read_text())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("a", help="report.json of run A (or a run id with --db)")
    p.add_argument("b", help="report.json of run B (or a run id with --db)")
    p.add_argument("--db", help="build both reports from this store instead")
    p.add_argument("--all", action="store_true", help="every cell, not only flagged or differing ones")
    args = p.parse_args(argv)
    cells = compare_reports(*_load(args))
    print(table(cells, only_flagged=not args.all))
    print(json.dumps(counts(cells)))
    ok = replicates(cells)
    print("replicates" if ok else "DOES NOT REPLICATE")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
