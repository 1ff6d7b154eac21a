"""What one proxied call was, from the bytes that went past: pure, run after the response is sent.

The proxy copies each upstream chunk to the client and keeps it with its arrival time; nothing is
parsed on the way. Afterwards `read_call` turns the kept chunks into the same `CallResult` a
corpus run records (text, tool calls, finish reason, usage, TTFT, ITL), for an SSE stream or a
whole JSON completion alike. TTFT of a non-streamed answer is the arrival of its first byte.
JSON is decoded with msgspec: the chunks of every call are decoded here, and the standard
library's decoder was most of the proxy's CPU per request (docs/benchmarks.md, "Shadow proxy").
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

import msgspec

from harness.corpus import content_text
from harness.mirror.openai_stream import CallResult


@dataclass
class Exchange:
    """One upstream call as the proxy saw it. Times are perf_counter seconds, `wall_start` epoch seconds."""

    wall_start: float
    t_sent: float
    status: int | None = None
    content_type: str = ""
    chunks: list[bytes] = field(default_factory=list)
    times: list[float] = field(default_factory=list)
    t_end: float | None = None
    error_type: str | None = None  # transport failure (connect, reset, timeout, client gone)
    error_message: str | None = None
    timed_out: bool = False

    def wall(self, t: float | None) -> float:
        """A perf_counter time of this exchange as epoch seconds (None: when it was sent)."""
        return self.wall_start + (t - self.t_sent if t is not None else 0.0)


def _merge_tool_call(acc: dict[int, dict[str, Any]], delta: dict[str, Any]) -> None:
    """Tool calls stream in pieces keyed by index: id and name once, arguments as string fragments."""
    index = delta.get("index", len(acc))
    call = acc.setdefault(index, {"id": None, "type": "function", "function": {"name": "", "arguments": ""}})
    if delta.get("id"):
        call["id"] = delta["id"]
    fn = delta.get("function") or {}
    if fn.get("name"):
        call["function"]["name"] += fn["name"]
    if fn.get("arguments"):
        call["function"]["arguments"] += fn["arguments"]


def _counted_input(body: dict[str, Any]) -> int:
    return sum(len(content_text(m.get("content")).split()) for m in body.get("messages") or () if isinstance(m, dict))


def read_call(body: dict[str, Any], ex: Exchange) -> CallResult:
    """The CallResult of an exchange; never raises (a body that cannot be read is an error row)."""
    r = CallResult(started_at=ex.wall_start, attempts=1, http_status=ex.status)
    if ex.t_end is not None:
        r.latency_s = ex.t_end - ex.t_sent
    raw = b"".join(ex.chunks)
    if ex.error_type:
        r.error_type, r.error_message, r.timed_out = ex.error_type, ex.error_message, ex.timed_out
    elif ex.status != 200:
        r.error_type = f"http_{ex.status}"
        r.error_message = f"HTTP {ex.status}: " + raw[:500].decode("utf-8", "replace")
    try:
        if raw.lstrip()[:1] == b"{":
            _read_json(raw, ex, r)
        else:
            _read_sse(ex, r)
    except (ValueError, TypeError, AttributeError, KeyError) as e:
        if r.error_type is None:
            r.error_type, r.error_message = "bad_response", f"the answer cannot be read: {type(e).__name__}: {e}"[:500]
    if r.usage_source is None and r.error_type is None:
        r.input_tokens = _counted_input(body)
        r.total_tokens = r.input_tokens + (r.output_tokens or 0)
        r.usage_source = "counted"
    return r


def _usage(r: CallResult, usage: Any) -> None:
    if isinstance(usage, dict) and isinstance(usage.get("completion_tokens"), int):
        r.input_tokens = usage.get("prompt_tokens")
        r.output_tokens = usage["completion_tokens"]
        r.total_tokens = usage.get("total_tokens") or (r.input_tokens or 0) + r.output_tokens
        r.usage_source = "server"


_fast = msgspec.json.Decoder().decode


def _decode(data: bytes) -> Any:
    """msgspec, and the standard library for what msgspec refuses but `json` reads (lone surrogate
    escapes, NaN, huge floats), so a recorded call reads exactly as a corpus run's would."""
    try:
        return _fast(data)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return json.loads(data)


