"""Serving engines: what routecheck must know to start, watch and read one kind of server.

Every vendor-specific name (command line, environment variables, Prometheus metric names, the
per-request span and its attributes) lives in one module here; the rest of routecheck speaks the
engine-neutral terms of the `Engine` protocol. Add an engine: one module with a class like
`vllm.VllmEngine`, and one line in ENGINES.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Mapping

from harness.config import ConfigError
from harness.serving.engines.base import SPAN_TIMING_COLUMNS, Engine, GiB
from harness.serving.engines.vllm import VllmEngine

if TYPE_CHECKING:
    from harness.config import RouteConfig

__all__ = ["ENGINES", "SPAN_TIMING_COLUMNS", "Engine", "GiB", "default_engine", "engine_for", "engine_named", "server_span_columns"]


# The registry: an engine's name in `serve.engine` -> the engine. A new engine is one module and one line.
ENGINES: dict[str, Engine] = {
    "vllm": VllmEngine(),
}


def engine_named(name: str, where: str = "serve.engine") -> Engine:
    try:
        return ENGINES[name]
    except KeyError:
        raise ConfigError(f"{where}: unknown serving engine {name!r}; known: {', '.join(sorted(ENGINES))}") from None


def engine_for(route: "RouteConfig") -> Engine:
    if route.serve is None:
        raise ValueError(f"route {route.name!r} has no serve: section")
    return engine_named(route.serve.engine, f"route {route.name!r}: serve.engine")


def default_engine() -> Engine:
    """The engine of a `serve:` route that names none."""
    from harness.config import ServeSpec

    return engine_named(ServeSpec.model_fields["engine"].default)


def server_span_columns(name: str, attributes: Mapping[str, Any]) -> dict[str, Any] | None:
    """The typed columns of a received span, from whichever engine recognises it."""
    for engine in ENGINES.values():
        cols = engine.span_columns(name, attributes)
        if cols is not None:
            return cols
    return None
