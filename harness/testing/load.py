"""Open-loop load for benchmarks and the soak test: chat requests at a fixed rate, each one timed.

Open loop: request i starts at its scheduled time whether or not earlier ones have finished, so a
slow server shows up as latency, not as a lower send rate (no coordinated omission). Arrivals are
Poisson (seeded) or evenly spaced. The client is the proxy's own lean HTTP/1.1 client
(harness/proxy/h1.py: keep-alive connections as bare asyncio protocols, each piece seen inside the
read that received it) on uvloop; it costs about a third of aiohttp's client per streamed request,
so on a shared machine the load generator takes as little as it can from what it measures. TTFT is
the first SSE line with content or a tool-call delta, found by a byte search rather than a JSON parse.
"""

from __future__ import annotations

import asyncio
import json
import math
import random
import time
from dataclasses import asdict, dataclass
from typing import Any, Callable

import numpy as np

from harness.proxy.h1 import Answer, Pool, UpstreamError

_EMPTY_CONTENT = (b'"content": ""', b'"content":""')


@dataclass
class Sample:
    index: int
    scheduled_s: float  # offset from the start of the load
    lag_s: float  # how late the request was sent against its schedule
    status: int | None
    ttft_s: float | None
    latency_s: float | None
    nbytes: int
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None and self.status == 200


def has_token(line: bytes) -> bool:
    """An SSE data line carrying answer content or a tool-call delta (the stub's and vLLM's JSON layout)."""
    if b'"tool_calls"' in line:
        return True
    return b'"content"' in line and b'"content": null' not in line and not any(e in line for e in _EMPTY_CONTENT)


def chat_body(i: int, stream: bool = True, model: str = "m", words: int = 8) -> dict[str, Any]:
    return {"model": model, "stream": stream, "max_tokens": 64,
            "messages": [{"role": "user", "content": f"question {i} " + " ".join(f"w{k}" for k in range(words))}]}


def schedule(rate: float, duration_s: float, poisson: bool = True, seed: int = 0) -> list[float]:
    rng = random.Random(seed)
    times, t = [], 0.0
    while True:
        t += rng.expovariate(rate) if poisson else 1.0 / rate
        if t >= duration_s:
            return times
        times.append(t)


async def _unmeasured(pool: Pool, body: bytes, headers: dict[str, str], timeout_s: float) -> None:
    """The same request to a second server, read to the end and not timed (the load a mirror puts on it)."""
    answer = Answer(asyncio.get_running_loop(), [], [])
    conn, ok = None, False
    try:
        async with asyncio.timeout(timeout_s):
            conn = await pool.post("", body, headers, answer)
            await answer.done
            ok = True
    except (UpstreamError, TimeoutError, OSError):
        pass
    finally:
        if conn is not None:
            pool.finish(conn, ok)


async def _one(pool: Pool, i: int, at: float, t0: float, body: bytes, headers: dict[str, str], timeout_s: float,
               also: Pool | None = None) -> Sample:
    delay = t0 + at - time.perf_counter()
    if delay > 0:
        await asyncio.sleep(delay)
    start = time.perf_counter()
    shadow = asyncio.create_task(_unmeasured(also, body, headers, timeout_s)) if also is not None else None
    sample = Sample(i, at, start - t0 - at, None, None, None, 0)
    answer = Answer(asyncio.get_running_loop(), [], [])
    pending = [b""]

    def seen(piece: bytes) -> None:
        sample.nbytes += len(piece)
        if sample.ttft_s is None:
            *lines, pending[0] = (pending[0] + piece).split(b"\n")
            if any(line.startswith(b"data:") and has_token(line) for line in lines):
                sample.ttft_s = time.perf_counter() - start

    answer.on_piece = seen
    conn, ok = None, False
    try:
        async with asyncio.timeout(timeout_s):
            conn = await pool.post("", body, headers, answer)
            sample.status = answer.status
            await answer.done
            ok = True
        sample.latency_s = time.perf_counter() - start
        if sample.ttft_s is None and sample.status == 200:  # not streamed: the whole answer is the first token
            sample.ttft_s = sample.latency_s
    except UpstreamError as e:
        sample.error = e.kind
    except (TimeoutError, OSError) as e:
        sample.error = type(e).__name__
    finally:
        if conn is not None:
            pool.finish(conn, ok)
    if shadow is not None:
        await shadow
    return sample


