"""`routecheck report RUN`: per-cohort comparison of each candidate with the baseline."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from harness.cli.console import fail, guarded, out, visible
from harness.config import ConfigError
from harness.report.render import FORMATS, default_out_dir, parse_formats, write_outputs
from harness.store import DEFAULT_DB


@guarded
def report_command(
    run_id: str = typer.Argument(..., help="Run id, a unique prefix, or 'latest'.", metavar="RUN_ID"),
    db: Path = typer.Option(DEFAULT_DB, "--db", help="DuckDB store.", metavar="PATH"),
    formats: str = typer.Option(",".join(FORMATS), "--formats", help=f"Files to write: any of {','.join(FORMATS)}.", metavar="LIST"),
    out_dir: Optional[Path] = typer.Option(None, "--out-dir", help="Where to write the files (default reports/RUN/).", metavar="DIR"),
    policy: Optional[Path] = typer.Option(None, "--policy", help="gate.yaml whose margins and alpha the verdicts use.", metavar="PATH"),
    discover_cohorts: bool = typer.Option(False, "--discover-cohorts", help="Also cluster prompts (TF-IDF + KMeans) and search worst slices (automatic when prompts have no cohort labels)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the bootstrap and clustering (results are reproducible).", metavar="INT"),
    quiet: bool = typer.Option(False, "--quiet", help="No terminal table; only write the files."),
) -> None:
    """Compare each candidate route with the baseline, per cohort, with corrected statistics.

    Exit 0, or 2 on bad input and on a run without data (the files are written first, saying so),
    3 on an internal error."""
    from harness.report.build import make_report  # the statistics stack: imported when a report is made
    from harness.report.coverage import known_metrics
    from harness.report.load import ReportError
    from harness.report.policy import check_policy_metrics, load_policy
    from harness.report.render.text import print_report

    try:
        chosen = parse_formats(formats)
        pol = load_policy(policy) if policy else None
        report = make_report(db, run_id, policy=pol, discover=discover_cohorts, seed=seed)
        if pol is not None and not report.no_data:
            check_policy_metrics(pol, policy, sorted({c.metric for c in report.comparisons}), report.cohorts,
                                 known_metrics(report))
    except (ConfigError, ReportError, LookupError, FileNotFoundError) as e:
        fail(str(e))
    paths = write_outputs(report, out_dir or default_out_dir(report.run_id), chosen)
    if not quiet:
        print_report(report, out, str(paths["html"]) if "html" in paths else None)
        for kind, p in paths.items():
            if kind != "html":
                out.print(visible(f"{kind}: {p}"), highlight=False, markup=False)
    if report.no_data:
        fail(f"no data: {report.no_data}")
