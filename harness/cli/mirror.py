"""`routecheck mirror`: send every prompt to all routes at once and record responses and spans."""

from __future__ import annotations

import time
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Optional

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.text import Text

from harness.cli.console import err, fail, out, visible
from harness.cli.runs import print_route_summary
from harness.config import ConfigError, RoutesFile, load_routes
from harness.corpus import check_corpus
from harness.mirror.order import DEFAULT_WARMUP, ORDERS
from harness.serving.engines import engine_named
from harness.store import DEFAULT_DB, StoreError, connect
from harness.store.views import resolve_run_id

if TYPE_CHECKING:
    from harness.mirror.runner import MirrorSummary

OrderChoice = Enum("OrderChoice", {o: o for o in ORDERS}, type=str)  # typer lists the choices in --help

DB_OPTION = typer.Option(DEFAULT_DB, "--db", help="DuckDB store.")
EXIT_RUN_FAILED = 3  # the run could not store what it measured (not a regression, not bad input)


def check_engines(routes_file: RoutesFile, path: Path) -> None:
    """Every serve: route names a known engine: said with the file and key, before anything starts."""
    for i, r in enumerate(routes_file.routes):
        if r.serve is not None:
            engine_named(r.serve.engine, f"{path}: routes[{i}].serve.engine (route {r.name!r})")


def mirror(
    corpus: Path = typer.Option(Path("examples/corpus.jsonl"), "--corpus", "-c", help="Prompt corpus: .jsonl, .csv or .parquet."),
    routes: Path = typer.Option(Path("routes.yaml"), "--routes", "-r", help="Routes file."),
    db: Path = DB_OPTION,
    samples: int = typer.Option(1, "--samples", "-k", min=1, help="Calls per prompt and route."),
    limit: Optional[int] = typer.Option(None, "--limit", min=1, help="Only the first N prompts (after --cohort)."),
    cohort: Optional[list[str]] = typer.Option(None, "--cohort", help="Only these cohorts (repeatable)."),
    skip_invalid: bool = typer.Option(False, "--skip-invalid", help="Skip and count bad corpus rows instead of stopping."),
    rate: Optional[float] = typer.Option(None, "--rate", min=0.001, help="Global cap on request starts per second."),
    otlp_endpoint: Optional[str] = typer.Option(None, "--otlp-endpoint", help="Also export spans over OTLP/HTTP (default: $OTEL_EXPORTER_OTLP_ENDPOINT)."),
    resume: Optional[str] = typer.Option(None, "--resume", help="Finish an interrupted run: only calls without a successful row are sent."),
    order: OrderChoice = typer.Option("shuffle", "--order",
                              help="Sending order: shuffle (seeded, default), file, or interleave-cohorts (cohorts in turn)."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Shuffle seed (default: a fresh one, recorded in the run)."),
    warmup: int = typer.Option(DEFAULT_WARMUP, "--warmup", min=0,
                               help="Warm-up calls per route before measurement: stored as warm-up, left out of every figure."),
    repeat: int = typer.Option(1, "--repeat", min=1,
                               help="Runs back to back on the same servers (repeated A/A calibration, docs/report.md)."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Live progress per route."),
) -> None:
    """Send every prompt to all routes at once and record responses and spans."""
    # The runner (OTel, the HTTP client) is imported when a run starts, not by `routecheck --help`.
    from harness.mirror.runner import MirrorOptions, RouteTally, RunFailed, new_run_id, run_mirrors

    # Every input is checked before the run row exists and before a request is sent: routes.yaml,
    # the api keys it names, every corpus row, the store and the run id.
    try:
        routes_file = load_routes(routes)
        routes_file.check_api_keys(routes)
        check_engines(routes_file, routes)
        # A resumed run keeps its own --skip-invalid (restored from the store): only file-level problems here.
        stats = check_corpus(corpus, skip_invalid=skip_invalid or bool(resume), cohorts=cohort)
        with connect(db) as con:  # a busy, foreign or damaged store fails here, before the progress bars
            if resume:
                resume = resolve_run_id(con, resume)
    except (ConfigError, LookupError, StoreError) as e:
        fail(str(e))
    opts = MirrorOptions(corpus=corpus, db=db, samples=samples, limit=limit, cohorts=cohort or None, skip_invalid=skip_invalid,
                         rate=rate, otlp_endpoint=otlp_endpoint, run_id=resume or new_run_id(), resume=bool(resume),
                         order=order.value, seed=seed, warmup=warmup)
    rows = sum(stats.by_cohort.get(c, 0) for c in set(cohort)) if cohort else stats.read
    total = None if resume else min(rows, limit or rows) * samples
    bars = Progress(TextColumn("{task.description:<20}", markup=False), BarColumn(), MofNCompleteColumn(),
                    TextColumn("errors {task.fields[errors]}"), TextColumn("{task.fields[tps]:>8.1f} tok/s"),
                    TimeElapsedColumn(), console=err, disable=not progress)
    tasks = {r.name: bars.add_task(visible(r.name), total=total, errors=0, tps=0.0) for r in routes_file.routes}
    t0 = time.monotonic()

    def on_progress(route: str, tally: RouteTally) -> None:
        bars.update(tasks[route], completed=tally.done, errors=tally.errors, tps=tally.output_tokens / max(time.monotonic() - t0, 1e-9))

    try:
        with bars:
            summaries = run_mirrors(routes_file, opts, repeat, on_progress=on_progress)
    except ConfigError as e:
        fail(str(e))
    except RunFailed as e:
        _print_summary(e.summary)
        fail(f"{e}; finish it with: routecheck mirror --resume {opts.run_id} --corpus {corpus} --routes {routes}", EXIT_RUN_FAILED)
    except KeyboardInterrupt:
        err.print(visible(f"interrupted; finish it with: routecheck mirror --resume {opts.run_id} --corpus {corpus} --routes {routes}"),
                  markup=False, highlight=False)
        raise typer.Exit(130)
    for summary in summaries:
        _print_summary(summary)
        print_route_summary(db, summary.run_id)


def _print_summary(summary: MirrorSummary) -> None:
    out.print(Text.assemble("run ", (visible(summary.run_id), "bold"), f": {summary.status}, {summary.prompts} prompts, {summary.calls} calls, "
                  f"{summary.rows_written} responses written in {summary.duration_s:.1f} s"
                  + (f", {summary.skipped_rows} invalid rows skipped" if summary.skipped_rows else "")
                  + (f", {summary.resumed_skipped_calls} calls already done" if summary.resumed_skipped_calls else "")
                  + (f", {summary.spans_restored} call spans restored" if summary.spans_restored else "")))
    for route, n in summary.experts_live.items():
        out.print(Text(f"live expert capture: {n} responses of route {visible(route)} have routing from the server "
                       f"(routecheck experts {visible(summary.run_id)} --route {visible(route)})"))
    if summary.rows_repaired or summary.rows_rejected:
        err.print(Text(f"warning: {summary.rows_repaired} rows stored with values the store could not take set to NULL "
                       f"(marked), {summary.rows_rejected} rows not stored; for example: "
                       + "; ".join(visible(p) for p in summary.store_problems[:3])))


