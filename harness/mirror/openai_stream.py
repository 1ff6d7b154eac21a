"""One streamed OpenAI-compatible chat completion, with timing, retries and tool-call assembly.

Timing is taken on the client: the moments of each attempt are marked on a StreamClock (by the
Assembly, as chunks arrive) and every latency figure (ours and `vllm bench serve`'s) is defined in
harness/mirror/latency.py. Every failure inside a call (transport, status, body encoding, SSE framing,
chunk shapes, an unfinished or empty answer) ends as the CallResult's error_type; see assemble.py for
the checks.
"""

from __future__ import annotations

import asyncio
import email.utils
import math
import random
import time
from dataclasses import dataclass, field
from datetime import timezone
from typing import Any

import aiohttp

from harness.corpus import content_text
from harness.mirror.http import RouteClient, transport_error
from harness.mirror.assemble import Assembly, StreamFault, snippet, usage_problem
from harness.mirror.latency import figures
from harness.mirror.sse import SSEDecoder

RETRYABLE_STATUS = {408, 409, 425, 429, 500, 502, 503, 504}


@dataclass
class CallResult:
    text: str | None = ""  # None: the call failed before any text arrived
    tool_calls: list[dict[str, Any]] = field(default_factory=list)
    finish_reason: str | None = None
    response_id: str | None = None
    response_model: str | None = None
    input_tokens: int | None = None
    output_tokens: int | None = None
    total_tokens: int | None = None
    usage_source: str | None = None  # server | counted
    started_at: float = 0.0  # wall clock, seconds since epoch
    latency_s: float | None = None
    ttft_s: float | None = None
    itl_mean_s: float | None = None
    itl_p99_s: float | None = None
    attempts: int = 0
    http_status: int | None = None
    error_type: str | None = None
    error_message: str | None = None
    timed_out: bool = False
    flags: list[str] = field(default_factory=list)  # harness/mirror/assemble.py lists them
    usage_raw: str | None = None  # the server's usage as sent, when it could not be used
    usage_problem: str | None = None
    routed_experts: str | None = None  # a non-streamed choice's `routed_experts` (base64 .npy), as sent
    expert_record: Any = None  # the call's measured routing (harness.experts ResponseRecord), when recorded
    # the other latency figures (harness/mirror/latency.py)
    ttft_content_s: float | None = None
    ttft_chunk_s: float | None = None
    e2e_chunk_s: float | None = None
    itl_chunk_mean_s: float | None = None
    itl_chunk_p99_s: float | None = None
    tpot_s: float | None = None
    tpot_chunk_s: float | None = None
    chunks: int | None = None
    send_s: float | None = None

    @property
    def ok(self) -> bool:
        return self.error_type is None


class _Retryable(Exception):
    def __init__(self, kind: str, message: str, status: int | None = None, retry_after: float | None = None):
        super().__init__(message)
        self.kind, self.status, self.retry_after = kind, status, retry_after


class _Fatal(Exception):
    def __init__(self, kind: str, message: str, status: int | None = None):
        super().__init__(message)
        self.kind, self.status = kind, status


@dataclass
class RetryPolicy:
    max_retries: int = 3
    backoff_base_s: float = 0.5
    backoff_max_s: float = 8.0
    retry_after_cap_s: float = 60.0

    def delay(self, attempt: int, retry_after: float | None) -> float:
        if retry_after is not None:
            return min(max(retry_after, 0.0), self.retry_after_cap_s)
        return min(self.backoff_max_s, self.backoff_base_s * 2 ** (attempt - 1)) * random.uniform(0.5, 1.0)


async def stream_chat(
    client: RouteClient,
    body: dict[str, Any],
    headers: dict[str, str],
    timeout_s: float,
    retry: RetryPolicy,
) -> CallResult:
    """POST /chat/completions with stream=true; retry connection errors, 429 and 5xx with backoff.

    `timeout_s` bounds each attempt as a whole (the client's own timeouts are per read). Never raises
    (except cancellation): whatever goes wrong in the call is the result's error_type and message,
    with the text and tool calls received so far kept and flagged `partial`.
    """
    result = CallResult(started_at=time.time())
    for attempt in range(1, retry.max_retries + 2):
        result.attempts = attempt
        acc = Assembly()
        try:
            async with asyncio.timeout(timeout_s):
                await _attempt(client, body, headers, result, acc)
            result.error_type = result.error_message = None
            return result
        except TimeoutError:
            return _failed(result, acc, "timeout", f"no complete answer within {timeout_s:g} s", timed_out=True)
        except StreamFault as e:
            return _failed(result, acc, e.kind, str(e))
        except _Fatal as e:
            result.http_status = e.status if e.status is not None else result.http_status
            return _failed(result, acc, e.kind, str(e))
        except _Retryable as e:
            if e.status is not None:
                result.http_status = e.status
            if attempt > retry.max_retries:
                return _failed(result, acc, e.kind, str(e))
            await asyncio.sleep(retry.delay(attempt, e.retry_after))
        except Exception as e:  # a bug of ours must not take the run (or the other route) down
            return _failed(result, acc, "client_error", f"{type(e).__name__}: {e}")
    return result


