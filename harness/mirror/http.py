"""One route's HTTP client for streamed completions: aiohttp, as `vllm bench serve` uses.

Chosen by measurement (docs/benchmarks.md, bench/peers.py): streaming one 16-token answer cost
about 4 ms of client CPU per request through httpx/httpcore/h11 (pool placement, anyio/sniffio
lookups, the pure-Python HTTP parser per SSE event) against about 0.8 ms through aiohttp, whose
response parser is C. The connector keeps up to `max_connections` keep-alive connections with
TCP_NODELAY (aiohttp sets it on every connection), so a request's body never waits for a delayed
ACK that would be measured as time to first token.

Proxy (HTTP(S)_PROXY, NO_PROXY) and .netrc settings are read from the environment once, when the
client is made, not per request: aiohttp's `trust_env` reads both on every request through two
thread-pool hops (about a quarter of the client's CPU per request at concurrency 64, py-spy).

Transport failures are named as httpx named them (`ConnectError`, `RemoteProtocolError`, ...), so
stored error types stay what they were: `transport_error` maps aiohttp's exceptions.
"""

from __future__ import annotations

import json
import ssl
from types import SimpleNamespace
from typing import Any

import aiohttp
import certifi
from aiohttp import http_exceptions
from aiohttp.helpers import basicauth_from_netrc, get_env_proxy_for_url, netrc_from_env
from yarl import URL


# json.dumps builds an encoder per call when given options; this one is built once (same bytes).
_BODY_JSON = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))


class TransportError(Exception):
    """A transport failure: `kind` is the stored error type, `retryable` whether to try again."""

    def __init__(self, kind: str, message: str, retryable: bool = True):
        super().__init__(message)
        self.kind, self.retryable = kind, retryable


async def _headers_sent(session: Any, ctx: SimpleNamespace, params: Any) -> None:
    mark = ctx.trace_request_ctx
    if mark is not None:
        mark()


def _trace_config() -> aiohttp.TraceConfig:
    cfg = aiohttp.TraceConfig()
    cfg.on_request_headers_sent.append(_headers_sent)
    return cfg


class RouteClient:
    """aiohttp session for one route: base URL, default headers (the API key), timeouts.

    Create inside the running event loop; `aclose()` (or `async with`) when done.
    """

    def __init__(self, base_url: str, headers: dict[str, str] | None = None, max_connections: int = 100,
                 read_timeout_s: float | None = None, connect_timeout_s: float = 10.0):
        self.base_url = base_url.rstrip("/") + "/"
        self._urls: dict[str, URL] = {}
        headers = headers or {}
        base = URL(self.base_url)
        self.proxy, self.proxy_auth = _env_proxy(base)
        auth = None if any(k.lower() == "authorization" for k in headers) else _netrc_auth(base)
        connector = aiohttp.TCPConnector(limit=max(1, max_connections), limit_per_host=0,
                                         ssl=ssl.create_default_context(cafile=certifi.where()))
        self.session = aiohttp.ClientSession(
            connector=connector, headers=headers, auth=auth, trust_env=False, trace_configs=[_trace_config()],
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=connect_timeout_s, sock_read=read_timeout_s),
        )

    def url(self, path: str) -> URL:
        """The absolute URL of `path` under the base URL, parsed once per path."""
        url = self._urls.get(path)
        if url is None:
            url = self._urls[path] = URL(self.base_url + path.lstrip("/"))
        return url

    def post_json(self, path: str, body: dict[str, Any], headers: dict[str, str], on_sent: Any = None):
        """`async with client.post_json(...) as resp`: the request sent, the response's head read.
        `on_sent()` is called when the request's headers have been written (GuideLLM's clock start)."""
        data = _BODY_JSON.encode(body).encode()
        return self.session.post(self.url(path), data=data, headers={**headers, "Content-Type": "application/json"},
                                 proxy=self.proxy, proxy_auth=self.proxy_auth, trace_request_ctx=on_sent)

    async def aclose(self) -> None:
        await self.session.close()

    async def __aenter__(self) -> RouteClient:
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.aclose()


def _env_proxy(url: URL) -> tuple[URL | None, aiohttp.BasicAuth | None]:
    """The proxy the environment names for `url` (None when none is set or NO_PROXY excludes it)."""
    try:
        return get_env_proxy_for_url(url)
    except LookupError:
        return None, None


def _netrc_auth(url: URL) -> aiohttp.BasicAuth | None:
    """Basic auth from .netrc (or $NETRC) for the route's host, as httpx's trust_env gave it."""
    try:
        return basicauth_from_netrc(netrc_from_env(), url.host or "")
    except LookupError:
        return None


def transport_error(e: BaseException) -> TransportError:
    """aiohttp's exception as the stored error type (httpx's names, which earlier rows carry)."""
    text = str(e) or type(e).__name__
    if isinstance(e, (aiohttp.InvalidURL, aiohttp.NonHttpUrlClientError)):
        return TransportError("bad_url", text, retryable=False)
    if isinstance(e, aiohttp.ConnectionTimeoutError):
        return TransportError("ConnectTimeout", text)
    if isinstance(e, aiohttp.ServerTimeoutError):
        return TransportError("ReadTimeout", text)
    if isinstance(e, aiohttp.ClientConnectorError):
        return TransportError("ConnectError", text)
    if isinstance(e, aiohttp.ClientPayloadError):
        cause = e.__cause__ or (e.args[1] if len(e.args) > 1 else None)
        if isinstance(cause, http_exceptions.ContentEncodingError) or "content-encoding" in text.lower():
            return TransportError("bad_body", f"the body cannot be decoded as its content-encoding says: {text}", retryable=False)
        return TransportError("RemoteProtocolError", text)
    if isinstance(e, (aiohttp.ServerDisconnectedError, aiohttp.ClientResponseError, http_exceptions.HttpProcessingError)):
        return TransportError("RemoteProtocolError", text)
    if isinstance(e, aiohttp.ClientOSError):
        return TransportError("ReadError", text)
    return TransportError(type(e).__name__, text)
