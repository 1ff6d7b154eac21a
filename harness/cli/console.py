"""The one console set-up every command shares: where output goes, how errors end a command.

Data from the store and from servers (run ids, route and cohort names, log lines) is printed as
text, never as rich markup, so a `[/]` in a name cannot break a command.
"""

from __future__ import annotations

import sys
from typing import NoReturn

import typer
from rich.console import Console
from rich.text import Text

# Wide when piped (CI logs), so tables are not squeezed to 80 columns.
out = Console(soft_wrap=True, width=None if sys.stdout.isatty() else 160)
err = Console(stderr=True, soft_wrap=True)

EXIT_BAD_INPUT = 2


def fail(message: str, code: int = EXIT_BAD_INPUT) -> NoReturn:
    """Print `error: message` on stderr and end the command with `code` (2: bad input)."""
    err.print(Text.assemble(("error:", "bold red"), " ", message), highlight=False)
    raise typer.Exit(code)


def fmt(value: object) -> str:
    """A table cell: '-' for missing, thousands separators for large numbers, 3 decimals otherwise."""
    if value is None or value != value:  # None or NaN
        return "-"
    if isinstance(value, float) and value.is_integer() and abs(value) >= 1:
        return f"{int(value):,}"
    if isinstance(value, float):
        return f"{value:.3f}" if abs(value) < 1000 else f"{value:,.0f}"
    return str(value)


def cell(value: object) -> Text:
    """A table cell as plain text (rich would read a str cell as markup)."""
    return Text(fmt(value))
