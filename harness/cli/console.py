"""The one console set-up every command shares: where output goes, how errors end a command.

Data from the store and from servers (run ids, route and cohort names, error messages, log lines)
is printed through harness/report/render/escape.py (`term`, `cell`): never as rich markup, so a
`[/]` in a name cannot break a command, and with its control characters shown as escapes, so an
ANSI sequence or a CR in a name cannot repaint the terminal. The consoles themselves read no
markup or emoji codes either, so a str that slips through is still printed as it is.
"""

from __future__ import annotations

import sys
from typing import NoReturn

import typer
from rich.console import Console
from rich.text import Text

from harness.report.render.escape import term, visible

# Wide when piped (CI logs), so tables are not squeezed to 80 columns.
out = Console(soft_wrap=True, width=None if sys.stdout.isatty() else 160, markup=False, emoji=False)
err = Console(stderr=True, soft_wrap=True, markup=False, emoji=False)

EXIT_BAD_INPUT = 2


def fail(message: str, code: int = EXIT_BAD_INPUT) -> NoReturn:
    """Print `error: message` on stderr and end the command with `code` (2: bad input)."""
    err.print(Text.assemble(("error:", "bold red"), " ", visible(message, multiline=True)), highlight=False)
    raise typer.Exit(code)


def fmt(value: object) -> str:
    """A table cell: '-' for missing, thousands separators for large numbers, 3 decimals otherwise."""
    if value is None or value != value:  # None or NaN
        return "-"
    if isinstance(value, float) and value.is_integer() and abs(value) >= 1:
        return f"{int(value):,}"
    if isinstance(value, float):
        return f"{value:.3f}" if abs(value) < 1000 else f"{value:,.0f}"
    return visible(value)


def cell(value: object) -> Text:
    """A table cell as plain text (rich would read a str cell as markup), control characters escaped."""
    return term(fmt(value))
