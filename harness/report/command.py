"""`routecheck report RUN`, and the helpers the main job calls at its end."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

from harness.config import ConfigError
from harness.report.build import build_report
from harness.report.load import ReportError
from harness.report.model import Report
from harness.report.policy import Policy, check_policy_metrics, load_policy
from harness.store import DEFAULT_DB, connect
from harness.summary import resolve_run_id

FORMATS = ("md", "json", "junit", "html")


def make_report(db_path: Path | str, run_id: str, policy: Policy | None = None, discover: bool = False,
                seed: int = 0) -> Report:
    con = connect(db_path, read_only=True)
    try:
        run_id = resolve_run_id(con, run_id) if con.execute("SELECT count(*) FROM runs").fetchone()[0] else run_id
        return build_report(con, run_id, policy=policy, discover=discover, seed=seed)
    finally:
        con.close()


def write_outputs(report: Report, out_dir: Path, formats: tuple[str, ...] = FORMATS, stem: str = "report") -> dict[str, Path]:
    from harness.report.render_text import to_junit, to_markdown

    out_dir.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}
    if "html" in formats:
        from harness.report.render_html import to_html

        paths["html"] = out_dir / f"{stem}.html"
        paths["html"].write_text(to_html(report), encoding="utf-8")
    if "md" in formats:
        paths["md"] = out_dir / f"{stem}.md"
        paths["md"].write_text(to_markdown(report, paths.get("html", Path(f"{stem}.html")).name), encoding="utf-8")
    if "json" in formats:
        paths["json"] = out_dir / f"{stem}.json"
        paths["json"].write_text(json.dumps(report.to_dict(), indent=2, ensure_ascii=False), encoding="utf-8")
    if "junit" in formats:
        paths["junit"] = out_dir / f"{stem}.junit.xml"
        paths["junit"].write_text(to_junit(report), encoding="utf-8")
    return paths


def default_out_dir(run_id: str) -> Path:
    return Path("reports") / run_id


def print_terminal_report(db_path: Path | str, run_id: str, console: Console | None = None,
                          html_path: str | None = None) -> Report:
    """For the end of `routecheck mirror`/the main job: the terminal table of a run."""
    from harness.report.render_text import print_report

    report = make_report(db_path, run_id)
    print_report(report, console, html_path)
    return report


def write_report_files(db_path: Path | str, run_id: str, out_dir: Path | str | None = None) -> dict[str, Path]:
    """Markdown, JSON, JUnit and HTML of a run into out_dir (default reports/RUN/); returns their paths."""
    report = make_report(db_path, run_id)
    return write_outputs(report, Path(out_dir) if out_dir else default_out_dir(report.run_id))


def _parse_formats(formats: str) -> tuple[str, ...]:
    chosen = tuple(f.strip() for f in formats.split(",") if f.strip())
    bad = [f for f in chosen if f not in FORMATS]
    if bad:
        raise ConfigError(f"--formats: unknown format(s) {', '.join(bad)}; choose from {', '.join(FORMATS)}")
    return chosen


def report_command(
    run_id: str = typer.Argument(..., help="Run id, a unique prefix, or 'latest'.", metavar="RUN_ID"),
    db: Path = typer.Option(DEFAULT_DB, "--db", help="DuckDB store.", metavar="PATH"),
    formats: str = typer.Option("md,json,junit,html", "--formats", help="Files to write: any of md,json,junit,html.", metavar="LIST"),
    out_dir: Optional[Path] = typer.Option(None, "--out-dir", help="Where to write the files (default reports/RUN/).", metavar="DIR"),
    policy: Optional[Path] = typer.Option(None, "--policy", help="gate.yaml whose margins and alpha the verdicts use.", metavar="PATH"),
    discover_cohorts: bool = typer.Option(False, "--discover-cohorts", help="Also cluster prompts (TF-IDF + KMeans) and search worst slices (automatic when prompts have no cohort labels)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the bootstrap and clustering (results are reproducible).", metavar="INT"),
    quiet: bool = typer.Option(False, "--quiet", help="No terminal table; only write the files."),
) -> None:
    """Compare each candidate route with the baseline, per cohort, with corrected statistics."""
    from harness.report.render_text import print_report

    err = Console(stderr=True, soft_wrap=True)
    try:
        chosen = _parse_formats(formats)
        pol = load_policy(policy) if policy else None
        report = make_report(db, run_id, policy=pol, discover=discover_cohorts, seed=seed)
        if pol is not None:
            check_policy_metrics(pol, policy, sorted({c.metric for c in report.comparisons}), report.cohorts)
    except (ConfigError, ReportError, LookupError, FileNotFoundError) as e:
        err.print(f"[bold red]error:[/] {e}", highlight=False, markup=True)
        raise typer.Exit(2)
    paths = write_outputs(report, out_dir or default_out_dir(report.run_id), chosen)
    if not quiet:
        console = Console(soft_wrap=True, width=None if sys.stdout.isatty() else 160)
        print_report(report, console, str(paths["html"]) if "html" in paths else None)
        for kind, p in paths.items():
            if kind != "html":
                console.print(f"{kind}: {p}", highlight=False)
