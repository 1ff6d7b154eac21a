"""`routecheck proxy`: serve the primary route to real clients and mirror a sample of the traffic
to the candidates, recording both like a corpus run."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Optional

import typer

from harness.cli.console import err, fail, out
from harness.config import ConfigError, load_routes
from harness.proxy.options import ProxyOptions, load_settings, parse_listen
from harness.store import DEFAULT_DB

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_window(value: str) -> float:
    """`1h`, `30m`, `90s`, `1d` or plain seconds."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*", value)
    if not m or float(m.group(1)) <= 0:
        raise ConfigError(f"--window {value!r}: expected a duration such as 1h, 30m or 90s")
    return float(m.group(1)) * _UNITS[m.group(2) or "s"]


def proxy_command(
    routes: Path = typer.Option(Path("routes.yaml"), "--routes", "-r", help="Routes file."),
    listen: str = typer.Option("127.0.0.1:8080", "--listen", help="HOST:PORT to listen on (loopback unless told otherwise; port 0 picks one)."),
    db: Path = typer.Option(DEFAULT_DB, "--db", help="DuckDB store."),
    primary: Optional[str] = typer.Option(None, "--primary", help="Route that answers the clients (default: the baseline)."),
    mirror_rate: Optional[float] = typer.Option(None, "--mirror-rate", min=0.0, max=1.0, help="Share of requests mirrored to the candidates (default: --config's mirror_rate, else 1); change it live with POST /admin/mirror-rate or SIGHUP (re-reads --config)."),
    queue_size: int = typer.Option(256, "--queue-size", min=1, help="Mirrored calls waiting per candidate; beyond it they are dropped and counted."),
    auth_token_env: Optional[str] = typer.Option(None, "--auth-token-env", help="Clients must send `Authorization: Bearer $VAR`."),
    window: Optional[str] = typer.Option(None, "--window", help="A new run every window (1h, 30m, ...); default one run per session."),
    config: Optional[Path] = typer.Option(None, "--config", help="YAML: cohort_rules, capture_content, mirror_rate (docs/proxy.md); re-read on SIGHUP."),
    capture_content: Optional[bool] = typer.Option(None, "--capture-content/--no-capture-content", help="Store prompt and answer text (default), or only their SHA-256 and length."),
    otlp_endpoint: Optional[str] = typer.Option(None, "--otlp-endpoint", help="Also export spans over OTLP/HTTP."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Sampling seed (reproducible sampling)."),
    shutdown_grace_s: float = typer.Option(10.0, "--shutdown-grace", min=0.0, help="Seconds mirrored calls in flight get at shutdown."),
) -> None:
    """Serve the primary route's answers and mirror a sample of live traffic to the candidates."""
    from harness.proxy.run import run_proxy

    try:
        routes_file = load_routes(routes)
        host, port = parse_listen(listen)
        settings = load_settings(config)
        if capture_content is not None:
            settings.capture_content = capture_content
        if mirror_rate is None:
            mirror_rate = settings.mirror_rate if settings.mirror_rate is not None else 1.0
        opts = ProxyOptions(db=db, host=host, port=port, primary=primary, mirror_rate=mirror_rate, queue_size=queue_size,
                            auth_token_env=auth_token_env, window_s=parse_window(window) if window else None,
                            settings=settings, config_path=config, otlp_endpoint=otlp_endpoint, seed=seed, shutdown_grace_s=shutdown_grace_s)
    except ConfigError as e:
        fail(str(e))
    if not opts.loopback and not auth_token_env:
        err.print(f"warning: listening on {host}, not loopback, without --auth-token-env: anyone who can reach it can use it",
                  markup=False, highlight=False)

    def ready(proxy) -> None:
        names = ", ".join(c.name for c in proxy.candidates) or "no candidate"
        out.print(f"proxy listening on {proxy.url} (primary {proxy.primary.name}; mirroring {opts.mirror_rate:.0%} to {names}; "
                  f"run {proxy.run_id})", markup=False, highlight=False, soft_wrap=True)

    try:
        summary = run_proxy(routes_file, opts, on_ready=ready)
    except ConfigError as e:
        fail(str(e))
    out.print(f"proxy stopped: {summary.status}; {summary.primary_calls} primary calls, {summary.mirror_calls} mirrored, "
              f"{summary.not_mirrored} not mirrored; runs {', '.join(summary.run_ids)}", markup=False, highlight=False, soft_wrap=True)
    if summary.status == "failed":
        fail("the proxy's serving process ended unexpectedly; what it had handed over is recorded (runs marked failed)", code=1)
