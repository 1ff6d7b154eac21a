"""`routecheck score RUN`: run the configured evaluators over a run's responses."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from evaluators import EvaluatorError, resolve_specs
from evaluators.config import DEFAULT_EVALUATORS
from harness.cli.console import fail, out, term
from harness.score import ScoreSummary, score_run
from harness.store import DEFAULT_DB, StoreError


def print_summary(summary: ScoreSummary, console: Console | None = None) -> None:
    console = console or out
    table = Table(title=term(f"scores for run {summary.run_id} ({summary.n_responses} responses)"))
    for col in ("evaluator", "route", "applicable", "mean score", "pass rate"):
        table.add_column(col, justify="right" if col not in ("evaluator", "route") else "left")
    idle = [name for name, routes in summary.per_evaluator.items() if not any(s["applicable"] for s in routes.values())]
    for name, routes in summary.per_evaluator.items():
        if name in idle and len(idle) < len(summary.per_evaluator):
            continue
        for route, s in routes.items():
            fmt = lambda v: "-" if v is None else f"{v:.3f}"  # noqa: E731
            table.add_row(term(name), term(route), f"{s['applicable']}/{s['n']}", fmt(s["mean_score"]), fmt(s["pass_rate"]))
    console.print(table)
    if idle and len(idle) < len(summary.per_evaluator):
        console.print(Text(f"not applicable to any response of this run: {', '.join(idle)}", style="dim"))


def score_command(
    run_id: Annotated[str, typer.Argument(help="Run id (or a unique prefix), or `latest`.", metavar="RUN_ID")],
    db: Annotated[Path, typer.Option("--db", help="DuckDB store.", metavar="PATH")] = DEFAULT_DB,
    evaluators: Annotated[
        Optional[list[str]],
        typer.Option("--evaluator", "-e", metavar="NAME[:KEY=VALUE,...]", help=f"Evaluator name, optionally name:key=value,... (repeatable); default: {', '.join(DEFAULT_EVALUATORS)}."),
    ] = None,
    config: Annotated[Optional[Path], typer.Option("--config", help="evaluators.yaml with evaluators and their options.", metavar="PATH")] = None,
) -> None:
    """Score a run's responses (RUN_ID or `latest`) with the configured evaluators; writes `scores`."""
    try:
        specs = resolve_specs(evaluators, config)
        if not Path(db).exists():
            raise StoreError(f"{db}: no routecheck store here (run `routecheck mirror` first or pass --db)")
        summary = score_run(db, run_id, specs, progress=True)
    except (EvaluatorError, LookupError, StoreError, ValueError) as e:
        fail(str(e))
    print_summary(summary)
