"""One streamed OpenAI-compatible chat completion, with timing, retries and tool-call assembly.

Timing is taken on the client: the moments of each attempt are marked on a StreamClock and every
latency figure (ours and `vllm bench serve`'s) is defined in harness/mirror/latency.py.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import random
import time
from dataclasses import dataclass, field
from typing import Any

import httpx

from harness.mirror.latency import StreamClock, figures

RETRYABLE_STATUS = {408, 409, 425, 429, 500, 502, 503, 504}


@dataclass
class CallResult:
    text: str = ""
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
    client: httpx.AsyncClient,
    body: dict[str, Any],
    headers: dict[str, str],
    timeout_s: float,
    retry: RetryPolicy,
) -> CallResult:
    """POST /chat/completions with stream=true; retry connection errors, 429 and 5xx with backoff.

    `timeout_s` bounds each attempt as a whole (httpx's own timeouts are per read).
    """
    result = CallResult(started_at=time.time())
    for attempt in range(1, retry.max_retries + 2):
        result.attempts = attempt
        try:
            async with asyncio.timeout(timeout_s):
                await _attempt(client, body, headers, result)
            result.error_type = result.error_message = None
            return result
        except TimeoutError:
            result.error_type, result.error_message, result.timed_out = "timeout", f"no complete answer within {timeout_s:g} s", True
            return result
        except _Fatal as e:
            result.error_type, result.error_message, result.http_status = e.kind, str(e), e.status
            return result
        except _Retryable as e:
            result.error_type, result.error_message, result.http_status = e.kind, str(e), e.status
            if attempt > retry.max_retries:
                return result
            await asyncio.sleep(retry.delay(attempt, e.retry_after))
    return result


async def _attempt(client: httpx.AsyncClient, body: dict[str, Any], headers: dict[str, str], result: CallResult) -> None:
    text_parts: list[str] = []
    tool_calls: dict[int, dict[str, Any]] = {}
    usage: dict[str, Any] | None = None
    result.finish_reason = result.response_id = result.response_model = None
    clock = StreamClock(time.perf_counter())
    try:
        async with client.stream("POST", "chat/completions", json=body, headers=headers,
                                 extensions={"trace": clock.httpcore_trace}) as resp:
            result.http_status = resp.status_code
            if resp.status_code != 200:
                detail = (await resp.aread()).decode("utf-8", "replace")[:500]
                message = f"HTTP {resp.status_code}: {detail}"
                if resp.status_code in RETRYABLE_STATUS:
                    raise _Retryable(f"http_{resp.status_code}", message, resp.status_code, _retry_after(resp))
                raise _Fatal(f"http_{resp.status_code}", message, resp.status_code)
            # SSE split by hand on bytes: httpx's aiter_lines decodes to text first and costs more CPU.
            pending = b""
            async for data_bytes in resp.aiter_bytes():
                pending += data_bytes
                *lines, pending = pending.split(b"\n")
                for line in lines:
                    if not line.startswith(b"data:"):
                        continue
                    data = line[5:].strip()
                    if data == b"[DONE]":
                        continue  # read on to the end of the body, so the connection goes back to the pool
                    chunk = json.loads(data)
                    if "error" in chunk:
                        raise _Fatal("server_error", json.dumps(chunk["error"])[:500], resp.status_code)
                    if result.response_id is None:
                        result.response_id = chunk.get("id")
                        result.response_model = chunk.get("model")
                    if chunk.get("usage"):
                        usage = chunk["usage"]
                    choices = chunk.get("choices")
                    if not choices:
                        continue
                    got_token = got_content = False
                    for choice in choices:
                        delta = choice.get("delta") or {}
                        if delta.get("content"):
                            text_parts.append(delta["content"])
                            got_token = got_content = True
                        if delta.get("reasoning_content") or delta.get("reasoning"):
                            got_token = True
                        for tc in delta.get("tool_calls") or ():
                            _merge_tool_call(tool_calls, tc)
                            got_token = True
                        if choice.get("finish_reason"):
                            result.finish_reason = choice["finish_reason"]
                    clock.chunk(time.perf_counter(), got_token, got_content)
    except (httpx.ConnectError, httpx.ConnectTimeout, httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError) as e:
        raise _Retryable(type(e).__name__, str(e) or type(e).__name__) from None
    except json.JSONDecodeError as e:
        raise _Fatal("bad_stream", f"server sent a chunk that is not JSON: {e}") from None
    clock.end = time.perf_counter()
    result.text = "".join(text_parts)
    result.tool_calls = [tool_calls[i] for i in sorted(tool_calls)]
    token_times = clock.token_times
    if usage and usage.get("completion_tokens") is not None:
        result.input_tokens = usage.get("prompt_tokens")
        result.output_tokens = usage.get("completion_tokens")
        result.total_tokens = usage.get("total_tokens") or (result.input_tokens or 0) + result.output_tokens
        result.usage_source = "server"
    else:
        # No usage chunk (server ignores stream_options): one streamed delta is about one token.
        result.output_tokens = len(token_times)
        result.input_tokens = sum(len(str(m.get("content") or "").split()) for m in body.get("messages", []))
        result.total_tokens = result.input_tokens + result.output_tokens
        result.usage_source = "counted"
    for key, value in figures(clock, result.output_tokens).items():
        setattr(result, key, value)


def _merge_tool_call(acc: dict[int, dict[str, Any]], delta: dict[str, Any]) -> None:
    """Tool calls arrive in pieces keyed by index: id and name once, arguments as string fragments."""
    index = delta.get("index", len(acc))
    call = acc.setdefault(index, {"id": None, "type": "function", "function": {"name": "", "arguments": ""}})
    if delta.get("id"):
        call["id"] = delta["id"]
    fn = delta.get("function") or {}
    if fn.get("name"):
        call["function"]["name"] += fn["name"]
    if fn.get("arguments"):
        call["function"]["arguments"] += fn["arguments"]


def _retry_after(resp: httpx.Response) -> float | None:
    value = resp.headers.get("retry-after")
    if not value:
        return None
    try:
        return float(value)
    except ValueError:
        when = email.utils.parsedate_to_datetime(value)
        return None if when is None else max(0.0, when.timestamp() - time.time())
