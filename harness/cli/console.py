"""The one console set-up every command shares: where output goes, how errors end a command.

Data from the store and from servers (run ids, route and cohort names, error messages, log lines)
is printed through harness/report/render/escape.py (`term`, `cell`): never as rich markup, so a
`[/]` in a name cannot break a command, and with its control characters shown as escapes, so an
ANSI sequence or a CR in a name cannot repaint the terminal. The consoles themselves read no
markup or emoji codes either, so a str that slips through is still printed as it is.
"""

from __future__ import annotations

import functools
import sys
import traceback
from typing import Callable, NoReturn, TypeVar

import click

import typer
from rich.console import Console
from rich.text import Text

from harness.report.render.escape import term, visible

# Wide when piped (CI logs), so tables are not squeezed to 80 columns.
out = Console(soft_wrap=True, width=None if sys.stdout.isatty() else 160, markup=False, emoji=False)
err = Console(stderr=True, soft_wrap=True, markup=False, emoji=False)

EXIT_BAD_INPUT = 2
EXIT_INTERNAL = 3  # a bug, never 1 (1 is the gate's "regression")

F = TypeVar("F", bound=Callable)


def fail(message: str, code: int = EXIT_BAD_INPUT) -> NoReturn:
    """Print `error: message` on stderr and end the command with `code` (2: bad input)."""
    err.print(Text.assemble(("error:", "bold red"), " ", visible(message, multiline=True)), highlight=False)
    raise typer.Exit(code)


def bad_input_message(e: BaseException, db: object = None) -> str | None:
    """The one-line message of an exception that means bad input (exit 2), or None for a bug.

    Bad input: a config or corpus error (ConfigError, CorpusError), a store that cannot be opened
    or read (StoreError, or DuckDB's I/O and corruption errors while reading `--db`), an unknown
    run id, an evaluator, report or expert-probe error. Each message already names the file and the
    line or key."""
    import duckdb

    from evaluators.registry import EvaluatorError
    from harness.config import ConfigError
    from harness.experts.run import ExpertsError
    from harness.report.load import ReportError
    from harness.store import StoreError, error_message
    from harness.store.views import RunIdError

    if isinstance(e, (ConfigError, StoreError, EvaluatorError, ReportError, ExpertsError, RunIdError)):
        return str(e)
    if isinstance(e, (duckdb.IOException, duckdb.InternalException)) or (
            isinstance(e, duckdb.Error) and any(w in str(e).lower() for w in ("checksum", "corrupt", "invalidated"))):
        return error_message(db if db is not None else "the store", e)
    return None


def guarded(command: F) -> F:
    """Bad input (bad_input_message) ends as exit 2 with one `error:` line. End an unexpected exception as exit 3 with one `internal error` line (the traceback after it,
    on stderr), so a crash can never read as the gate's 1 ("regression") or as 0."""

    @functools.wraps(command)
    def run(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except (typer.Exit, typer.Abort, click.exceptions.ClickException, KeyboardInterrupt, SystemExit):
            raise
        except Exception as e:  # noqa: BLE001 - the point: no exception escapes with an ambiguous code
            bad = bad_input_message(e, kwargs.get("db"))
            if bad is not None:
                fail(bad)
            err.print(visible(traceback.format_exc(), multiline=True), highlight=False)
            err.print(Text.assemble(("internal error:", "bold red"), " ", visible(f"{type(e).__name__}: {e}", multiline=True),
                                    f" (a bug in routecheck; exit code {EXIT_INTERNAL})"), highlight=False)
            raise typer.Exit(EXIT_INTERNAL) from None

    return run  # type: ignore[return-value]


def fmt(value: object) -> str:
    """A table cell: '-' for missing, thousands separators for large numbers, 3 decimals otherwise."""
    try:
        missing = value is None or bool(value != value)  # None or NaN
    except TypeError:  # pandas.NA (a NULL in a nullable integer column) has no truth value
        missing = True
    if missing:
        return "-"
    if isinstance(value, float) and value.is_integer() and abs(value) >= 1:
        return f"{int(value):,}"
    if isinstance(value, float):
        return f"{value:.3f}" if abs(value) < 1000 else f"{value:,.0f}"
    return visible(value)


def cell(value: object) -> Text:
    """A table cell as plain text (rich would read a str cell as markup), control characters escaped."""
    return term(fmt(value))