def _read_json(raw: bytes, ex: Exchange, r: CallResult) -> None:
    doc = _decode(raw)
    if not isinstance(doc, dict) or "choices" not in doc:
        if r.error_type is None and isinstance(doc, dict) and "error" in doc:
            r.error_type, r.error_message = "server_error", json.dumps(doc["error"])[:500]
        return
    r.response_id, r.response_model = doc.get("id"), doc.get("model")
    choice = (doc.get("choices") or [{}])[0]
    msg = choice.get("message") or {}
    r.text = content_text(msg.get("content"))
    r.tool_calls = [{"id": c.get("id"), "type": c.get("type", "function"),
                     "function": {"name": (c.get("function") or {}).get("name") or "",
                                  "arguments": (c.get("function") or {}).get("arguments") or ""}}
                    for c in msg.get("tool_calls") or ()]
    r.finish_reason = choice.get("finish_reason")
    if ex.times:
        r.ttft_s = ex.times[0] - ex.t_sent
    _usage(r, doc.get("usage"))
    if r.usage_source is None:
        r.output_tokens = len(r.text.split()) + len(r.tool_calls)


def _read_sse(ex: Exchange, r: CallResult) -> None:
    text: list[str] = []
    calls: dict[int, dict[str, Any]] = {}
    token_times: list[float] = []
    pending = b""
    for data, t in zip(ex.chunks, ex.times):
        pending += data
        if b"\n" not in data:
            continue
        *lines, pending = pending.split(b"\n")
        for line in lines:
            if not line.startswith(b"data:"):
                continue
            payload = line[5:].strip()
            if payload == b"[DONE]" or not payload:
                continue
            chunk = _decode(payload)
            if "error" in chunk and r.error_type is None:
                r.error_type, r.error_message = "server_error", json.dumps(chunk["error"])[:500]
            if r.response_id is None:
                r.response_id, r.response_model = chunk.get("id"), chunk.get("model")
            if chunk.get("usage"):
                _usage(r, chunk["usage"])
            for choice in chunk.get("choices") or ():
                delta = choice.get("delta") or {}
                got = False
                if delta.get("content"):
                    text.append(delta["content"])
                    got = True
                for tc in delta.get("tool_calls") or ():
                    _merge_tool_call(calls, tc)
                    got = True
                if got:
                    token_times.append(t)
                if choice.get("finish_reason"):
                    r.finish_reason = choice["finish_reason"]
    r.text = "".join(text)
    r.tool_calls = [calls[i] for i in sorted(calls)]
    if token_times:
        r.ttft_s = token_times[0] - ex.t_sent
        if len(token_times) > 1:
            gaps = sorted(b - a for a, b in zip(token_times, token_times[1:]))
            r.itl_mean_s = sum(gaps) / len(gaps)
            r.itl_p99_s = gaps[min(len(gaps) - 1, int(0.99 * len(gaps)))]
    if r.usage_source is None:
        r.output_tokens = len(token_times)  # one streamed delta is about one token


# -- content that must not be kept -----------------------------------------------------------------
def digest(text: str | None) -> dict[str, Any] | None:
    """What `capture_content: false` keeps of a text: its SHA-256 and length."""
    if text is None:
        return None
    return {"sha256": hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest(), "chars": len(text)}


def redact_messages(messages: list[Any]) -> list[dict[str, Any]]:
    """Messages with each content (string or parts) replaced by its digest; roles and tool names kept."""
    out = []
    for m in messages:
        if not isinstance(m, dict):
            continue
        kept: dict[str, Any] = {"role": m.get("role")}
        content = m.get("content")
        if content is not None:
            kept["content_digest"] = digest(content if isinstance(content, str) else json.dumps(content, sort_keys=True))
        if m.get("tool_calls"):
            kept["tool_calls"] = redact_tool_calls(m["tool_calls"])
        out.append(kept)
    return out


def redact_tool_calls(calls: list[Any]) -> list[dict[str, Any]]:
    """Tool calls with names kept (tool selection stays scorable) and arguments replaced by their digest."""
    out = []
    for c in calls or ():
        fn = (c.get("function") or {}) if isinstance(c, dict) else {}
        out.append({"id": c.get("id") if isinstance(c, dict) else None, "type": "function",
                    "function": {"name": fn.get("name"), "arguments_digest": digest(fn.get("arguments") or "")}})
    return out
