"""`routecheck report`: per-cohort comparison of candidate routes with the baseline.

Entry points: `report_command` (typer command), `print_terminal_report(db, run_id)` and
`write_report_files(db, run_id, out_dir)` for callers that already hold a run id.
"""

from harness.report.command import print_terminal_report, report_command, write_report_files

__all__ = ["print_terminal_report", "report_command", "write_report_files"]
