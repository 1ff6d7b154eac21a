"""A lean stub for load benchmarks: the stub server's streamed answer, byte for byte, at a fraction of its CPU.

The stub server (stub_server.py: Starlette on uvicorn) costs 2-3.5 ms of CPU per streamed answer
of 32 tokens here; at 200 requests/s two of them (primary and candidate) take about a core of a
2-core machine, which is then missing from whatever is measured beside them. This one is a bare
asyncio protocol on uvloop with httptools: no task per request, each token a timer callback writing
one HTTP chunk. The chunks are built by the stub server's own `sse_chunk`, so what a client reads
is what the stub server sends. Only what the benchmarks use: POST /v1/chat/completions (streamed or
not, a fixed `answer`, `ttft_s`, `tokens_per_s`, usage on `stream_options.include_usage`),
GET /health; anything else is a 404.

    python -m harness.testing.lean_stub --port 0 --ttft-s 0.02 --tokens-per-s 400 --answer "w0 w1"
prints `stub listening on http://127.0.0.1:PORT` once it accepts connections.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import socket
import time
from email.utils import formatdate
from typing import Any

import httptools
import uvloop

from harness.corpus import content_text
from harness.testing.stub_server import sse_chunk, sse_usage_chunk

_counter = itertools.count()


def _head(status: int, content_type: str, length: int | None = None) -> bytes:
    reason = {200: "OK", 400: "Bad Request", 404: "Not Found"}.get(status, "Error")
    framing = f"content-length: {length}" if length is not None else "transfer-encoding: chunked"
    return (f"HTTP/1.1 {status} {reason}\r\ndate: {formatdate(usegmt=True)}\r\nserver: uvicorn\r\n"
            f"content-type: {content_type}\r\n{framing}\r\n\r\n").encode()


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


class _Conn(asyncio.Protocol):
    """One client connection; requests are answered in order (the benchmarks' clients do not pipeline)."""

    def __init__(self, cfg: dict[str, Any]):
        self.cfg = cfg
        self.loop = asyncio.get_running_loop()
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.url = b""
        self.body: list[bytes] = []
        self.timers: list[asyncio.TimerHandle] = []

    def connection_made(self, transport):  # type: ignore[override]
        self.transport = transport
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def connection_lost(self, exc):  # type: ignore[override]
        for t in self.timers:
            t.cancel()
        self.transport = None

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self._send(_head(400, "text/plain", 0))
            self.transport.close()

    # httptools callbacks
    def on_message_begin(self) -> None:
        self.url, self.body = b"", []

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        method, path = self.parser.get_method(), self.url.split(b"?")[0]
        if method == b"GET" and path == b"/health":
            self._send(_head(200, "text/plain", 0))
        elif method == b"POST" and path == b"/v1/chat/completions":
            self._chat(json.loads(b"".join(self.body)))
        else:
            self._send(_head(404, "text/plain", 0))

    def _send(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def _chat(self, body: dict[str, Any]) -> None:
        cfg, n = self.cfg, next(_counter)
        self.timers = []  # the previous answer on this connection is complete (no pipelining)
        rid, model = f"chatcmpl-stub-{n}", body.get("model") or "stub"
        words = cfg["answer"].split()
        pieces = [w if i == 0 else " " + w for i, w in enumerate(words)]
        prompt_tokens = sum(len(content_text(m.get("content")).split()) for m in body.get("messages") or ())
        usage = {"prompt_tokens": prompt_tokens, "completion_tokens": len(pieces), "total_tokens": prompt_tokens + len(pieces)}
        ttft, rate = cfg["ttft_s"], cfg["tokens_per_s"]
        if not body.get("stream"):
            doc = json.dumps({"id": rid, "object": "chat.completion", "created": int(time.time()), "model": model,
                              "choices": [{"index": 0, "message": {"role": "assistant", "content": "".join(pieces)},
                                           "finish_reason": "stop"}], "usage": usage}).encode()
            delay = ttft + (len(pieces) / rate if rate else 0)
            self.timers.append(self.loop.call_later(delay, self._send, _head(200, "application/json", len(doc)) + doc))
            return
        self._send(_head(200, "text/event-stream; charset=utf-8") + _chunk(sse_chunk(rid, model, {"role": "assistant", "content": ""}).encode()))
        # After the last token, as the stub server does: the finish chunk, usage, [DONE], each its own write.
        tail = [sse_chunk(rid, model, {}, "stop")]
        if (body.get("stream_options") or {}).get("include_usage"):
            tail.append(sse_usage_chunk(rid, model, usage))
        tail.append("data: [DONE]\n\n")
        # (due time, writes): token i at t_first + i / rate; the tail with the last token
        t_first = self.loop.time() + ttft
        steps = [(t_first + (i / rate if rate else 0), [_chunk(sse_chunk(rid, model, {"content": p}).encode())])
                 for i, p in enumerate(pieces)]
        steps.append((steps[-1][0] if steps else t_first, [_chunk(t.encode()) for t in tail] + [b"0\r\n\r\n"]))
        self._step(steps, 0)

    def _step(self, steps: list[tuple[float, list[bytes]]], i: int) -> None:
        """Schedule step i; each step schedules the next, so the order holds whatever the timer
        resolution (uvloop rounds call_at to whole milliseconds, so two timers 0.5 ms apart can swap)."""
        def fire() -> None:
            for w in steps[i][1]:
                self._send(w)
            if i + 1 < len(steps):
                self._step(steps, i + 1)
            else:
                self.timers = []
        self.timers = [self.loop.call_at(steps[i][0], fire)]


def serve(cfg: dict[str, Any], host: str = "127.0.0.1", port: int = 0) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(lambda: _Conn(cfg), host, port, backlog=2048)
        print(f"stub listening on http://{host}:{server.sockets[0].getsockname()[1]}", flush=True)
        await server.serve_forever()

    uvloop.run(main())


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m harness.testing.lean_stub", description=__doc__.splitlines()[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--config", help="JSON file with answer, ttft_s, tokens_per_s (flags override it)")
    p.add_argument("--answer")
    p.add_argument("--ttft-s", type=float)
    p.add_argument("--tokens-per-s", type=float)
    args = p.parse_args(argv)
    cfg: dict[str, Any] = {"answer": "Hello from the lean stub", "ttft_s": 0.0, "tokens_per_s": 0.0}
    if args.config:
        cfg.update({k: v for k, v in json.loads(open(args.config).read()).items() if k in cfg})
    for key in cfg:
        if getattr(args, key) is not None:
            cfg[key] = getattr(args, key)
    serve(cfg, args.host, args.port)


if __name__ == "__main__":
    main()
