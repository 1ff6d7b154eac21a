"""The proxy's upstream client: HTTP/1.1 keep-alive connections as bare asyncio protocols (httptools).

Why not aiohttp's client: each streamed chunk went through its StreamReader and woke the reading
task (a future and a task step per chunk), and each request built a ClientRequest, header
multidicts and a connector lease; for ~36 chunks per answer, on the primary's path and again for
every mirrored call, that was most of the proxy's CPU that was not system calls
(docs/benchmarks.md, "Shadow proxy"). Here a chunk is one `on_body` callback inside the read that
received it: kept with its arrival time, and for the primary handed to the writer at once.

Failures are named as aiohttp named them, so recorded rows read as before: a refused or failed
connect is `ClientConnectorError`, a connection closed before the answer's head
`ServerDisconnectedError`, an answer cut or malformed after its head `ClientPayloadError`, a head
that cannot be parsed `ClientResponseError`.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import time
from typing import Callable
from urllib.parse import urlsplit

import httptools


class UpstreamError(Exception):
    """A transport failure; `kind` is the error type recorded (aiohttp's class name for the same failure)."""

    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind


class Answer:
    """One response as it arrives: status and headers once, then body pieces with their arrival times.

    `on_piece`, when set, is called with each piece inside the read that received it (the primary's
    pass-through); otherwise pieces are only kept. `done` resolves at the end of the message, or
    with an UpstreamError."""

    __slots__ = ("status", "reason", "headers", "chunked", "length", "chunks", "times", "head", "done", "on_piece")

    def __init__(self, loop: asyncio.AbstractEventLoop, chunks: list[bytes], times: list[float]):
        self.status: int | None = None
        self.reason = ""
        self.headers: list[tuple[str, str]] = []
        self.chunked = False
        self.length: int | None = None
        self.chunks, self.times = chunks, times
        self.head: asyncio.Future[None] = loop.create_future()
        self.done: asyncio.Future[None] = loop.create_future()
        self.on_piece: Callable[[bytes], None] | None = None

    def header(self, name: str) -> str | None:
        name = name.lower()
        return next((v for k, v in self.headers if k.lower() == name), None)

    def fail(self, err: UpstreamError) -> None:
        for f in (self.head, self.done):
            if not f.done():
                f.set_exception(err)
                f.exception()  # marked retrieved: nobody awaits `done` once the head failed

    def complete(self) -> None:
        if not self.done.done():
            self.done.set_result(None)


_REASONS = {200: "OK", 201: "Created", 204: "No Content", 400: "Bad Request", 401: "Unauthorized", 403: "Forbidden",
            404: "Not Found", 408: "Request Timeout", 409: "Conflict", 422: "Unprocessable Entity", 429: "Too Many Requests",
            500: "Internal Server Error", 502: "Bad Gateway", 503: "Service Unavailable", 504: "Gateway Timeout"}


class Connection(asyncio.Protocol):
    """One keep-alive connection; one request at a time."""

    def __init__(self, pool: "Pool"):
        self.pool = pool
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.answer: Answer | None = None
        self.closed = False
        self.reusable = False
        self.used = 0
        self.idle_since = 0.0
        self._name = b""
        self.paused = False

    # -- asyncio ---------------------------------------------------------------------------------
    def connection_made(self, transport):  # type: ignore[override]
        self.transport = transport
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def connection_lost(self, exc):  # type: ignore[override]
        self.closed = True
        a = self.answer
        if a is None:
            return
        if not a.head.done():
            a.fail(UpstreamError("ServerDisconnectedError", "Server disconnected"))
        elif not a.done.done():
            if not a.chunked and a.length is None:  # delimited by the close: complete
                a.complete()
            else:
                a.fail(UpstreamError("ClientPayloadError", "Response payload is not completed: the connection closed"
                                      if exc is None else f"Response payload is not completed: {exc!r}"))

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as e:
            a = self.answer
            if a is not None:
                kind = "ClientPayloadError" if a.head.done() else "ClientResponseError"
                a.fail(UpstreamError(kind, f"the answer could not be parsed: {e}"))
            self.reusable = False
            self.transport.close()

    # -- httptools -------------------------------------------------------------------------------
    def on_header(self, name: bytes, value: bytes) -> None:
        self.answer.headers.append((name.decode("latin-1"), value.decode("latin-1")))

    def on_headers_complete(self) -> None:
        a = self.answer
        if a.head.done():  # the caller gave up (cancelled)
            return
        a.status = self.parser.get_status_code()
        a.reason = _REASONS.get(a.status, "")
        for k, v in a.headers:
            lk = k.lower()
            if lk == "transfer-encoding" and "chunked" in v.lower():
                a.chunked = True
            elif lk == "content-length" and v.strip().isdigit():
                a.length = int(v)
        self.reusable = self.parser.should_keep_alive()
        a.head.set_result(None)

    def on_body(self, body: bytes) -> None:
        a = self.answer
        a.times.append(time.perf_counter())
        a.chunks.append(body)
        if a.on_piece is not None:
            a.on_piece(body)

    def on_message_complete(self) -> None:
        if self.answer is not None:
            self.answer.complete()

    # -- use -------------------------------------------------------------------------------------
    def send(self, head: bytes, body: bytes, answer: Answer) -> None:
        self.answer = answer
        self.used += 1
        self.transport.write(head + body if len(body) < 16384 else head)
        if len(body) >= 16384:
            self.transport.write(body)

    def pause(self) -> None:
        if not self.paused and self.transport is not None:
            self.paused = True
            self.transport.pause_reading()

    def resume(self) -> None:
        if self.paused and self.transport is not None:
            self.paused = False
            self.transport.resume_reading()


class Pool:
    """Keep-alive connections to one route (`limit` at most in use; more wait)."""

    IDLE_S = 3.0  # servers close idle keep-alive connections (uvicorn after 5 s); reconnect before they do

    def __init__(self, base_url: str, limit: int, connect_timeout_s: float, local_addr: tuple[str, int] | None = None):
        u = urlsplit(base_url)
        self.host = u.hostname or "127.0.0.1"
        self.tls = u.scheme == "https"
        self.port = u.port or (443 if self.tls else 80)
        self.prefix = u.path.rstrip("/")
        default_port = (u.port is None) or (self.port == (443 if self.tls else 80))
        host = f"[{self.host}]" if ":" in self.host else self.host
        self.host_header = host if default_port else f"{host}:{self.port}"
        self.connect_timeout_s = connect_timeout_s
        self.local_addr = local_addr  # the source address, as aiohttp's TCPConnector(local_addr=) takes it
        self._slots = asyncio.Semaphore(limit)
        self._idle: list[Connection] = []
        self._ssl = ssl.create_default_context() if self.tls else None
        self._all: set[Connection] = set()

    async def _connect(self) -> Connection:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self.connect_timeout_s):
                _, conn = await loop.create_connection(lambda: Connection(self), self.host, self.port, ssl=self._ssl,
                                                       server_hostname=self.host if self.tls else None,
                                                       local_addr=self.local_addr)
        except (OSError, TimeoutError, ssl.SSLError) as e:
            raise self._refused(f"{e.__class__.__name__}: {e}") from None
        t = conn.transport
        if t is not None and t.get_extra_info("sockname") == t.get_extra_info("peername"):
            # A TCP self-connect: with nothing listening on a local port in the ephemeral range, the
            # kernel may pick that very port for the connection, which then reaches itself (Go's net
            # package checks for this too). It is a refused connection, not an answer to parse.
            t.close()
            raise self._refused("nothing listens there: the connection reached itself")
        self._all.add(conn)
        return conn

    def _refused(self, why: str) -> UpstreamError:
        return UpstreamError("ClientConnectorError", f"Cannot connect to host {self.host}:{self.port} "
                             f"ssl:{'default' if self.tls else 'False'} [{why}]")

    def _take_idle(self) -> Connection | None:
        now = time.monotonic()
        while self._idle:
            conn = self._idle.pop()
            if not conn.closed and conn.transport is not None and not conn.transport.is_closing() and now - conn.idle_since < self.IDLE_S:
                return conn
            self._discard(conn)
        return None

    def _discard(self, conn: Connection) -> None:
        self._all.discard(conn)
        if conn.transport is not None:
            conn.transport.close()

    def release(self, conn: Connection, ok: bool) -> None:
        conn.answer = None
        if ok and conn.reusable and not conn.closed:
            conn.idle_since = time.monotonic()
            self._idle.append(conn)
        else:
            self._discard(conn)

    def request_head(self, path: str, headers: dict[str, str], length: int) -> bytes:
        lines = [f"POST {self.prefix}{path} HTTP/1.1", f"Host: {self.host_header}", f"Content-Length: {length}"]
        lines += [f"{k}: {v}" for k, v in headers.items() if k.lower() not in ("host", "content-length")]
        given = {k.lower() for k in headers}
        if "content-type" not in given:
            lines.append("Content-Type: application/json")
        if "accept" not in given:  # as aiohttp's client added it
            lines.append("Accept: */*")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1", "replace")

    async def post(self, path: str, body: bytes, headers: dict[str, str], answer: Answer) -> Connection:
        """Send the request and wait for the answer's head; returns the connection (release it when
        `answer.done` resolved). A kept-alive connection the server closed before answering is
        retried once on a new one. Raises UpstreamError."""
        await self._slots.acquire()
        try:
            head = self.request_head(path, headers, len(body))
            for attempt in (0, 1):
                conn = self._take_idle() if attempt == 0 else None
                reused = conn is not None
                if conn is None:
                    conn = await self._connect()
                conn.send(head, body, answer)
                try:
                    await answer.head
                    return conn
                except UpstreamError as e:
                    self.release(conn, False)
                    if attempt or not (reused and e.kind == "ServerDisconnectedError"):
                        raise
                    loop = asyncio.get_running_loop()
                    answer.head, answer.done, answer.headers = loop.create_future(), loop.create_future(), []
                except BaseException:
                    self.release(conn, False)
                    raise
            raise AssertionError("unreachable")
        except BaseException:
            self._slots.release()
            raise

    def finish(self, conn: Connection, ok: bool) -> None:
        """Give the connection back after the answer (ok: read to its end)."""
        self.release(conn, ok)
        self._slots.release()

    async def close(self) -> None:
        for conn in list(self._all):
            self._discard(conn)
        self._idle.clear()
