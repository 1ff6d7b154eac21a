"""routes.yaml: the routes to mirror, validated at the boundary with errors that name file and key."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator


class ConfigError(ValueError):
    """A bad input file; the message names the file and the key or line."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RequestDefaults(_Strict):
    temperature: float = Field(0.0, ge=0.0, le=2.0)
    max_tokens: int = Field(256, gt=0)
    seed: int | None = None
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    # Engine-specific body fields sent as they are (vLLM: ignore_eos, min_tokens, top_k, ...);
    # the keys routecheck sets itself cannot be overridden here.
    extra_body: dict[str, Any] = Field(default_factory=dict)

    @field_validator("extra_body")
    @classmethod
    def _not_ours(cls, v: dict[str, Any]) -> dict[str, Any]:
        ours = sorted(set(v) & RESERVED_BODY_KEYS)
        if ours:
            raise ValueError(f"{', '.join(ours)}: set by routecheck (or by request.temperature/max_tokens/seed/top_p), "
                             "not in extra_body")
        return v


RESERVED_BODY_KEYS = frozenset({"model", "messages", "stream", "stream_options", "tools", "temperature", "max_tokens",
                                "seed", "top_p"})


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
    # MoE routing from the server (harness/experts/capture.py): `expert_capture` loads routecheck's
    # plugin into the served engine (live top-k ids and router logits per request);
    # `return_routed_experts` sends non-streamed calls and stores the `routed_experts` the server returns.
    expert_capture: bool = False
    return_routed_experts: bool = False

    @field_validator("base_url")
    @classmethod
    def _http_url(cls, url: str | None) -> str | None:
        """Checked here, so a typo stops the run before it starts instead of failing every call."""
        if url is None:
            return None
        try:
            parts = urlsplit(url.strip())
            parts.port  # noqa: B018 - raises on a port that is not a number in range
        except ValueError:
            parts = None
        if parts is None or parts.scheme not in ("http", "https") or not parts.hostname or any(c.isspace() for c in url.strip()):
            raise ValueError(f"expected an http(s) URL such as http://127.0.0.1:8000/v1, got {url!r}")
        return url.strip()

    @model_validator(mode="after")
    def _one_endpoint(self) -> "RouteConfig":
        if (self.base_url is None) == (self.serve is None):
            raise ValueError("give exactly one of 'base_url' (a running server) or 'serve' (routecheck starts vLLM)")
        if self.architecture == "moe" and (self.num_experts is None or self.active_experts is None):
            raise ValueError("architecture 'moe' needs 'num_experts' and 'active_experts'")
        if self.num_experts and self.active_experts and self.active_experts > self.num_experts:
            raise ValueError("'active_experts' cannot exceed 'num_experts'")
        if self.expert_capture and (self.serve is None or self.architecture != "moe"):
            raise ValueError("'expert_capture' needs a 'serve:' route (routecheck starts the server) with architecture 'moe'")
        if self.return_routed_experts and self.architecture != "moe":
            raise ValueError("'return_routed_experts' needs architecture 'moe' (and 'num_experts')")
        return self

    def api_key(self) -> str | None:
        """Read the key from the environment; it is never stored in routes.yaml or the store."""
        if not self.api_key_env:
            return None
        key = os.environ.get(self.api_key_env)
        if not key:
            state = "is not set" if key is None else "is empty"
            raise ConfigError(f"route {self.name!r}: environment variable {self.api_key_env} (api_key_env) {state}")
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

    def check_api_keys(self, path: Path | str) -> None:
        """Every `api_key_env` is set and not empty: checked before a run starts, so a missing key is
        one error up front, not a run whose every call fails (or one left at `running`)."""
        problems = []
        for i, r in enumerate(self.routes):
            if r.api_key_env and not os.environ.get(r.api_key_env):
                state = "is not set" if os.environ.get(r.api_key_env) is None else "is empty"
                problems.append(f"{path}: routes[{i}].api_key_env (route {r.name!r}): environment variable "
                                f"{r.api_key_env} {state}; export it, or remove api_key_env if the server needs no key")
        if problems:
            raise ConfigError("\n".join(problems))


class _UniqueKeyLoader(yaml.SafeLoader):
    """safe_load, except that a key given twice in one mapping is an error (YAML would keep the last)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen = set()
        for key_node, _value in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                duplicate = key in seen
                seen.add(key)
            except TypeError:  # unhashable: SafeLoader reports it
                continue
            if duplicate:
                raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
        return super().construct_mapping(node, deep=deep)


def read_yaml(path: Path, what: str) -> Any:
    """Parse a YAML file; errors name the file, and the line where YAML itself is broken."""
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"{path}: is a directory; expected the {what} (a YAML file)")
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise ConfigError(f"{path}: cannot read {what}: {e.strerror}") from None
    if raw[:2] == b"\x1f\x8b":
        raise ConfigError(f"{path}: gzip-compressed; expected the {what} as plain YAML text")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw.count(b"\n", 0, e.start) + 1
        raise ConfigError(f"{path}:{line}: not UTF-8 text (byte 0x{raw[e.start]:02x}); save the {what} as UTF-8") from None
    try:
        return yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        position = getattr(e, "position", None)  # a ReaderError (a control character) has no mark
        # Lines as an editor counts them (YAML also breaks lines at NEL, U+2028 and U+2029).
        at = mark.index if mark is not None else position
        where = f":{text.count(chr(10), 0, at) + 1}" if isinstance(at, int) else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(f"{path}{where}: not valid YAML: {problem}") from None
    except RecursionError:
        raise ConfigError(f"{path}: nested too deeply to be the {what}") from None


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
        if r.serve and not Path(r.serve.model).is_absolute() and path_exists(base / r.serve.model):
            r.serve.model = str((base / r.serve.model).resolve())


def path_exists(path: Path) -> bool:
    """Path.exists for a path from a config file: False, not an exception, for a NUL byte or an over-long name."""
    try:
        return path.exists()
    except (OSError, ValueError):
        return False


def key_text(part: Any) -> str:
    """A key of a location as written in an error: plain when it is a plain name, else repr() (so a
    key holding a newline, a control character or nothing at all cannot break the one-line message)."""
    if isinstance(part, str) and part and part.isprintable() and part.strip() == part and len(part) <= 80:
        return part
    return repr(part) if len(repr(part)) <= 80 else repr(part)[:77] + "..."


def describe_validation_error(path: Path, err: ValidationError, docs: str, data: Any = None) -> str:
    """One line per problem: `file: key.path (route 'name'): what was wrong`; `docs` names where keys are documented."""
    lines = []
    for e in err.errors():
        loc = e["loc"]
        key = ""
        for part in loc:
            key += f"[{part}]" if isinstance(part, int) else (f".{key_text(part)}" if key else key_text(part))
        # Name the route, not just its index, where we can.
        if len(loc) >= 2 and loc[0] == "routes" and isinstance(loc[1], int):
            try:
                name = data["routes"][loc[1]].get("name")
                key += f" (route {repr(name)[:60]})" if name else ""
            except (KeyError, IndexError, AttributeError, TypeError):
                pass
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = f"unknown key (check spelling; see {docs})"
        elif e["type"] == "missing":
            msg = "required key is missing"
        lines.append(f"{path}: {key or '(top level)'}: {msg}")
    return "\n".join(lines)
