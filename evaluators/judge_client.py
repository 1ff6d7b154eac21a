"""Judge routes (through the runner's OpenAI client), and robust score parsing.

Judges are routes from routes.yaml (or a bare base_url + model), so any OpenAI-compatible
server can judge: a local vLLM, or a hosted model through its api_key_env.
"""

from __future__ import annotations

import asyncio
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.config import RouteConfig, load_routes
from harness.mirror.http import RouteClient
from harness.mirror.openai_stream import RetryPolicy, stream_chat


@dataclass
class JudgeRoute:
    name: str
    base_url: str
    model: str
    api_key: str | None = None
    temperature: float = 0.0
    max_tokens: int = 512
    timeout_s: float = 120.0
    max_retries: int = 2
    max_concurrency: int = 4

    @classmethod
    def from_route(cls, route: RouteConfig) -> "JudgeRoute":
        if not route.base_url:
            raise ValueError(f"judge route {route.name!r} has no base_url; start its server and give base_url")
        return cls(
            name=route.name,
            base_url=route.base_url,
            model=route.model,
            api_key=route.api_key(),
            temperature=route.request.temperature,
            max_tokens=max(route.request.max_tokens, 256),
            timeout_s=route.timeout_s,
            max_retries=route.max_retries,
            max_concurrency=route.max_concurrency,
        )


def resolve_judge_route(route: str | None = None, routes: str | Path = "routes.yaml", base_url: str | None = None, model: str | None = None) -> JudgeRoute:
    """A judge from `base_url`+`model`, or the route named `route` in the routes file."""
    if base_url:
        if not model:
            raise ValueError("a judge given by base_url also needs 'model'")
        return JudgeRoute(name=route or "judge", base_url=base_url, model=model)
    if not route:
        raise ValueError("llm judge: give 'route' (a name in routes.yaml) or 'base_url' and 'model'")
    routes_file = load_routes(routes)
    for r in routes_file.routes:
        if r.name == route:
            return JudgeRoute.from_route(r)
    raise ValueError(f"{routes}: no route named {route!r} (have: {', '.join(r.name for r in routes_file.routes)})")


class JudgeClient:
    """A judge calls its route with the runner's own client (harness.mirror.openai_stream): the same
    streaming, timing, retry rules (RetryPolicy: connection errors, 408/409/425/429, 5xx,
    Retry-After) and connection pool as the routes it judges; no second HTTP client."""

    def __init__(self, route: JudgeRoute):
        self.route = route
        self.retry = RetryPolicy(max_retries=route.max_retries)

    def close(self) -> None:
        pass

    def _client(self) -> RouteClient:
        headers = {"Authorization": f"Bearer {self.route.api_key}"} if self.route.api_key else {}
        return RouteClient(self.route.base_url, headers, max_connections=self.route.max_concurrency,
                           read_timeout_s=self.route.timeout_s, connect_timeout_s=min(10.0, self.route.timeout_s))

    def _body(self, messages: list[dict[str, Any]]) -> dict[str, Any]:
        return {"model": self.route.model, "messages": messages, "temperature": self.route.temperature,
                "max_tokens": self.route.max_tokens, "stream": True, "stream_options": {"include_usage": True}}

    async def _complete(self, client: RouteClient, messages: list[dict[str, Any]], slots: asyncio.Semaphore) -> str:
        async with slots:
            result = await stream_chat(client, self._body(messages), {}, self.route.timeout_s, self.retry)
        if not result.ok:
            raise RuntimeError(f"judge route {self.route.name!r} failed: {result.error_type}: {result.error_message}")
        return result.text

    async def _many(self, conversations: list[list[dict[str, Any]]]) -> list[str | Exception]:
        slots = asyncio.Semaphore(max(1, min(self.route.max_concurrency, 16)))
        async with self._client() as client:
            return await asyncio.gather(*(self._complete(client, c, slots) for c in conversations), return_exceptions=True)

    def complete(self, messages: list[dict[str, Any]]) -> str:
        """One chat completion; raises RuntimeError when the call fails after its retries."""
        reply = self.complete_many([messages])[0]
        if isinstance(reply, Exception):
            raise reply
        return reply

    def complete_many(self, conversations: list[list[dict[str, Any]]]) -> list[str | Exception]:
        """Concurrent completions (bounded by the route's max_concurrency); errors returned, not raised."""
        return asyncio.run(self._many(conversations))


_SCORE_PATTERNS = [
    re.compile(r"\bscore\b[^0-9\-]{0,20}(-?\d+(?:\.\d+)?)\s*(?:/|out of)\s*(\d+(?:\.\d+)?)", re.I),
    re.compile(r"\bscore\b[^0-9\-]{0,20}(-?\d+(?:\.\d+)?)", re.I),
    re.compile(r"(-?\d+(?:\.\d+)?)\s*(?:/|out of)\s*(\d+(?:\.\d+)?)", re.I),
    re.compile(r"^\s*(-?\d+(?:\.\d+)?)\s*$", re.M),
]


@dataclass
class ParsedScore:
    value: float | None  # raw value on the rubric's scale
    scale_max: float | None  # from "4/5"; None when the judge gave no scale
    reasoning: str
    error: str | None = None


def parse_score(text: str) -> ParsedScore:
    """Find the judge's score: JSON {"score": ..}, "Score: 4/5", "4 out of 5", or a bare number line.
    The last matching "Score" wins (judges often restate the scale first)."""
    text = text or ""
    for candidate in _json_objects(text):
        if isinstance(candidate, dict) and "score" in candidate:
            try:
                value = float(candidate["score"])
            except (TypeError, ValueError):
                return ParsedScore(None, None, text, f"score is not a number: {candidate['score']!r}")
            reasoning = str(candidate.get("reasoning") or candidate.get("reason") or candidate.get("explanation") or text)
            scale = candidate.get("max") or candidate.get("out_of")
            return ParsedScore(value, float(scale) if scale else None, reasoning)
    for pattern in _SCORE_PATTERNS:
        matches = list(pattern.finditer(text))
        if matches:
            m = matches[-1]
            scale = float(m.group(2)) if m.re.groups >= 2 and m.group(2) else None
            return ParsedScore(float(m.group(1)), scale, text)
    return ParsedScore(None, None, text, "no score found in the judge's reply")


def _json_objects(text: str) -> list[Any]:
    out = []
    fenced = re.findall(r"```(?:json)?\s*(\{.*?\})\s*```", text, re.S)
    for chunk in fenced or re.findall(r"\{[^{}]*\}", text, re.S):
        try:
            out.append(json.loads(chunk))
        except json.JSONDecodeError:
            continue
    return out
