"""An OpenAI-compatible stub server for tests and benchmarks: real socket, real SSE, no model.

Answers are deterministic so tests can predict them: a word is a token; usage counts the words of
all message contents (prompt) and the words sent (completion). Latency, token rate, tool calls and
injected failures are configurable.

    python -m harness.testing.stub_server --port 0 --ttft-s 0.01 --tokens-per-s 500
prints `stub listening on http://127.0.0.1:PORT` once it accepts connections.

Scripted tool calls (`--tool-calls FILE`, or `scripted_tool_calls` in `--config`): a JSON object
mapping a key to the calls to answer with, `[{"name": ..., "arguments": {...} or "<json>"}, ...]`
(`[]` = answer in text). A request whose last user message contains `[[stub:KEY]]` gets KEY's
calls, streamed or not, several calls as parallel tool calls.

Per step, for agent trajectories: `{"KEY": {"steps": [STEP, ...]}}`, where STEP is a list of calls
or a string (a text answer). The request's step is the number of assistant messages with tool
calls it already holds (0 on the first request); past the last STEP the last one repeats, so
`{"steps": [[call]]}` calls forever (a loop) and `{"steps": [[a], [b], "answer"]}` finishes in three.

Faults (`--faults`, then `[[fault:NAME]]` in a prompt; or `--fault NAME` for every request): the
catalogue in harness/testing/faults.py, each a way a server breaks a completion (bad chunks,
invalid UTF-8, bad headers, undecodable bodies, wrong usage or ids, truncated streams, valid but
unusual SSE framing, an echoed API key).

What it saw, for tests and benchmarks: `GET /stub/headers`, `/stub/bodies`, `/stub/arrivals?since=T`
(wall-clock arrival of each chat request) and `/stub/timings?since=T` (per streamed answer: arrival,
seconds to the first output token's chunk and to the end, as the stub handed them to the socket:
the server side a client's TTFT and E2E can be held against).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import itertools
import json
import re
import socket
import time
import zlib
from dataclasses import dataclass, field
from typing import Any

import uvicorn
import uvloop
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from harness.corpus import content_text as _text  # a string, or the text parts of a list (as `vllm bench serve` sends)
from harness.testing import faults as fault_catalogue


@dataclass
class StubConfig:
    model: str = "stub"
    ttft_s: float = 0.0  # delay before the first token (the role-only first chunk is sent at once, as vLLM does)
    tokens_per_s: float = 0.0  # 0 = as fast as possible; else token i is due at first token + i / tokens_per_s
    reasoning: str | None = None  # words streamed as `reasoning_content` deltas before the answer
    answer: str | None = None  # fixed answer; default echoes the last user message
    # Substring of the last user message -> answer text, checked in order before `answer`.
    answers: dict[str, str] = field(default_factory=dict)
    # When the request offers tools, call the first one with these arguments (None = answer in text).
    tool_arguments: dict[str, Any] | None = None
    # Fail the first N requests (or every request whose message contains a key of `fail_on`) with this status.
    fail_first: int = 0
    fail_status: int = 503
    retry_after_s: float | None = None
    fail_on: dict[str, int] = field(default_factory=dict)
    include_usage: bool = True  # False: ignore stream_options, like some servers
    record_headers: int = 1000  # keep the headers of the last N requests, for tests
    record_bodies: int = 0  # keep the exact bytes of the last N answers, by response id (GET /stub/bodies)
    # Marker key -> tool calls [{"name", "arguments"}], or {"steps": [calls or answer text, ...]};
    # used when the last user message has [[stub:KEY]].
    scripted_tool_calls: dict[str, Any] = field(default_factory=dict)
    # Server faults (harness/testing/faults.py): `faults` honours [[fault:NAME]] markers; `fault` breaks every request.
    faults: bool = False
    fault: str | None = None
    # vLLM's --enable-return-routed-experts: non-streamed choices carry `routed_experts` (base64 .npy
    # of (tokens, layers, k) ids, `stub_routing`) when this is {"num_experts": E, "layers": L, "top_k": k}.
    routed_experts: dict[str, int] | None = None


# `--preset realistic`: a server's pacing (20 ms to the first token, then 5 ms per token), for
# latency comparisons between clients (bench/peers.py); `fast` answers as fast as it can.
PRESETS: dict[str, dict[str, Any]] = {"fast": {}, "realistic": {"ttft_s": 0.02, "tokens_per_s": 200.0}}

_MARKER = re.compile(r"\[\[stub:([^\]]+)\]\]")


def _words(text: str) -> list[str]:
    return text.split()


def stub_routing(words: list[str], num_experts: int, layers: int, top_k: int) -> "np.ndarray":
    """The stub's routed experts, one token per word (prompt words, then answer words): token `w`,
    layer `l`, slot `j` goes to expert `(crc32(w) + l + j) % E`. Deterministic, so tests predict it."""
    import numpy as np

    base = np.array([zlib.crc32(w.encode()) % num_experts for w in words], dtype=np.int64).reshape(-1, 1, 1)
    offsets = np.arange(layers).reshape(1, -1, 1) + np.arange(top_k).reshape(1, 1, -1)
    return ((base + offsets) % num_experts).astype(np.int16)


def sse_chunk(rid: str, model: str, delta: dict[str, Any], finish_reason: str | None = None) -> str:
    """One streamed chunk event, as vLLM lays it out (lean_stub.py sends the same)."""
    return "data: " + json.dumps({"id": rid, "object": "chat.completion.chunk", "created": 0, "model": model,
                                  "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}]}) + "\n\n"


def sse_usage_chunk(rid: str, model: str, usage: dict[str, int]) -> str:
    return "data: " + json.dumps({"id": rid, "object": "chat.completion.chunk", "created": 0, "model": model,
                                  "choices": [], "usage": usage}) + "\n\n"


async def _until(deadline: float) -> None:
    """Sleep until time.perf_counter() reaches `deadline`, never less: uvloop rounds timers to whole
    milliseconds, so one sleep can end up to 1 ms early (a token before its time)."""
    while (wait := deadline - time.perf_counter()) > 0:
        await asyncio.sleep(wait)


def build_app(cfg: StubConfig) -> Starlette:
    counter = itertools.count()
    seen_headers: list[dict[str, str]] = []
    arrivals: list[float] = []  # wall-clock arrival of every chat request (GET /stub/arrivals): a client's load window
    # Streamed answers as the stub saw them (GET /stub/timings): arrival (wall clock), then seconds from
    # arrival to the first output token's chunk and to the last chunk, handed to the server to write.
    # The ground truth a client's TTFT and E2E can be held against: what a client adds is its own.
    timings: collections.deque[tuple[float, float, float]] = collections.deque(maxlen=100_000)
    seen_bodies: dict[str, int] = {}  # request body -> times seen, for faults that break only the first try
    sent_bodies: dict[str, str] = {}

    def keep(rid: str, text: str) -> None:
        if cfg.record_bodies:
            sent_bodies[rid] = text
            while len(sent_bodies) > cfg.record_bodies:
                del sent_bodies[next(iter(sent_bodies))]

    def answer_for(messages: list[dict[str, Any]]) -> str:
        last_user = next((_text(m.get("content")) for m in reversed(messages) if m.get("role") == "user"), "")
        for key, text in cfg.answers.items():
            if key in last_user:
                return text
        return cfg.answer if cfg.answer is not None else "Echo: " + " ".join(_words(last_user)[:24])

    async def chat(request: Request) -> Response:
        arrived_at, t0 = time.time(), time.perf_counter()
        arrivals.append(arrived_at)
        n = next(counter)
        seen_headers.append(dict(request.headers))
        del seen_headers[: -cfg.record_headers]
        try:
            body = json.loads(await request.body())
            messages = body["messages"]
        except (ValueError, KeyError, TypeError):
            return JSONResponse({"error": {"message": "body must be JSON with 'messages'", "type": "invalid_request_error"}}, 400)
        last = json.dumps(messages)
        status = cfg.fail_status if n < cfg.fail_first else next((s for k, s in cfg.fail_on.items() if k in last), None)
        if status:
            headers = {"Retry-After": f"{cfg.retry_after_s:g}"} if cfg.retry_after_s is not None else {}
            return JSONResponse({"error": {"message": f"stub failure {status}", "type": "stub"}}, status, headers=headers)

        prompt_tokens = sum(len(_words(_text(m.get("content")))) for m in messages)
        model = body.get("model") or cfg.model
        rid = f"chatcmpl-stub-{n}"
        tools = body.get("tools") or []
        tool_call = None
        scripted = _scripted(cfg, messages)
        scripted_text = scripted if isinstance(scripted, str) else None
        if scripted_text is not None:
            scripted = []
        calls: list[dict[str, Any]] = []
        if scripted:
            calls = [{"name": c.get("name"), "arguments": c["arguments"] if isinstance(c.get("arguments"), str) else json.dumps(c.get("arguments") or {})}
                     for c in scripted]
        elif tools and cfg.tool_arguments is not None and scripted is None:
            calls = [{"name": tools[0]["function"]["name"], "arguments": json.dumps(cfg.tool_arguments)}]
        if calls:
            tool_call = calls[0]
            # (call index, piece): each call's arguments in 8-character pieces, calls one after another.
            pieces = [(k, c["arguments"][i : i + 8]) for k, c in enumerate(calls) for i in range(0, max(len(c["arguments"]), 1), 8)]
        else:
            text = scripted_text if scripted_text is not None else answer_for(messages)
            pieces = [w if i == 0 else " " + w for i, w in enumerate(_words(text))]
        max_tokens = body.get("max_tokens") or 10**9
        finish = "tool_calls" if tool_call else ("length" if len(pieces) > max_tokens else "stop")
        pieces = pieces[:max_tokens]
        thoughts = [w if i == 0 else " " + w for i, w in enumerate(_words(cfg.reasoning or ""))]
        completion_tokens = len(thoughts) + len(pieces)  # reasoning tokens count as completion tokens (as in vLLM)
        usage = {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens, "total_tokens": prompt_tokens + completion_tokens}

        fault = fault_catalogue.select(last, cfg.fault) if (cfg.faults or cfg.fault) else None
        if fault:
            key = json.dumps([model, messages])
            seen = seen_bodies.get(key, 0)
            seen_bodies[key] = seen + 1
            answer = fault_catalogue.Answer(rid, model, [p for p in pieces if isinstance(p, str)], usage, finish,
                                            request.headers.get("authorization", ""), seen)
            return _fault_response(fault_catalogue.FAULTS[fault][1](answer))

        if not body.get("stream"):
            await asyncio.sleep(cfg.ttft_s + (len(pieces) / cfg.tokens_per_s if cfg.tokens_per_s else 0))
            message: dict[str, Any] = {"role": "assistant", "content": None if tool_call else "".join(pieces)}
            if tool_call:
                message["tool_calls"] = [{"id": f"call_{n}" + (f"_{k}" if k else ""), "type": "function", "function": c} for k, c in enumerate(calls)]
            choice: dict[str, Any] = {"index": 0, "message": message, "finish_reason": finish}
            if cfg.routed_experts:
                from harness.experts.capture import encode_routed_experts

                words = [w for m in messages for w in _words(_text(m.get("content")))] + _words("".join(
                    p for p in pieces if isinstance(p, str)))
                choice["routed_experts"] = encode_routed_experts(stub_routing(words, **cfg.routed_experts))
            resp = JSONResponse({"id": rid, "object": "chat.completion", "created": int(time.time()), "model": model,
                                 "choices": [choice], "usage": usage})
            keep(rid, resp.body.decode())
            return resp

        want_usage = cfg.include_usage and (body.get("stream_options") or {}).get("include_usage")

        async def events():
            def chunk(delta: dict[str, Any], finish_reason: str | None = None) -> str:
                return sse_chunk(rid, model, delta, finish_reason)

            yield chunk({"role": "assistant", "content": ""})
            if cfg.ttft_s:
                await _until(time.perf_counter() + cfg.ttft_s)
            # Paced against deadlines, so the sleeps' overshoot does not add up over the answer.
            # The first token is due now; its time is the TTFT /stub/timings reports (one clock reading for both,
            # so e2e - ttft is never short of the paced tokens' time).
            t_first = time.perf_counter()
            t_token = None
            for i, thought in enumerate(thoughts):
                if i and cfg.tokens_per_s:
                    await _until(t_first + i / cfg.tokens_per_s)
                t_token = t_token or t_first
                yield chunk({"reasoning_content": thought})
            for i, piece in enumerate(pieces, start=len(thoughts)):
                if i and cfg.tokens_per_s:
                    await _until(t_first + i / cfg.tokens_per_s)
                i -= len(thoughts)
                if tool_call:
                    k, piece = piece
                    first = i == 0 or pieces[i - 1][0] != k
                    fn = {"name": calls[k]["name"], "arguments": piece} if first else {"arguments": piece}
                    call_id = f"call_{n}" + (f"_{k}" if k else "")
                    delta = {"tool_calls": [{"index": k, **({"id": call_id, "type": "function"} if first else {}), "function": fn}]}
                else:
                    delta = {"content": piece}
                t_token = t_token or t_first
                yield chunk(delta)
            yield chunk({}, finish)
            if want_usage:
                yield sse_usage_chunk(rid, model, usage)
            yield "data: [DONE]\n\n"
            t_end = time.perf_counter()  # resumed once the last bytes have been written
            timings.append((arrived_at, (t_token or t_end) - t0, t_end - t0))

        async def kept():
            parts = []
            async for part in events():
                parts.append(part)
                yield part
            keep(rid, "".join(parts))

        return StreamingResponse(kept() if cfg.record_bodies else events(), media_type="text/event-stream")

    async def models(_: Request) -> Response:
        return JSONResponse({"object": "list", "data": [{"id": cfg.model, "object": "model", "owned_by": "routecheck-stub"}]})

    async def health(_: Request) -> Response:
        return Response(status_code=200)

    async def headers(_: Request) -> Response:
        return JSONResponse(seen_headers)

    async def bodies(_: Request) -> Response:
        return JSONResponse(sent_bodies)

    async def timed(request: Request) -> Response:
        since = float(request.query_params.get("since", "0"))
        return JSONResponse([{"arrived": a, "ttft_s": f, "e2e_s": e} for a, f, e in list(timings) if a >= since])

    async def arrived(request: Request) -> Response:
        since = float(request.query_params.get("since", "0"))
        return JSONResponse([t for t in arrivals if t >= since])

    return Starlette(routes=[
        Route("/v1/chat/completions", chat, methods=["POST"]),
        Route("/v1/models", models),
        Route("/health", health),
        Route("/stub/headers", headers),
        Route("/stub/bodies", bodies),
        Route("/stub/arrivals", arrived),
        Route("/stub/timings", timed),
    ])


def _fault_response(reply: "fault_catalogue.Reply") -> Response:
    async def parts():
        for part in reply.parts:
            yield part
    return StreamingResponse(parts(), status_code=reply.status, headers=reply.headers)


def _scripted(cfg: StubConfig, messages: list[dict[str, Any]]) -> list[dict[str, Any]] | str | None:
    """The scripted calls (or answer text) for this request's [[stub:KEY]] marker and step
    (None = no marker or unknown key)."""
    if not cfg.scripted_tool_calls:
        return None
    last_user = next((_text(m.get("content")) for m in reversed(messages) if m.get("role") == "user"), "")
    found = _MARKER.search(last_user if isinstance(last_user, str) else json.dumps(last_user))
    entry = cfg.scripted_tool_calls.get(found.group(1)) if found else None
    if isinstance(entry, dict) and "steps" in entry:
        steps = entry["steps"] or [[]]
        step = sum(1 for m in messages if m.get("role") == "assistant" and m.get("tool_calls"))
        return steps[min(step, len(steps) - 1)]
    return entry


def serve(cfg: StubConfig, host: str = "127.0.0.1", port: int = 0) -> None:
    # proto=IPPROTO_TCP: asyncio only sets TCP_NODELAY on accepted sockets whose listener says TCP;
    # without it every kept-alive response stalls ~40 ms on Nagle + delayed ACK.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    bound = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(build_app(cfg), log_level="warning", access_log=False, backlog=2048))

    async def main() -> None:
        task = asyncio.create_task(server.serve(sockets=[sock]))
        while not server.started:
            await asyncio.sleep(0.01)
        print(f"stub listening on http://{host}:{bound}", flush=True)
        await task

    uvloop.run(main())


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m harness.testing.stub_server", description=__doc__.splitlines()[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0, help="0 picks a free port (printed on start)")
    p.add_argument("--config", help="JSON file with StubConfig fields; flags below override it")
    p.add_argument("--model")
    p.add_argument("--preset", choices=sorted(PRESETS), help="pacing: realistic = 20 ms to the first token, 5 ms per token")
    p.add_argument("--ttft-s", type=float)
    p.add_argument("--tokens-per-s", type=float)
    p.add_argument("--answer")
    p.add_argument("--tool-calls", metavar="FILE", help="JSON object: marker key -> scripted tool calls (see above)")
    p.add_argument("--faults", action="store_true", default=None, help="honour [[fault:NAME]] markers in prompts")
    p.add_argument("--fault", choices=sorted(fault_catalogue.FAULTS), help="inject this fault into every request")
    args = p.parse_args(argv)
    data: dict[str, Any] = json.loads(open(args.config).read()) if args.config else {}
    if args.preset:
        data = {**PRESETS[args.preset], **data}
    if args.tool_calls:
        data["scripted_tool_calls"] = json.loads(open(args.tool_calls).read())
    for key in ("model", "ttft_s", "tokens_per_s", "answer", "faults", "fault"):
        if getattr(args, key) is not None:
            data[key] = getattr(args, key)
    serve(StubConfig(**data), args.host, args.port)


if __name__ == "__main__":
    main()
