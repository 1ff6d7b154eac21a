"""`routecheck serve`: start the serve: routes' servers and wait (for manual use)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from harness.cli.console import err, fail, out, term
from harness.cli.mirror import check_engines
from harness.config import ConfigError, load_routes
from harness.serving.pool import ServerPool
from harness.serving.process import ServeError, signals_raise

_ROUTES_OPT = typer.Option(Path("routes.yaml"), "--routes", "-r", help="routes.yaml with serve: routes.")
_ONLY_OPT = typer.Option(None, "--route", help="Start only these routes (repeatable).")
_LOG_OPT = typer.Option(Path("traces/logs/serve"), "--log-dir", help="Where server logs go.")
_OTLP_OPT = typer.Option(None, "--otlp-traces-endpoint", help="Send the servers' request spans here (OTLP/HTTP).")


def serve_command(
    routes: Path = _ROUTES_OPT,
    route: Optional[list[str]] = _ONLY_OPT,
    log_dir: Path = _LOG_OPT,
    otlp_traces_endpoint: Optional[str] = _OTLP_OPT,
) -> None:
    """Start the servers of the serve: routes, print their URLs and wait until Ctrl-C."""
    console = err
    try:
        routes_file = load_routes(routes)
        check_engines(routes_file, routes)
    except ConfigError as e:
        fail(str(e), 2)
    unknown = sorted(set(route or []) - {r.name for r in routes_file.routes})
    if unknown:
        fail(f"{routes}: no route named {', '.join(unknown)}", 2)
    chosen = [r for r in routes_file.routes if r.serve is not None and (not route or r.name in route)]
    if not chosen:
        fail(f"{routes}: no serve: routes to start", 2)
    console.print(f"starting {len(chosen)} server(s); logs in {log_dir}/ ...", markup=False)
    pool = ServerPool(chosen, log_dir, otlp_traces_endpoint)
    with signals_raise():
        try:
            urls = pool.start()
            table = Table("route", "model", "base_url", "ready after", "log")
            for r in chosen:
                h = pool.handles[r.name]
                table.add_row(term(r.name), term(r.model), term(urls[r.name]), f"{h.ready_s:.0f} s", term(h.log_path))
            out.print(table)  # stdout: the URLs, for whoever reads them
            console.print("serving; press Ctrl-C to stop")
            while True:
                time.sleep(1.0)
                pool.check_alive()
        except KeyboardInterrupt:
            console.print("stopping servers ...")
        except (ServeError, ConfigError) as e:
            pool.stop()
            fail(str(e), 1)
        finally:
            pool.stop()
