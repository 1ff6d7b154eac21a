"""The `routecheck` command line: one sub-command per stage of the data flow."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from harness import __version__
from harness.config import ConfigError, load_routes
from harness.runner import MirrorOptions, RouteTally, new_run_id, run_mirror
from harness.store import DEFAULT_DB, RESPONSE_TIMINGS_SQL, connect
from harness.summary import list_runs, resolve_run_id, route_summary

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Mirror, trace, score, report and gate LLM routes.")
# Wide when piped (CI logs), so tables are not squeezed to 80 columns.
console = Console(soft_wrap=True, width=None if sys.stdout.isatty() else 160)
err = Console(stderr=True, soft_wrap=True)

DB_OPTION = typer.Option(DEFAULT_DB, "--db", help="DuckDB store.")


def fail(message: str, code: int = 2) -> None:
    err.print(f"[bold red]error:[/] {message}", highlight=False, markup=True)
    raise typer.Exit(code)


@app.callback()
def _main(version: bool = typer.Option(False, "--version", help="Print the version and exit.", is_eager=True)) -> None:
    if version:
        console.print(__version__)
        raise typer.Exit()


def _count_rows(corpus: Path) -> int | None:
    """A quick line count for the progress bar; None where a count is not cheap."""
    if corpus.suffix.lower() not in (".jsonl", ".ndjson", ".csv") or not corpus.exists():
        return None
    with open(corpus, "rb") as f:
        n = sum(1 for line in f if line.strip())
    return n - 1 if corpus.suffix.lower() == ".csv" else n


@app.command()
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
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Live progress per route."),
) -> None:
    """Send every prompt to all routes at once and record responses and spans."""
    try:
        routes_file = load_routes(routes)
        if resume:
            with connect(db) as con:
                resume = resolve_run_id(con, resume)
    except (ConfigError, LookupError) as e:
        fail(str(e))
    opts = MirrorOptions(corpus=corpus, db=db, samples=samples, limit=limit, cohorts=cohort or None, skip_invalid=skip_invalid,
                         rate=rate, otlp_endpoint=otlp_endpoint, run_id=resume or new_run_id(), resume=bool(resume))
    total = _count_rows(corpus)
    if total is not None and not cohort:
        total = min(total, limit or total) * samples
    else:
        total = None
    bars = Progress(TextColumn("{task.description:<20}"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("errors {task.fields[errors]}"), TextColumn("{task.fields[tps]:>8.1f} tok/s"),
                    TimeElapsedColumn(), console=err, disable=not progress)
    tasks = {r.name: bars.add_task(r.name, total=total, errors=0, tps=0.0) for r in routes_file.routes}
    t0 = time.monotonic()

    def on_progress(route: str, tally: RouteTally) -> None:
        bars.update(tasks[route], completed=tally.done, errors=tally.errors, tps=tally.output_tokens / max(time.monotonic() - t0, 1e-9))

    try:
        with bars:
            summary = run_mirror(routes_file, opts, on_progress=on_progress)
    except ConfigError as e:
        fail(str(e))
    except KeyboardInterrupt:
        err.print(f"interrupted; finish it with: routecheck mirror --resume {opts.run_id} --corpus {corpus} --routes {routes}")
        raise typer.Exit(130)
    console.print(f"run [bold]{summary.run_id}[/]: {summary.status}, {summary.prompts} prompts, {summary.calls} calls "
                  f"in {summary.duration_s:.1f} s" + (f", {summary.skipped_rows} invalid rows skipped" if summary.skipped_rows else "")
                  + (f", {summary.resumed_skipped_calls} calls already done" if summary.resumed_skipped_calls else ""))
    _print_route_summary(db, summary.run_id)


def _print_route_summary(db: Path, run_id: str) -> None:
    with connect(db, read_only=True) as con:
        df = route_summary(con, run_id)
    table = Table(title=f"routes in run {run_id}")
    for col in df.columns:
        table.add_column(col, justify="left" if col in ("route", "role") else "right")
    for row in df.itertuples(index=False):
        table.add_row(*(_fmt(v) for v in row))
    console.print(table)


def _print_server_view(db: Path, run_id: str) -> None:
    """What the vLLM servers saw: Prometheus deltas over the run and per-request server spans."""
    from harness.server_metrics import server_summary

    with connect(db, read_only=True) as con:
        metrics = server_summary(con, run_id)
        timings = con.execute(f"""
            SELECT route, count(server_queue_s) AS server_spans,
                   avg(latency_s) AS client_latency_s, avg(server_e2e_s) AS server_e2e_s,
                   avg(server_queue_s) AS queue_s, avg(server_prefill_s) AS prefill_s, avg(server_decode_s) AS decode_s
            FROM ({RESPONSE_TIMINGS_SQL}) WHERE run_id = ? GROUP BY route ORDER BY route""", [run_id]).df()
    for title, df in (("server metrics (Prometheus, after - before)", metrics), ("server spans (vLLM llm_request), means", timings)):
        if df.empty or (title.startswith("server spans") and not df.server_spans.any()):
            console.print(f"{title}: none recorded (only serve: routes are scraped and traced)")
            continue
        table = Table(title=title)
        for col in df.columns:
            table.add_column(col, justify="left" if col == "route" else "right")
        for row in df.itertuples(index=False):
            table.add_row(*(_fmt(v) for v in row))
        console.print(table)


def _fmt(value: object) -> str:
    if value is None or value != value:  # None or NaN
        return "-"
    if isinstance(value, float) and value.is_integer() and abs(value) >= 1:
        return f"{int(value):,}"
    if isinstance(value, float):
        return f"{value:.3f}" if abs(value) < 1000 else f"{value:,.0f}"
    return str(value)


@app.command()
def runs(
    db: Path = DB_OPTION,
    detail: Optional[str] = typer.Option(None, "--detail", help="Per-route figures of one run (id, prefix or 'latest')."),
) -> None:
    """List runs with counts, errors and duration."""
    try:
        con = connect(db, read_only=True)
    except FileNotFoundError as e:
        fail(str(e))
    with con:
        if detail:
            try:
                run_id = resolve_run_id(con, detail)
            except LookupError as e:
                fail(str(e))
        else:
            df = list_runs(con)
    if detail:
        _print_route_summary(db, run_id)
        _print_server_view(db, run_id)
        return
    table = Table(title=f"runs in {db}")
    for col in ("run_id", "status", "started_at", "duration_s", "prompts", "responses", "errors", "expected", "corpus_path"):
        table.add_column(col)
    for row in df.itertuples(index=False):
        table.add_row(row.run_id, row.status, str(row.started_at)[:19], _fmt(row.duration_s), _fmt(row.prompts),
                      _fmt(row.responses), _fmt(row.errors), _fmt(row.expected), row.corpus_path)
    console.print(table)


@app.command()
def sql(query: str = typer.Argument(..., help="A SQL query over runs, prompts, responses, spans, scores, server_metrics."),
        db: Path = DB_OPTION) -> None:
    """Run a read-only SQL query on the store and print the result (no separate DuckDB CLI needed)."""
    import duckdb

    try:
        with connect(db, read_only=True) as con:
            df = con.execute(query).df()
    except FileNotFoundError as e:
        fail(str(e))
    except duckdb.Error as e:
        fail(f"query failed: {e}")
    table = Table()
    for col in df.columns:
        table.add_column(str(col))
    for row in df.itertuples(index=False):
        table.add_row(*(_fmt(v) for v in row))
    console.print(table)


def _register_stage_commands() -> None:
    """Each later stage keeps its command beside its code; the CLI only names them."""
    from evaluators.scoring import score_command
    from harness.gate import gate_command
    from harness.report.command import report_command
    from harness.serve import serve_command

    app.command("serve")(serve_command)
    app.command("score")(score_command)
    app.command("report")(report_command)
    app.command("gate")(gate_command)


_register_stage_commands()

if __name__ == "__main__":
    app()
