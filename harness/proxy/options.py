"""What a proxy session is told: where to listen, which route answers, how much is mirrored, and
the cohort rules; validated at the boundary (pydantic), pure otherwise."""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path
from typing import Any, Mapping

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from harness.config import ConfigError, describe_validation_error, read_yaml
from harness.proxy.capture import content_text

COHORT_HEADER = "X-Routecheck-Cohort"
DEFAULT_COHORT = "default"


class CohortRule(BaseModel):
    """One rule: a regex on the system prompt or the `user` field, or a key of the request's
    `metadata`. The first rule that matches names the cohort: `cohort`, else the regex's named
    group `cohort`, else (metadata) the key's value."""

    model_config = ConfigDict(extra="forbid")
    system: str | None = None
    user: str | None = None
    metadata: str | None = None
    cohort: str | None = None

    @model_validator(mode="after")
    def _one_source(self) -> "CohortRule":
        given = [k for k in ("system", "user", "metadata") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of 'system' (regex), 'user' (regex) or 'metadata' (key)")
        pattern = self.system if self.system is not None else self.user
        if pattern is not None:
            try:
                rx = re.compile(pattern)
            except re.error as e:
                raise ValueError(f"not a valid regex ({e})") from None
            if self.cohort is None and "cohort" not in rx.groupindex:
                raise ValueError("a regex rule needs 'cohort', or a named group (?P<cohort>...) in the regex")
        return self

    def match(self, system: str, user: Any, metadata: Any) -> str | None:
        if self.metadata is not None:
            value = metadata.get(self.metadata) if isinstance(metadata, dict) else None
            return None if value is None else (self.cohort or str(value))
        subject = system if self.system is not None else (user if isinstance(user, str) else None)
        if subject is None:
            return None
        found = re.search(self.system if self.system is not None else self.user, subject)  # type: ignore[arg-type]
        if not found:
            return None
        return self.cohort or found.group("cohort")


def resolve_cohort(headers: Mapping[str, str], body: dict[str, Any], rules: list[CohortRule]) -> str:
    """The header X-Routecheck-Cohort, else the first matching rule, else `default`."""
    given = headers.get(COHORT_HEADER)
    if given:
        return given.strip()[:200]
    if rules:
        system = "\n".join(content_text(m.get("content")) for m in body.get("messages") or ()
                           if isinstance(m, dict) and m.get("role") in ("system", "developer"))
        for rule in rules:
            cohort = rule.match(system, body.get("user"), body.get("metadata"))
            if cohort:
                return cohort[:200]
    return DEFAULT_COHORT


class ProxySettings(BaseModel):
    """The file given with --config (every key optional; command-line flags win)."""

    model_config = ConfigDict(extra="forbid")
    cohort_rules: list[CohortRule] = Field(default_factory=list)
    capture_content: bool = True
    # Read at start (when --mirror-rate is not given) and again on SIGHUP: the live way to change it
    # besides POST /admin/mirror-rate.
    mirror_rate: float | None = Field(None, ge=0.0, le=1.0)


def load_settings(path: str | Path | None) -> ProxySettings:
    if path is None:
        return ProxySettings()
    path = Path(path)
    data = read_yaml(path, "proxy settings") or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping (cohort_rules, capture_content, mirror_rate), got {type(data).__name__}")
    try:
        return ProxySettings.model_validate(data)
    except ValidationError as e:
        raise ConfigError(describe_validation_error(path, e, "docs/proxy.md")) from None


class ProxyOptions(BaseModel):
    """One proxy session."""

    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True)
    db: Path
    host: str = "127.0.0.1"
    port: int = Field(8080, ge=0, le=65535)
    primary: str | None = None  # route name; None: the baseline
    mirror_rate: float = Field(1.0, ge=0.0, le=1.0)
    queue_size: int = Field(256, ge=1)  # mirror calls waiting per candidate, beyond its max_concurrency in flight
    auth_token_env: str | None = None
    window_s: float | None = Field(None, gt=0)  # None: one run for the whole session
    settings: ProxySettings = Field(default_factory=ProxySettings)
    config_path: Path | None = None  # --config, re-read on SIGHUP (mirror_rate, cohort_rules)
    otlp_endpoint: str | None = None
    seed: int | None = None  # sampling seed (tests); None: fresh
    shutdown_grace_s: float = Field(10.0, ge=0)  # in-flight mirror calls get this long at shutdown

    @field_validator("host")
    @classmethod
    def _host(cls, v: str) -> str:
        return v.strip("[]")

    @property
    def loopback(self) -> bool:
        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False

    def stored(self) -> dict[str, Any]:
        """What the run row keeps (options JSON): no secrets, only the token's variable name."""
        return {"source": "proxy", "listen": f"{self.host}:{self.port}", "primary": self.primary,
                "mirror_rate": self.mirror_rate, "queue_size": self.queue_size, "auth_token_env": self.auth_token_env,
                "window_s": self.window_s, "capture_content": self.settings.capture_content,
                "cohort_rules": [r.model_dump(exclude_none=True) for r in self.settings.cohort_rules]}


def parse_listen(value: str) -> tuple[str, int]:
    """HOST:PORT (IPv6 in brackets) -> (host, port)."""
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit():
        raise ConfigError(f"--listen {value!r}: expected HOST:PORT, for example 127.0.0.1:8080")
    return host.strip("[]") or "127.0.0.1", int(port)
