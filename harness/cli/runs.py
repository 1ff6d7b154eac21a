"""`routecheck runs` and `routecheck sql`: read-only views of the store."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from harness.cli.console import cell, fail, out, term
from harness.store import DEFAULT_DB, StoreError, connect
from harness.store.views import list_runs, resolve_run_id, route_summary, server_phases, server_summary

DB_OPTION = typer.Option(DEFAULT_DB, "--db", help="DuckDB store.")


def _table(df, title: str | None = None, left: tuple[str, ...] = ("route", "role")) -> Table:
    table = Table(title=term(title) if title else None)
    for col in df.columns:
        table.add_column(term(col), justify="left" if col in left else "right")
    for row in df.itertuples(index=False):
        table.add_row(*(cell(v) for v in row))
    return table


def print_route_summary(db: Path, run_id: str) -> None:
    with connect(db, read_only=True) as con:
        df = route_summary(con, run_id)
    out.print(_table(df, f"routes in run {run_id}"))


def _print_server_view(db: Path, run_id: str) -> None:
    """What the servers saw: Prometheus deltas over the run and per-request server spans."""
    with connect(db, read_only=True) as con:
        metrics = server_summary(con, run_id)
        phases = server_phases(con, run_id)
    phases = phases[phases["cohort"].isna()].drop(columns=["cohort"]).sort_values("route")
    phases = phases[["route", "server_spans", "client_latency_mean_s", "server_e2e_mean_s", "queue_mean_s", "prefill_mean_s", "decode_mean_s"]]
    for title, df in (("server metrics (Prometheus, after - before)", metrics), ("server spans (per request), means", phases)):
        if df.empty:
            out.print(term(f"{title}: none recorded (only serve: routes are scraped and traced)"))
            continue
        out.print(_table(df, title, left=("route",)))


def runs(
    db: Path = DB_OPTION,
    detail: Optional[str] = typer.Option(None, "--detail", help="Per-route figures of one run (id, prefix or 'latest')."),
) -> None:
    """List runs with counts, errors and duration."""
    try:
        con = connect(db, read_only=True)
    except StoreError as e:
        fail(str(e))
    with con:
        if detail is not None:
            try:
                run_id = resolve_run_id(con, detail)
            except LookupError as e:
                fail(str(e))
        else:
            df = list_runs(con)
    if detail is not None:
        print_route_summary(db, run_id)
        _print_server_view(db, run_id)
        return
    df = df.assign(started_at=df["started_at"].astype(str).str[:19])
    out.print(_table(df[["run_id", "status", "started_at", "duration_s", "prompts", "responses", "errors", "expected", "corpus_path"]],
                     f"runs in {db}", left=("run_id", "status", "started_at", "corpus_path")))


def sql(query: str = typer.Argument(..., help="A SQL query over runs, prompts, responses, spans, scores, server_metrics."),
        db: Path = DB_OPTION) -> None:
    """Run a read-only SQL query on the store and print the result (no separate DuckDB CLI needed)."""
    import duckdb

    try:
        with connect(db, read_only=True) as con:
            df = con.execute(query).df()
    except StoreError as e:
        fail(str(e))
    except duckdb.Error as e:
        fail(f"query failed: {e}")
    out.print(_table(df, left=tuple(map(str, df.columns))))




def gather_command(
    target: Path = typer.Argument(..., help="The store to gather into (created if missing).", metavar="TARGET"),
    stores: list[Path] = typer.Argument(..., help="Stores to gather from, e.g. each proxy replica's.", metavar="STORE..."),
    pool: Optional[str] = typer.Option(None, "--pool", metavar="RUN_ID",
                                       help="Make one run RUN_ID of them all (prompt ids become SOURCE_RUN/PROMPT_ID), "
                                            "so one report covers every replica."),
    runs: list[str] = typer.Option([], "--run", metavar="RUN_ID", help="With --pool: only these source runs (repeatable)."),
) -> None:
    """Gather every run of several stores into one (each proxy replica writes its own store), so
    `runs`, `score`, `report` and `gate` read them all from TARGET. Gathering again refreshes a
    run instead of duplicating it; `--pool` pools the runs into one."""
    from harness.store.gather import gather, pool as pool_runs

    if runs and not pool:
        fail("--run selects runs to pool: give --pool RUN_ID too")
    try:
        if pool:
            p = pool_runs(target, stores, pool, only=runs or None)
        else:
            done = gather(target, stores)
    except StoreError as e:
        fail(str(e))
    if pool:
        rows = ", ".join(f"{n} {t}" for t, n in p.rows.items() if n)
        out.print(term(f"pooled {len(p.runs)} runs of {len({s for s, _ in p.runs})} stores into run {p.run_id} "
                       f"({rows or 'no rows'}); server metrics stay with the replica runs"), highlight=False)
        out.print(term(f"`routecheck report {p.run_id} --db {target}` reports them together"), highlight=False)
        return
    for g in done:
        rows = ", ".join(f"{n} {t}" for t, n in g.rows.items() if n)
        out.print(term(f"{g.store}: {len(g.runs)} runs ({rows or 'no rows'})"), highlight=False)
    out.print(term(f"gathered into {target}: `routecheck runs --db {target}` lists them"), highlight=False)
