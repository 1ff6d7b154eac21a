"""routes.yaml: the routes to mirror, validated at the boundary with errors that name file and key."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator


class ConfigError(ValueError):
    """A bad input file; the message names the file and the key or line."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RequestDefaults(_Strict):
    temperature: float = Field(0.0, ge=0.0, le=2.0)
    max_tokens: int = Field(256, gt=0)
    seed: int | None = None
    top_p: float | None = Field(None, gt=0.0, le=1.0)


class Prices(_Strict):
    """US dollars per million tokens."""

    input_per_mtok: float = Field(0.0, ge=0.0)
    output_per_mtok: float = Field(0.0, ge=0.0)


class ServeSpec(_Strict):
    """A route whose server routecheck starts itself (see harness/serving/; engines in serving/engines/)."""

    engine: str = Field("vllm", pattern=r"^[a-z0-9_]+$")  # a key of harness.serving.engines.ENGINES
    model: str
    args: list[str] = Field(default_factory=list)
    env: dict[str, str] = Field(default_factory=dict)
    port: int | Literal["auto"] = "auto"
    startup_timeout_s: float = Field(600.0, gt=0)


class RouteConfig(_Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9_.\-]+$")
    role: Literal["baseline", "candidate"]
    model: str
    base_url: str | None = None
    serve: ServeSpec | None = None
    api_key_env: str | None = None
    request: RequestDefaults = Field(default_factory=RequestDefaults)
    max_concurrency: int = Field(8, gt=0, le=4096)
    timeout_s: float = Field(120.0, gt=0)
    max_retries: int = Field(3, ge=0)
    prices: Prices = Field(default_factory=Prices)
    architecture: Literal["dense", "moe"] = "dense"
    total_params: int | None = Field(None, gt=0)
    active_params: int | None = Field(None, gt=0)
    num_experts: int | None = Field(None, gt=0)
    active_experts: int | None = Field(None, gt=0)
    capacity_factor: float | None = Field(None, gt=0)
    # Read by `routecheck proxy`: false keeps only the SHA-256 and length of this route's answers
    # (and of the prompts it is sent), for traffic that must not be stored (docs/proxy.md).
    capture_content: bool = True

    @model_validator(mode="after")
    def _one_endpoint(self) -> "RouteConfig":
        if (self.base_url is None) == (self.serve is None):
            raise ValueError("give exactly one of 'base_url' (a running server) or 'serve' (routecheck starts vLLM)")
        if self.architecture == "moe" and (self.num_experts is None or self.active_experts is None):
            raise ValueError("architecture 'moe' needs 'num_experts' and 'active_experts'")
        if self.num_experts and self.active_experts and self.active_experts > self.num_experts:
            raise ValueError("'active_experts' cannot exceed 'num_experts'")
        return self

    def api_key(self) -> str | None:
        """Read the key from the environment; it is never stored in routes.yaml or the store."""
        if not self.api_key_env:
            return None
        key = os.environ.get(self.api_key_env)
        if key is None:
            raise ConfigError(f"route {self.name!r}: environment variable {self.api_key_env} (api_key_env) is not set")
        return key

    def snapshot(self) -> dict[str, Any]:
        """What the store keeps of a route: everything but secrets (only the env var's name)."""
        return self.model_dump(mode="json")

    def span_attributes(self) -> dict[str, Any]:
        attrs: dict[str, Any] = {"routecheck.route": self.name, "routecheck.role": self.role, "architecture": self.architecture}
        for key in ("total_params", "active_params", "num_experts", "active_experts", "capacity_factor"):
            value = getattr(self, key)
            if value is not None:
                attrs[key] = value
        return attrs


class RoutesFile(_Strict):
    routes: list[RouteConfig] = Field(min_length=1)

    @model_validator(mode="after")
    def _roles(self) -> "RoutesFile":
        names = [r.name for r in self.routes]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"route names must be unique; repeated: {', '.join(dupes)}")
        baselines = [r.name for r in self.routes if r.role == "baseline"]
        if len(baselines) != 1:
            raise ValueError(f"exactly one route must have role 'baseline'; found {len(baselines)}: {baselines}")
        return self

    @property
    def baseline(self) -> RouteConfig:
        return next(r for r in self.routes if r.role == "baseline")


def read_yaml(path: Path, what: str) -> Any:
    """Parse a YAML file; errors name the file, and the line where YAML itself is broken."""
    try:
        text = path.read_text()
    except OSError as e:
        raise ConfigError(f"{path}: cannot read {what}: {e.strerror}") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f":{mark.line + 1}" if mark else ""
        raise ConfigError(f"{path}{where}: not valid YAML: {getattr(e, 'problem', e)}") from None


def load_routes(path: str | Path) -> RoutesFile:
    path = Path(path)
    data = read_yaml(path, "routes file")
    if isinstance(data, list):  # a bare list of routes is accepted too
        data = {"routes": data}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping with a 'routes' list, got {type(data).__name__}")
    try:
        routes = RoutesFile.model_validate(data)
    except ValidationError as e:
        raise ConfigError(describe_validation_error(path, e, "README 'routes.yaml reference'", data)) from None
    _resolve_serve_paths(routes, path.parent)
    return routes


def _resolve_serve_paths(routes: RoutesFile, base: Path) -> None:
    """`serve.model` is relative to routes.yaml, so the file works from any working directory."""
    for r in routes.routes:
        if r.serve and not Path(r.serve.model).is_absolute() and (base / r.serve.model).exists():
            r.serve.model = str((base / r.serve.model).resolve())


def describe_validation_error(path: Path, err: ValidationError, docs: str, data: Any = None) -> str:
    """One line per problem: `file: key.path (route 'name'): what was wrong`; `docs` names where keys are documented."""
    lines = []
    for e in err.errors():
        loc = e["loc"]
        key = ""
        for part in loc:
            key += f"[{part}]" if isinstance(part, int) else (f".{part}" if key else str(part))
        # Name the route, not just its index, where we can.
        if len(loc) >= 2 and loc[0] == "routes" and isinstance(loc[1], int):
            try:
                name = data["routes"][loc[1]].get("name")
                key += f" (route {name!r})" if name else ""
            except (KeyError, IndexError, AttributeError, TypeError):
                pass
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = f"unknown key (check spelling; see {docs})"
        elif e["type"] == "missing":
            msg = "required key is missing"
        lines.append(f"{path}: {key or '(top level)'}: {msg}")
    return "\n".join(lines)