async def run_load(url: str, rate: float, duration_s: float, *, body: Callable[[int], dict[str, Any]] = chat_body,
                   headers: dict[str, str] | None = None, poisson: bool = True, seed: int = 0,
                   timeout_s: float = 60.0, connections: int = 512, also_url: str | None = None) -> list[Sample]:
    """POST `body(i)` to `url` at `rate` per second for `duration_s`; one Sample per request, in order.
    With `also_url`, each request is sent there too at the same moment, untimed: the load a 100 %
    mirror puts on a candidate, without a proxy (the control for what the proxy itself adds)."""
    times = schedule(rate, duration_s, poisson, seed)
    bodies = [json.dumps(body(i)).encode() for i in range(len(times))]  # encoded before the clock starts
    hdrs = {"Content-Type": "application/json", **(headers or {})}
    pool = Pool(url, connections, connect_timeout_s=min(10.0, timeout_s))
    also = Pool(also_url, connections, connect_timeout_s=min(10.0, timeout_s)) if also_url else None
    try:
        t0 = time.perf_counter()
        return list(await asyncio.gather(*(_one(pool, i, at, t0, bodies[i], hdrs, timeout_s, also) for i, at in enumerate(times))))
    finally:
        await pool.close()
        if also is not None:
            await also.close()


def quantiles(values: list[float], qs: tuple[float, ...] = (0.5, 0.99, 0.999)) -> list[float | None]:
    """Nearest-rank quantiles (None for no values)."""
    if not values:
        return [None for _ in qs]
    s = sorted(values)
    return [s[min(len(s) - 1, max(0, math.ceil(q * len(s)) - 1))] for q in qs]


def added_quantile(base: list[list[float]], cond: list[list[float]], q: float, resamples: int = 1000,
                   seed: int = 0) -> tuple[float, float, float]:
    """How much higher `cond`'s q-quantile is than `base`'s, with a 95 % percentile interval.

    Both are lists of rounds (the values of one block each), run in turn in the same rounds: a
    p99 moves with the shared machine's load from minute to minute, so the rounds are what varies,
    and a resample draws rounds with replacement, the same rounds for both (a round's blocks saw
    the same machine). Quantiles are nearest-rank, as `quantiles`. Fewer than 2 rounds: no interval."""
    if not base or len(base) != len(cond):
        raise ValueError("added_quantile: base and cond need the same number of rounds, at least one")
    b = [np.asarray(r, dtype=float) for r in base]
    c = [np.asarray(r, dtype=float) for r in cond]

    def q_of(parts: list[np.ndarray], rows: np.ndarray) -> float:
        return float(np.quantile(np.concatenate([parts[i] for i in rows]), q, method="inverted_cdf"))

    every = np.arange(len(b))
    point = q_of(c, every) - q_of(b, every)
    if len(b) < 2:
        return point, math.nan, math.nan
    draws = np.random.default_rng(seed).integers(0, len(b), size=(resamples, len(b)))
    diffs = [q_of(c, rows) - q_of(b, rows) for rows in draws]
    lo, hi = np.percentile(diffs, [2.5, 97.5])
    return point, float(lo), float(hi)


def summary(samples: list[Sample]) -> dict[str, Any]:
    ok = [s for s in samples if s.ok]
    ttft = quantiles([s.ttft_s for s in ok if s.ttft_s is not None])
    total = quantiles([s.latency_s for s in ok if s.latency_s is not None])
    return {"requests": len(samples), "ok": len(ok), "errors": len(samples) - len(ok),
            "ttft_p50_s": ttft[0], "ttft_p99_s": ttft[1], "ttft_p999_s": ttft[2],
            "latency_p50_s": total[0], "latency_p99_s": total[1], "latency_p999_s": total[2],
            "lag_p99_s": quantiles([s.lag_s for s in samples], (0.99,))[0]}


def to_dicts(samples: list[Sample]) -> list[dict[str, Any]]:
    return [asdict(s) for s in samples]
