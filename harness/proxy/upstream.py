"""Calling a route from the proxy: a keep-alive pool per route (h1.py), the headers passed each way,
and the background call of a mirrored request (the primary's call streams to the client in server.py).
`GET /v1/models` (rare) goes through an aiohttp session.

Bodies are never decompressed and no Accept-Encoding is added, so the bytes kept are the bytes sent.
"""

from __future__ import annotations

import asyncio
import socket
import time
from typing import Iterable, Mapping

import aiohttp

from harness.config import RouteConfig
from harness.proxy.capture import Exchange
from harness.proxy.h1 import Answer, Pool, UpstreamError

# Never forwarded: hop-by-hop (RFC 9110 7.6.1), framing the server redoes, and what the proxy sets itself.
HOP_BY_HOP = frozenset({"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer",
                        "transfer-encoding", "upgrade", "content-length", "host"})
NOT_TO_UPSTREAM = HOP_BY_HOP | {"authorization", "accept-encoding", "traceparent", "tracestate", "cookie"}
NOT_TO_CLIENT = HOP_BY_HOP | {"date", "server"}


def request_headers(client: Mapping[str, str], route_key: str | None) -> dict[str, str]:
    """The client's headers minus hop-by-hop ones, its token and routecheck's own; the route's key."""
    out = {k: v for k, v in client.items() if k.lower() not in NOT_TO_UPSTREAM and not k.lower().startswith("x-routecheck-")}
    if route_key:
        out["Authorization"] = f"Bearer {route_key}"
    return out


def response_headers(upstream: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    return [(k, v) for k, v in upstream if k.lower() not in NOT_TO_CLIENT]


CHAT_PATH = "/chat/completions"  # under the route's base_url


def make_pool(route: RouteConfig, connections: int) -> Pool:
    return Pool(route.base_url, connections, connect_timeout_s=min(10.0, route.timeout_s))


def make_session(route: RouteConfig, connections: int) -> aiohttp.ClientSession:
    connector = aiohttp.TCPConnector(limit=connections, limit_per_host=connections, ttl_dns_cache=300,
                                     family=socket.AF_UNSPEC, enable_cleanup_closed=True)
    return aiohttp.ClientSession(connector=connector, auto_decompress=False, skip_auto_headers=("Accept-Encoding", "User-Agent"),
                                 timeout=aiohttp.ClientTimeout(total=None, connect=min(10.0, route.timeout_s)))


def new_exchange() -> Exchange:
    return Exchange(wall_start=time.time(), t_sent=time.perf_counter())


async def fetch(pool: Pool, data: bytes, headers: dict[str, str], timeout_s: float, ex: Exchange) -> Exchange:
    """POST and keep every chunk with its arrival time in `ex`; never raises (except cancellation,
    after which `ex` holds what had arrived)."""
    ex.wall_start, ex.t_sent = time.time(), time.perf_counter()
    answer = Answer(asyncio.get_running_loop(), ex.chunks, ex.times)
    conn, ok = None, False
    try:
        async with asyncio.timeout(timeout_s):
            conn = await pool.post(CHAT_PATH, data, headers, answer)
            ex.status = answer.status
            ex.content_type = answer.header("content-type") or ""
            await answer.done
            ok = True
    except TimeoutError:
        ex.error_type, ex.error_message, ex.timed_out = "timeout", f"no complete answer within {timeout_s:g} s", True
    except UpstreamError as e:
        ex.error_type, ex.error_message = e.kind, (str(e) or e.kind)[:500]
    finally:
        if conn is not None:
            pool.finish(conn, ok)
    ex.t_end = time.perf_counter()
    return ex
