"""`python -m harness.cli` is the `routecheck` command."""

from harness.cli import app

app()