def _failed(result: CallResult, acc: Assembly, kind: str, message: str, timed_out: bool = False) -> CallResult:
    result.error_type, result.error_message, result.timed_out = kind, message, timed_out
    result.finish_reason = acc.finish_reason
    result.response_id, result.response_model = acc.response_id, acc.response_model
    result.flags = list(acc.flags)
    if acc.received:
        result.text, result.tool_calls = acc.text(), acc.calls()
        result.flags.append("partial")
    else:
        result.text, result.tool_calls = None, []
    return result


async def _attempt(client: RouteClient, body: dict[str, Any], headers: dict[str, str], result: CallResult,
                   acc: Assembly) -> None:
    clock = acc.clock
    clock.start = time.perf_counter()
    try:
        async with client.post_json("chat/completions", body, headers, clock.mark_sent) as resp:
            result.http_status = resp.status
            if resp.status != 200:
                message = f"HTTP {resp.status}: {await _error_detail(resp)}"
                if resp.status in RETRYABLE_STATUS:
                    raise _Retryable(f"http_{resp.status}", message, resp.status, _retry_after(resp))
                raise _Fatal(f"http_{resp.status}", message, resp.status)
            # Sniffed, not read from Content-Type (servers mislabel both ways): an SSE stream never
            # starts with '{', a JSON reply does.
            chunks = resp.content.iter_any()
            head, as_json = b"", False
            async for data in chunks:
                head += data
                start = head.lstrip()[:1]
                if start:
                    as_json = start == b"{"
                    break
            if as_json:
                parts = [head]
                async for data in chunks:
                    parts.append(data)
                acc.completion(b"".join(parts))
                acc.check_complete(False)
            else:
                # SSE on bytes (harness/mirror/sse.py): cheaper than decoding the body to text first.
                decoder = SSEDecoder()
                event = acc.event
                for event_type, data in decoder.feed(head):
                    event(event_type, data)
                async for data in chunks:
                    for event_type, data in decoder.feed(data):
                        event(event_type, data)
                # after [DONE] we read on to the end of the body, so the connection goes back to the pool
                acc.check_complete(decoder.pending)
    except aiohttp.ClientError as e:  # connect, read, protocol and decoding errors, aiohttp's own timeouts
        err = transport_error(e)
        if err.kind == "bad_body":
            raise StreamFault(err.kind, str(err)) from None
        if not err.retryable:
            raise _Fatal(err.kind, str(err)) from None
        raise _Retryable(err.kind, str(err)) from None
    clock.end = time.perf_counter()
    result.finish_reason, result.response_id, result.response_model = acc.finish_reason, acc.response_id, acc.response_model
    result.routed_experts = acc.routed_experts
    result.text = acc.text()
    result.tool_calls = acc.calls()
    token_times = clock.token_times
    usage = acc.usage
    problem = None if usage is None else usage_problem(usage)
    if usage is not None and problem is None:
        result.input_tokens = usage["prompt_tokens"]
        result.output_tokens = usage["completion_tokens"]
        result.total_tokens = usage.get("total_tokens") or result.input_tokens + result.output_tokens
        result.usage_source = "server"
    else:
        # No usage (server ignores stream_options) or none to trust: one streamed delta is about one token.
        if problem is not None:
            acc.flags.append("usage_invalid")
            result.usage_raw = snippet(usage, 4000)
            result.usage_problem = problem
        result.output_tokens = (len(token_times) if "non_streamed" not in acc.flags
                                else len(result.text.split()) + len(result.tool_calls))
        result.input_tokens = sum(len(content_text(m.get("content")).split()) for m in body.get("messages", []))
        result.total_tokens = result.input_tokens + result.output_tokens
        result.usage_source = "counted"
    for key, value in figures(clock, result.output_tokens).items():
        setattr(result, key, value)
    result.flags = acc.flags


async def _error_detail(resp: aiohttp.ClientResponse, limit: int = 65536) -> str:
    """The start of an error body, whatever it is (undecodable, huge, not UTF-8)."""
    parts, size = [], 0
    try:
        async for data in resp.content.iter_any():
            parts.append(data)
            size += len(data)
            if size >= limit:
                break
    except aiohttp.ClientPayloadError as e:
        return f"(error body not decodable: {e})"
    return b"".join(parts).decode("utf-8", "replace")[:500]


def _retry_after(resp: aiohttp.ClientResponse) -> float | None:
    """Retry-After in seconds (a number or an HTTP date); None when absent or not understood."""
    value = resp.headers.get("retry-after")
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError, OverflowError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=timezone.utc)
        seconds = when.timestamp() - time.time()
    return max(0.0, seconds) if math.isfinite(seconds) else None
