"""An httpx transport that spreads requests over small connection pools, with TCP_NODELAY.

Kept for the benchmarks only (bench/proxy_stack.py's httpx stacks): the mirror streams with aiohttp
(harness/mirror/http.py), chosen by measurement against this, httpx at its best.

httpcore's pool scans every connection for every request it places, so with one pool of 64-256
connections that scan costs milliseconds of CPU per request (measured with bench/runner_overhead.py).
Several pools of at most SHARD_SIZE connections, each request sent to the least busy, keep the
scan short while the route still has one httpx.AsyncClient.
"""

from __future__ import annotations

import math
import socket
import ssl
from typing import AsyncIterator, Callable

import certifi
import httpx

SHARD_SIZE = 8


class _CountedStream(httpx.AsyncByteStream):
    def __init__(self, inner: httpx.AsyncByteStream, on_close: Callable[[], None]):
        self._inner, self._on_close, self._closed = inner, on_close, False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in self._inner:
            yield chunk

    async def aclose(self) -> None:
        try:
            await self._inner.aclose()
        finally:
            if not self._closed:
                self._closed = True
                self._on_close()


class ShardedTransport(httpx.AsyncBaseTransport):
    def __init__(self, max_connections: int, shard_size: int = SHARD_SIZE):
        n = max(1, math.ceil(max_connections / shard_size))
        per = math.ceil(max_connections / n)
        ctx = ssl.create_default_context(cafile=certifi.where())  # one context, not one per shard
        limits = httpx.Limits(max_connections=per, max_keepalive_connections=per)
        # TCP_NODELAY: httpcore writes headers and body separately; with Nagle on, the body waits for the
        # server's delayed ACK (~40 ms on Linux), which would be measured as time to first token.
        nodelay = [(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)]
        self._shards = [httpx.AsyncHTTPTransport(verify=ctx, limits=limits, socket_options=nodelay) for _ in range(n)]
        self._busy = [0] * n

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        i = min(range(len(self._shards)), key=self._busy.__getitem__)
        self._busy[i] += 1

        def release() -> None:
            self._busy[i] -= 1

        try:
            response = await self._shards[i].handle_async_request(request)
        except BaseException:
            release()
            raise
        return httpx.Response(response.status_code, headers=response.headers, extensions=response.extensions,
                              stream=_CountedStream(response.stream, release))

    async def aclose(self) -> None:
        for shard in self._shards:
            await shard.aclose()
