"""The `routecheck` command line: one sub-command per stage of the data flow, one module each.

    mirror.py  mirror        runs.py   runs, sql       serve.py  serve
    score.py   score         report.py report          gate.py   gate
    experts.py experts       proxy.py  proxy
Every command prints through harness/cli/console.py (one console set-up, one way to fail).
"""

from __future__ import annotations

import typer

from harness import __version__
from harness.cli import experts, gate, mirror, proxy, report, runs, score, serve
from harness.cli.console import out

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Mirror, trace, score, report and gate LLM routes.")


@app.callback()
def _main(version: bool = typer.Option(False, "--version", help="Print the version and exit.", is_eager=True)) -> None:
    if version:
        out.print(__version__)
        raise typer.Exit()


app.command("mirror")(mirror.mirror)
app.command("runs")(runs.runs)
app.command("sql")(runs.sql)
app.command("serve")(serve.serve_command)
app.command("score")(score.score_command)
app.command("report")(report.report_command)
app.command("gate")(gate.gate_command)
app.command("experts")(experts.experts_command)
app.command("proxy")(proxy.proxy_command)

