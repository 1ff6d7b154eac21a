"""`routecheck gate RUN --policy gate.yaml`: exit 0 pass, 1 regression, 2 bad input or no data, 3 internal error."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import typer

from harness.cli.console import fail, guarded, out, visible
from harness.config import ConfigError
from harness.report.render import default_out_dir
from harness.store import DEFAULT_DB


@guarded
def gate_command(
    run_id: str = typer.Argument(..., help="Run id, a unique prefix, or 'latest'.", metavar="RUN_ID"),
    policy: Path = typer.Option(Path("gate.yaml"), "--policy", help="Gate policy (see docs/report.md).", metavar="PATH"),
    db: Path = typer.Option(DEFAULT_DB, "--db", help="DuckDB store.", metavar="PATH"),
    out_dir: Optional[Path] = typer.Option(None, "--out-dir", help="Where gate.md and gate.junit.xml go (default reports/RUN/).", metavar="DIR"),
    seed: int = typer.Option(0, "--seed", help="Bootstrap seed.", metavar="INT"),
) -> None:
    """Exit 0 if every gated cohort x metric passes the policy, 1 on a regression (or a metric without
    data on a route), 2 on bad input or a run without data, 3 on an internal error."""
    # The statistics stack (scipy, pandas) is imported by the command that uses it, not by `routecheck --help`.
    from harness.gate.evaluate import run_gate
    from harness.gate.render import gate_junit, gate_markdown, print_gate
    from harness.report.load import ReportError

    try:
        result, report = run_gate(db, run_id, policy, seed)
    except (ConfigError, ReportError, LookupError, FileNotFoundError) as e:
        fail(str(e))
    out_path = out_dir or default_out_dir(report.run_id)
    out_path.mkdir(parents=True, exist_ok=True)
    md = gate_markdown(result)
    (out_path / "gate.md").write_text(md, encoding="utf-8")
    (out_path / "gate.junit.xml").write_text(gate_junit(result), encoding="utf-8")
    summary_file = os.environ.get("GITHUB_STEP_SUMMARY")
    if summary_file:
        with open(summary_file, "a", encoding="utf-8") as f:
            f.write(md + "\n")
    print_gate(result, out)
    out.print(visible(f"markdown: {out_path / 'gate.md'}\njunit: {out_path / 'gate.junit.xml'}", multiline=True),
              highlight=False, markup=False)
    if result.no_data:
        fail(f"no data: {result.no_data}")
    raise typer.Exit(result.exit_code)


