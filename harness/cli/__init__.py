"""The `routecheck` command line: one sub-command per stage of the data flow, one module each.

    mirror.py  mirror        runs.py   runs, sql, gather  serve.py  serve
    score.py   score         report.py report          gate.py   gate
    experts.py experts       proxy.py  proxy
Every command prints through harness/cli/console.py (one console set-up, one way to fail).
"""

from __future__ import annotations

import typer

from harness import __version__
from harness.cli import experts, gate, mirror, proxy, report, runs, score, serve
from harness.cli.console import guarded, out

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Mirror, trace, score, report and gate LLM routes.")


def _print_version(value: bool) -> None:
    # An option callback runs while the options are parsed, before click asks for a command.
    if value:
        out.print(f"routecheck {__version__}", highlight=False)
        raise typer.Exit()


@app.callback()
def _main(version: bool = typer.Option(False, "--version", help="Print the version and exit.", is_eager=True,
                                       callback=_print_version)) -> None:
    """Mirror, trace, score, report and gate LLM routes."""


# Every command through `guarded`: bad input is one `error:` line and exit 2, a bug exit 3.
for _name, _command in {
    "mirror": mirror.mirror, "runs": runs.runs, "sql": runs.sql, "gather": runs.gather_command, "serve": serve.serve_command,
    "score": score.score_command, "report": report.report_command, "gate": gate.gate_command,
    "experts": experts.experts_command, "proxy": proxy.proxy_command,
}.items():
    app.command(_name)(guarded(_command))
