"""`routecheck experts RUN`: MoE routing statistics per (route, cohort, source), optionally probing first."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from harness.cli.console import err, fail, fmt, out, term, visible
from harness.experts.stats import DEFAULT_CAPACITY_FACTORS
from harness.store import DEFAULT_DB, StoreError, connect
from harness.store.views import resolve_run_id


def _factors(text: str) -> tuple[float, ...]:
    try:
        factors = tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError:
        fail(f"--capacity-factors: expected numbers separated by commas, got {text!r}")
    if not factors or any(f <= 0 for f in factors):
        fail(f"--capacity-factors: expected positive numbers, got {text!r}")
    return factors


def experts_command(
    run_id: str = typer.Argument(..., help="Run id, a unique prefix, or 'latest'.", metavar="RUN_ID"),
    route: Optional[str] = typer.Option(None, "--route", help="Only this route (default: every MoE route)."),
    probe: bool = typer.Option(False, "--probe", help="Replay the responses through the checkpoint first (offline probe)."),
    model: Optional[str] = typer.Option(None, "--model", help="Checkpoint directory for the probe (default: the route's serve.model); implies --probe.", metavar="DIR"),
    capacity_factors: str = typer.Option(",".join(map(str, DEFAULT_CAPACITY_FACTORS)), "--capacity-factors", help="Capacity factors of the what-if simulation.", metavar="LIST"),
    batch_size: int = typer.Option(8, "--batch-size", min=1, help="Sequences per probe forward pass."),
    as_json: bool = typer.Option(False, "--json", help="Print the statistics as JSON."),
    db: Path = typer.Option(DEFAULT_DB, "--db", help="DuckDB store.", metavar="PATH"),
) -> None:
    """Expert utilisation, router entropy, load imbalance and capacity overflow per cohort (docs/experts.md)."""
    from harness.experts.run import ExpertsError, load_cohort_stats, probe_run, probe_targets  # pandas, the store views

    factors = _factors(capacity_factors)
    try:
        con = connect(db, read_only=not (probe or model))
    except StoreError as e:
        fail(str(e))
    with con:
        try:
            run_id = resolve_run_id(con, run_id)
            if probe or model:
                for name, path in probe_targets(con, run_id, route, model):
                    with Progress(TextColumn(f"probe {visible(name)}", markup=False), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                                  console=err) as bar:
                        task = bar.add_task("probe", total=None)
                        summary = probe_run(con, run_id, name, path, factors, batch_size,
                                            progress=lambda done, total: bar.update(task, completed=done, total=total))
                    err.print(term(f"probed {summary.responses} responses of {name} ({summary.tokens} tokens) in "
                                   f"{summary.seconds:.1f} s: {summary.tokens_per_s:,.0f} tokens/s"))
            stats = load_cohort_stats(con, run_id, route)
        except (LookupError, ExpertsError) as e:
            fail(str(e))
    if not stats:
        fail(f"run {run_id} has no expert statistics; run `routecheck experts {run_id} --probe` "
             "(or mirror with expert capture on)")
    if as_json:
        out.print_json(json.dumps([{"route": r, "cohort": c, **s.to_json()} for (r, c, _src), s in stats.items()]))
        return
    factor = 1.25 if 1.25 in factors else factors[0]
    table = Table(title=term(f"expert routing in run {run_id} (layer means; capacity what-if at factor {factor:g})"))
    for col in ("route", "cohort", "source", "responses", "tokens", "utilisation entropy", "router entropy",
                "top-k mass", "imbalance CV", "max/mean", "overflow", "dropped tokens"):
        table.add_column(col, justify="left" if col in ("route", "cohort", "source") else "right")
    for (r, c, src), s in stats.items():
        cap = s.capacity_at(factor) if any(x.factor == factor for x in s.capacity) else None
        table.add_row(term(r), term(c), term(src), str(s.responses), f"{s.tokens:,}", fmt(s.utilization_entropy.mean),
                      fmt(s.router_entropy.mean), fmt(s.top_k_mass.mean), fmt(s.imbalance_cv.mean), fmt(s.max_over_mean.mean),
                      fmt(cap.assignment_overflow_rate.mean if cap else None), fmt(cap.dropped_token_rate.mean if cap else None))
    out.print(table)
