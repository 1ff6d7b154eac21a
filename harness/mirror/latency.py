"""Latency figures of one streamed answer: the single definition of each, ours and the peers'.

Tools disagree on what "time to first token" and "end to end" mean, so a figure is only
comparable with its definition. The client marks a few moments of each attempt (`StreamClock`);
every figure stored in `responses` is computed here from those marks (`figures`). All times are
seconds from `start`, the moment the request is handed to the HTTP client (connection set-up and
pool waits included, as `vllm bench serve` and routecheck both count them).

routecheck's own figures:
    ttft_s          first *output token*: a chunk with non-empty content, reasoning
                    (`reasoning_content` / `reasoning`) or a tool-call delta
    ttft_content_s  first chunk with non-empty `delta.content` (the answer's text; NULL for a
                    tool-call-only answer)
    latency_s       end to end: to the last byte of the body (after `[DONE]` and usage)
    itl_mean_s, itl_p99_s   gaps between consecutive output-token chunks
    tpot_s          (last token chunk - first token chunk) / (output_tokens - 1): decode time per
                    output token after the first (NULL for fewer than 2 tokens)

`vllm bench serve`'s (vllm/benchmarks/lib/endpoint_request_func.py and serve.py, vLLM 0.32):
    ttft_chunk_s    first chunk with a non-empty `choices` list, whatever its delta: vLLM's first
                    chunk carries only the role, so this is the time to the response's first chunk
                    (vllm issue #15106), not to the first token
    e2e_chunk_s     to the last chunk with a non-empty `choices` list (the usage chunk and `[DONE]`
                    do not count): vLLM's E2EL
    itl_chunk_mean_s, itl_chunk_p99_s   gaps between consecutive chunks with choices (vLLM's ITL
                    is the pool of these gaps over all requests; `chunks` lets a view pool the mean)
    tpot_chunk_s    (e2e_chunk_s - ttft_chunk_s) / (output_tokens - 1): vLLM's TPOT
    chunks          chunks with a non-empty `choices` list

Where the request went out:
    send_s          start -> the request's headers begin to be written (the connection is ready:
                    pool wait and connect done); NULL when the transport cannot tell

The other peers, from their code (bench/peers.py computes routecheck's figure under each):
    GuideLLM 0.8 (backends/openai/http.py): the clock starts at the headers write (httpcore trace
        `send_request_headers.started`); TTFT to the first content, reasoning or tool-call delta,
        latency to the end of the stream: `ttft_s - send_s`, `latency_s - send_s`
    AIPerf 0.13 (transports/aiohttp_client.py, metrics/types/): the clock starts before the request
        is handed to aiohttp; TTFT to the first response with content, reasoning or tool calls,
        request latency to the *last* such response: `ttft_s`, `ttft_s + tpot_s * (output_tokens - 1)`
"""

from __future__ import annotations

import math
from time import perf_counter
from dataclasses import dataclass, field
from typing import Any, Iterable

# column -> who defines it and how (seconds unless said); the schema and docs list these.
FIGURES: dict[str, str] = {
    "latency_s": "routecheck: end to end, request handed to the client -> last byte of the body",
    "ttft_s": "routecheck: first output token (content, reasoning or tool-call delta)",
    "ttft_content_s": "routecheck: first non-empty delta.content",
    "itl_mean_s": "routecheck: mean gap between output-token chunks",
    "itl_p99_s": "routecheck: p99 gap between output-token chunks",
    "tpot_s": "routecheck: (last token chunk - first token chunk) / (output_tokens - 1)",
    "ttft_chunk_s": "vllm bench serve TTFT: first chunk with non-empty choices (the role-only chunk counts)",
    "e2e_chunk_s": "vllm bench serve E2EL: last chunk with non-empty choices",
    "itl_chunk_mean_s": "vllm bench serve ITL: mean gap between chunks with choices",
    "itl_chunk_p99_s": "vllm bench serve ITL: p99 gap between chunks with choices (per response)",
    "tpot_chunk_s": "vllm bench serve TPOT: (e2e_chunk_s - ttft_chunk_s) / (output_tokens - 1)",
    "chunks": "chunks with non-empty choices",
    "send_s": "start -> the request's headers begin to be written (GuideLLM starts its clock here)",
}


