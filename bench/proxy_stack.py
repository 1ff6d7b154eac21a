"""Which server and client stack the shadow proxy is built on: a bare streaming pass-through in each,
measured side by side against the stub server.

Each stack is the same few lines (read the body, POST it upstream, copy the response bytes back as
they arrive) in its own process; the load is open-loop Poisson at --rate from this process
(harness/testing/load.py). Blocks of --block-s seconds go round-robin over "direct" and every stack,
--rounds times, so a change in the shared machine's load hits every condition alike. Printed: TTFT
and total latency quantiles, the median difference against direct, and the proxy process's CPU per
request (user + system, from /proc via psutil).

    python bench/proxy_stack.py [--rate 200] [--block-s 10] [--rounds 2]
    python bench/proxy_stack.py --serve aiohttp --upstream URL   (one pass-through, used by the above)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

STACKS = ("aiohttp+aiohttp", "uvicorn-asgi+aiohttp", "uvicorn-asgi+httpx", "starlette+httpx", "aiohttp+httpx")


def _listen() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    return sock


def serve(stack: str, upstream: str) -> None:
    import uvloop

    server_kind, client_kind = stack.split("+")
    sock = _listen()
    headers = {"Content-Type": "application/json"}

    async def main() -> None:
        if client_kind == "aiohttp":
            import aiohttp

            session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0), auto_decompress=False,
                                            timeout=aiohttp.ClientTimeout(total=None))

            async def upstream_stream(body: bytes):
                resp = await session.post(upstream, data=body, headers=headers)
                return resp.status, resp.headers.get("Content-Type", ""), resp.content.iter_any(), resp.release
        else:
            import httpx

            from bench.httpx_pool import ShardedTransport

            client = httpx.AsyncClient(transport=ShardedTransport(512), timeout=None)

            async def upstream_stream(body: bytes):
                resp = await client.send(client.build_request("POST", upstream, content=body, headers=headers), stream=True)
                return resp.status_code, resp.headers.get("content-type", ""), resp.aiter_raw(), resp.aclose

        if server_kind == "aiohttp":
            from aiohttp import web

            async def handle(request: web.Request) -> web.StreamResponse:
                status, ctype, chunks, close = await upstream_stream(await request.read())
                resp = web.StreamResponse(status=status, headers={"Content-Type": ctype})
                await resp.prepare(request)
                async for chunk in chunks:
                    await resp.write(chunk)
                await resp.write_eof()
                r = close()
                if asyncio.iscoroutine(r):
                    await r
                return resp

            app = web.Application()
            app.router.add_post("/v1/chat/completions", handle)
            runner = web.AppRunner(app, access_log=None)
            await runner.setup()
            await web.SockSite(runner, sock).start()
            print(f"listening on {sock.getsockname()[1]}", flush=True)
            await asyncio.Event().wait()
        else:
            import uvicorn

            if server_kind == "starlette":
                from starlette.applications import Starlette
                from starlette.requests import Request
                from starlette.responses import StreamingResponse
                from starlette.routing import Route

                async def chat(request: Request):
                    status, ctype, chunks, close = await upstream_stream(await request.body())

                    async def body():
                        try:
                            async for c in chunks:
                                yield c
                        finally:
                            r = close()
                            if asyncio.iscoroutine(r):
                                await r

                    return StreamingResponse(body(), status_code=status, media_type=ctype)

                app = Starlette(routes=[Route("/v1/chat/completions", chat, methods=["POST"])])
            else:
                async def app(scope, receive, send):
                    if scope["type"] == "lifespan":
                        while True:
                            msg = await receive()
                            await send({"type": msg["type"] + ".complete"})
                            if msg["type"] == "lifespan.shutdown":
                                return
                    body, more = b"", True
                    while more:
                        msg = await receive()
                        body += msg.get("body", b"")
                        more = msg.get("more_body", False)
                    status, ctype, chunks, close = await upstream_stream(body)
                    await send({"type": "http.response.start", "status": status, "headers": [(b"content-type", ctype.encode())]})
                    async for c in chunks:
                        await send({"type": "http.response.body", "body": c, "more_body": True})
                    await send({"type": "http.response.body", "body": b"", "more_body": False})
                    r = close()
                    if asyncio.iscoroutine(r):
                        await r

            server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False, http="httptools",
                                                   lifespan="off", backlog=2048))
            task = asyncio.create_task(server.serve(sockets=[sock]))
            while not server.started:
                await asyncio.sleep(0.01)
            print(f"listening on {sock.getsockname()[1]}", flush=True)
            await task

    uvloop.run(main())


def _start(cmd: list[str]) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    return proc, line.strip().rsplit(" ", 1)[-1]


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--serve", choices=STACKS)
    p.add_argument("--upstream")
    p.add_argument("--rate", type=float, default=200.0)
    p.add_argument("--block-s", type=float, default=10.0)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--tokens", type=int, default=32)
    args = p.parse_args()
    if args.serve:
        serve(args.serve, args.upstream)
        return
    import psutil
    import uvloop

    from harness.testing.load import run_load, summary

    with tempfile.TemporaryDirectory() as d:
        cfg = Path(d) / "stub.json"
        cfg.write_text(json.dumps({"answer": " ".join(f"w{i}" for i in range(args.tokens)), "ttft_s": 0.02, "tokens_per_s": 400}))
        stub, url = _start([sys.executable, "-m", "harness.testing.stub_server", "--port", "0", "--config", str(cfg)])
        upstream = url + "/v1/chat/completions"
        procs = {}
        try:
            for s in STACKS:
                proc, port = _start([sys.executable, __file__, "--serve", s, "--upstream", upstream])
                procs[s] = (proc, f"http://127.0.0.1:{port}/v1/chat/completions")
            conds = {"direct": upstream, **{s: u for s, (_, u) in procs.items()}}
            samples: dict[str, list] = {c: [] for c in conds}
            cpu = {s: 0.0 for s in STACKS}
            body = lambda i: {"model": "m", "stream": True, "messages": [{"role": "user", "content": f"q {i}"}]}  # noqa: E731
            for c, u in conds.items():  # warm-up: connections, imports
                uvloop.run(run_load(u, 50, 1.0, body=body))
            load0 = os.getloadavg()
            for rnd in range(args.rounds):
                for c, u in conds.items():
                    ps = psutil.Process(procs[c][0].pid) if c in procs else None
                    t = ps.cpu_times() if ps else None
                    samples[c] += uvloop.run(run_load(u, args.rate, args.block_s, body=body, seed=rnd))
                    if ps:
                        t2 = ps.cpu_times()
                        cpu[c] += (t2.user - t.user) + (t2.system - t.system)
            print(f"{os.cpu_count()} cores, load average before {load0[0]:.2f}, after {os.getloadavg()[0]:.2f}; "
                  f"{args.rate:g} req/s Poisson, {args.rounds} x {args.block_s:g} s blocks per condition, "
                  f"{args.tokens} streamed tokens, stub TTFT 20 ms at 400 tok/s")
            base = summary(samples["direct"])
            print(f"{'condition':<22} {'ok':>5} {'err':>4} {'TTFT p50':>9} {'p99':>7} {'p99.9':>7} {'total p50':>9} "
                  f"{'p99':>7} {'+p50 ms':>8} {'+p99 ms':>8} {'CPU ms/req':>10}")
            for c in conds:
                s = summary(samples[c])
                add50 = 1000 * (s["latency_p50_s"] - base["latency_p50_s"])
                add99 = 1000 * (s["latency_p99_s"] - base["latency_p99_s"])
                cpu_ms = 1000 * cpu[c] / max(len(samples[c]), 1) if c in cpu else float("nan")
                print(f"{c:<22} {s['ok']:>5} {s['errors']:>4} {1000 * s['ttft_p50_s']:>9.2f} {1000 * s['ttft_p99_s']:>7.2f} "
                      f"{1000 * s['ttft_p999_s']:>7.2f} {1000 * s['latency_p50_s']:>9.2f} {1000 * s['latency_p99_s']:>7.2f} "
                      f"{add50:>8.2f} {add99:>8.2f} {cpu_ms:>10.3f}", flush=True)
        finally:
            for proc, _ in procs.values():
                proc.terminate()
            stub.terminate()


if __name__ == "__main__":
    main()
