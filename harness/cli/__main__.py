"""`python -m harness.cli` is the `routecheck` command."""

from harness.cli import app

if __name__ == "__main__":  # not when `routecheck proxy`'s serving process (spawned) imports it
    app()