@dataclass(slots=True)
class StreamClock:
    """The moments of one attempt, as `time.perf_counter()` values; the client calls `chunk`."""

    start: float
    sent: float | None = None
    end: float | None = None
    first_content: float | None = None
    chunk_times: list[float] = field(default_factory=list)  # every chunk with non-empty choices
    token_times: list[float] = field(default_factory=list)  # those carrying an output token

    def chunk(self, now: float, token: bool, content: bool) -> None:
        """A chunk with non-empty choices arrived at `now`; `token`: it carried an output token,
        `content`: among them non-empty text content."""
        self.chunk_times.append(now)
        if token:
            self.token_times.append(now)
            if content and self.first_content is None:
                self.first_content = now

    def mark_sent(self) -> None:
        """The request's headers have been written (the client's trace hook calls this once)."""
        if self.sent is None:
            self.sent = perf_counter()


def _gaps(times: list[float]) -> tuple[float | None, float | None]:
    if len(times) < 2:
        return None, None
    gaps = sorted(b - a for a, b in zip(times, times[1:]))
    return sum(gaps) / len(gaps), gaps[min(len(gaps) - 1, int(0.99 * len(gaps)))]


def figures(clock: StreamClock, output_tokens: int | None) -> dict[str, Any]:
    """Every latency figure of one finished attempt (the keys of FIGURES)."""
    t0, chunks, tokens = clock.start, clock.chunk_times, clock.token_times
    out: dict[str, Any] = dict.fromkeys(FIGURES)
    out["chunks"] = len(chunks)
    if clock.end is not None:
        out["latency_s"] = clock.end - t0
    if clock.sent is not None:
        out["send_s"] = clock.sent - t0
    if clock.first_content is not None:
        out["ttft_content_s"] = clock.first_content - t0
    n = output_tokens or 0
    if tokens:
        out["ttft_s"] = tokens[0] - t0
        out["itl_mean_s"], out["itl_p99_s"] = _gaps(tokens)
        if n > 1:
            out["tpot_s"] = (tokens[-1] - tokens[0]) / (n - 1)
    if chunks:
        out["ttft_chunk_s"] = chunks[0] - t0
        out["e2e_chunk_s"] = chunks[-1] - t0
        out["itl_chunk_mean_s"], out["itl_chunk_p99_s"] = _gaps(chunks)
        if n > 1:
            out["tpot_chunk_s"] = (chunks[-1] - chunks[0]) / (n - 1)
    return out


def over_steps(steps: Iterable[Any]) -> dict[str, Any]:
    """A trajectory's figures from its steps' (objects with the FIGURES attributes): TTFTs of the
    first step, end-to-end figures and chunks summed, per-token figures weighted by output tokens,
    p99 gaps the steps' maximum."""
    steps = list(steps)
    out: dict[str, Any] = dict.fromkeys(FIGURES)
    if not steps:
        return out
    for key in ("ttft_s", "ttft_content_s", "ttft_chunk_s", "send_s"):
        out[key] = getattr(steps[0], key)
    for key in ("latency_s", "e2e_chunk_s", "chunks"):
        values = [getattr(s, key) for s in steps if getattr(s, key) is not None]
        out[key] = sum(values) if values else None
    for key in ("itl_mean_s", "itl_chunk_mean_s", "tpot_s", "tpot_chunk_s"):
        pairs = [(getattr(s, key), s.output_tokens or 0) for s in steps if getattr(s, key) is not None]
        weight = sum(w for _, w in pairs)
        out[key] = sum(v * w for v, w in pairs) / weight if weight else None
    for key in ("itl_p99_s", "itl_chunk_p99_s"):
        values = [getattr(s, key) for s in steps if getattr(s, key) is not None]
        out[key] = max(values) if values else None
    return out


def percentile(values: Iterable[float], q: float) -> float | None:
    """Linear-interpolated percentile (numpy's default, which `vllm bench serve` uses), q in [0, 100]."""
    xs = sorted(v for v in values if v is not None and not math.isnan(v))
    if not xs:
        return None
    pos = (len(xs) - 1) * q / 100
    lo = math.floor(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)
