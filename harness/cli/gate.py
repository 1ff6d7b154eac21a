"""`routecheck gate RUN --policy gate.yaml`: exit 0 pass, 1 regression, 2 bad input."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import typer

from harness.cli.console import fail, out
from harness.config import ConfigError
from harness.gate.evaluate import run_gate
from harness.gate.render import gate_junit, gate_markdown, print_gate
from harness.report.load import ReportError
from harness.store import DEFAULT_DB


def gate_command(
    run_id: str = typer.Argument(..., help="Run id, a unique prefix, or 'latest'.", metavar="RUN_ID"),
    policy: Path = typer.Option(Path("gate.yaml"), "--policy", help="Gate policy (see docs/report.md).", metavar="PATH"),
    db: Path = typer.Option(DEFAULT_DB, "--db", help="DuckDB store.", metavar="PATH"),
    out_dir: Optional[Path] = typer.Option(None, "--out-dir", help="Where gate.md and gate.junit.xml go (default reports/RUN/).", metavar="DIR"),
    seed: int = typer.Option(0, "--seed", help="Bootstrap seed.", metavar="INT"),
) -> None:
    """Exit 0 if every gated cohort x metric passes the policy, 1 on a regression, 2 on bad input."""
    try:
        result, report = run_gate(db, run_id, policy, seed)
    except (ConfigError, ReportError, LookupError, FileNotFoundError) as e:
        fail(str(e))
    out_path = out_dir or Path("reports") / report.run_id
    out_path.mkdir(parents=True, exist_ok=True)
    md = gate_markdown(result)
    (out_path / "gate.md").write_text(md, encoding="utf-8")
    (out_path / "gate.junit.xml").write_text(gate_junit(result), encoding="utf-8")
    summary_file = os.environ.get("GITHUB_STEP_SUMMARY")
    if summary_file:
        with open(summary_file, "a", encoding="utf-8") as f:
            f.write(md + "\n")
    print_gate(result, out)
    out.print(f"markdown: {out_path / 'gate.md'}\njunit: {out_path / 'gate.junit.xml'}", highlight=False, markup=False)
    raise typer.Exit(result.exit_code)


