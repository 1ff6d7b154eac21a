"""What a server sent -> one answer, with every piece checked: chunk shapes and types, usage, ids.

Pure (no I/O): the client (openai_stream.py) hands over parsed SSE events or a whole JSON reply.
What cannot be trusted either ends the call as a `StreamFault` (its error row: `error_type` is the
fault's kind) or is kept and marked with a flag on the row. The flags:

    partial           the call failed after some text or tool-call pieces arrived (they are kept)
    usage_invalid     the server's usage was of the wrong type, negative, inconsistent or out of
                      range: the raw object is in `usage_raw`, the tokens are counted instead
    id_coerced        the response id was not a string (kept as text)
    model_coerced     the response model was not a string (kept as text)
    non_streamed      a whole JSON completion answered the streamed request
    no_done           finish_reason arrived but the stream ended without [DONE]
    no_finish_reason  [DONE] arrived but no choice had a finish_reason
    bad_unicode       the text held unpaired surrogates (escaped in the JSON), replaced by U+FFFD
    routed_experts_invalid  the reply's `routed_experts` could not be read (not base64 .npy ids of the
                      route's experts): the answer is kept, no routing is stored for it
"""

from __future__ import annotations

import json
from time import perf_counter
from typing import Any

import msgspec

from harness.mirror.latency import StreamClock
from harness.store.validate import repair_unicode, valid_unicode

MAX_TOKENS = 2**31 - 1  # a usage count above this is not a real count
_SNIPPET = 300


_decode = msgspec.json.Decoder().decode


def loads_chunk(data: bytes) -> Any:
    """One chunk's JSON: msgspec (a third of json.loads's CPU per chunk), or, for what msgspec
    refuses (lone surrogate escapes, NaN, 1e400, invalid UTF-8, a BOM, too deep), the standard
    library's reading of the UTF-8 text, which accepts or rejects it as it always did. Where both
    read a chunk they return the same objects."""
    try:
        return _decode(data)
    except (msgspec.DecodeError, msgspec.ValidationError, RecursionError):
        return json.loads(data.decode())


class StreamFault(Exception):
    """The server's answer cannot be taken as a completion; `kind` becomes the row's error_type."""

    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind


def _kind(value: Any) -> str:
    return "null" if value is None else {dict: "an object", list: "a list", str: "a string", bool: "a boolean",
                                         int: "a number", float: "a number"}.get(type(value), type(value).__name__)


def _bad(where: str, value: Any, want: str) -> StreamFault:
    return StreamFault("bad_chunk", f"{where} is {_kind(value)} ({snippet(value)}), expected {want}")


def snippet(value: Any, limit: int = _SNIPPET) -> str:
    text = value.decode("utf-8", "replace") if isinstance(value, (bytes, bytearray)) else (
        value if isinstance(value, str) else json.dumps(value, default=str))
    return text if len(text) <= limit else text[:limit] + "..."


def as_text(value: Any) -> str:
    """An id or model of the wrong type, as text."""
    return (value if isinstance(value, str) else json.dumps(value, default=str) if isinstance(value, (dict, list)) else str(value))[:512]


class Assembly:
    """One attempt's answer as it arrives: text pieces, tool calls by index, usage, and the arrival
    moments marked on its StreamClock (harness/mirror/latency.py turns them into the figures)."""

    __slots__ = ("text_parts", "tool_calls", "clock", "usage", "finish_reason", "response_id", "response_model",
                 "flags", "done", "events", "routed_experts")

    def __init__(self) -> None:
        self.text_parts: list[str] = []
        self.tool_calls: dict[int, dict[str, Any]] = {}
        self.clock = StreamClock(perf_counter())  # the client resets `start` when the request goes out
        self.usage: Any = None
        self.finish_reason: str | None = None
        self.response_id: str | None = None
        self.response_model: str | None = None
        self.flags: list[str] = []
        self.done = False  # [DONE] seen
        self.events = 0  # data events seen (the JSON reply counts as one)
        self.routed_experts: str | None = None  # vLLM --enable-return-routed-experts: the first choice's field

    @property
    def received(self) -> bool:
        """Some of the answer arrived (what a failed call keeps as partial)."""
        return bool(self.text_parts or self.tool_calls)

    # -- streamed -------------------------------------------------------------------------------
    def event(self, event_type: bytes | None, data: bytes) -> None:
        """One SSE event: `data: [DONE]`, a chunk, or an `event: error`."""
        self.events += 1
        if event_type is not None:
            if event_type == b"error":
                raise StreamFault("server_error", "the server sent an error event: " + snippet(data))
            return  # not a chat chunk (for example a ping)
        if data == b"[DONE]":
            self.done = True
            return
        try:
            chunk = loads_chunk(data)
        except UnicodeDecodeError as e:
            raise StreamFault("bad_encoding", f"a chunk is not valid UTF-8 ({e.reason} at byte {e.start}): {snippet(data)}") from None
        except ValueError as e:
            raise StreamFault("bad_json", f"a chunk is not JSON ({e}): {snippet(data)}") from None
        self.chunk(chunk)

    def chunk(self, chunk: Any) -> None:
        if type(chunk) is not dict:
            raise _bad("a chunk", chunk, "a JSON object")
        if "error" in chunk:
            raise StreamFault("server_error", "the server sent an error chunk: " + snippet(chunk["error"]))
        if self.response_id is None or self.response_model is None:
            self._ids(chunk)
        usage = chunk.get("usage")
        if usage is not None and usage != {}:  # null or {} on the chunks before the usage chunk
            self.usage = usage  # checked once, at the end
        choices = chunk.get("choices")
        if choices is None:
            return
        if type(choices) is not list:
            raise _bad("choices", choices, "a list")
        if not choices:
            return  # e.g. the usage chunk: not a chunk with choices for any latency figure
        got_token = got_content = False
        for choice in choices:
            if type(choice) is not dict:
                raise _bad("a choice", choice, "an object")
            delta = choice.get("delta")
            if delta is not None:
                if type(delta) is not dict:
                    raise _bad("delta", delta, "an object")
                content = delta.get("content")
                if content is not None:
                    if type(content) is not str:
                        raise _bad("delta.content", content, "a string")
                    if content:
                        self.text_parts.append(content)
                        got_token = got_content = True
                if delta.get("reasoning_content") or delta.get("reasoning"):
                    got_token = True  # an output token, not answer text
                calls = delta.get("tool_calls")
                if calls is not None:
                    if type(calls) is not list:
                        raise _bad("delta.tool_calls", calls, "a list")
                    for tc in calls:
                        _merge_tool_call(self.tool_calls, tc)
                        got_token = True
            finish = choice.get("finish_reason")
            if finish is not None:
                if type(finish) is not str:
                    raise _bad("finish_reason", finish, "a string")
                self.finish_reason = finish
        self.clock.chunk(perf_counter(), got_token, got_content)

    def _ids(self, obj: dict[str, Any]) -> None:
        rid, model = obj.get("id"), obj.get("model")
        if self.response_id is None and rid is not None:
            if type(rid) is not str:
                rid = as_text(rid)
                self.flags.append("id_coerced")
            self.response_id = rid
        if self.response_model is None and model is not None:
            if type(model) is not str:
                model = as_text(model)
                self.flags.append("model_coerced")
            self.response_model = model

    # -- not streamed ---------------------------------------------------------------------------
    def completion(self, body: bytes) -> None:
        """A whole `chat.completion` JSON object (a server that ignored stream=true)."""
        self.events += 1
        try:
            obj = json.loads(body.decode())
        except UnicodeDecodeError as e:
            raise StreamFault("bad_encoding", f"the reply is not valid UTF-8 ({e.reason} at byte {e.start})") from None
        except ValueError as e:
            raise StreamFault("bad_json", f"the reply is neither an SSE stream nor one JSON object ({e}): {snippet(body)}") from None
        if type(obj) is not dict:
            raise _bad("the reply", obj, "a JSON object")
        self.flags.append("non_streamed")
        if "error" in obj:
            raise StreamFault("server_error", "the server replied with an error: " + snippet(obj["error"]))
        self._ids(obj)
        self.usage = obj.get("usage")
        choices = obj.get("choices")
        if type(choices) is not list:
            raise _bad("choices", choices, "a list")
        for choice in choices:
            if type(choice) is not dict:
                raise _bad("a choice", choice, "an object")
            message = choice.get("message")
            if type(message) is not dict:
                raise _bad("message", message, "an object")
            content = message.get("content")
            if content is not None and type(content) is not str:
                raise _bad("message.content", content, "a string")
            if content:
                self.text_parts.append(content)
            calls = message.get("tool_calls")
            if calls is not None:
                if type(calls) is not list:
                    raise _bad("message.tool_calls", calls, "a list")
                for i, tc in enumerate(calls):
                    if type(tc) is dict and "index" not in tc:
                        tc = {**tc, "index": i}
                    _merge_tool_call(self.tool_calls, tc)
            finish = choice.get("finish_reason")
            if finish is not None and type(finish) is not str:
                raise _bad("finish_reason", finish, "a string")
            self.finish_reason = finish or self.finish_reason
            routed = choice.get("routed_experts")
            if routed is not None and self.routed_experts is None:
                if type(routed) is str:
                    self.routed_experts = routed
                elif "routed_experts_invalid" not in self.flags:
                    self.flags.append("routed_experts_invalid")  # telemetry, not the answer: kept, marked
        if self.text_parts or self.tool_calls:  # the whole reply is one chunk
            self.clock.chunk(perf_counter(), True, bool(self.text_parts))
        self.done = True  # a whole reply is complete by construction

    # -- the end --------------------------------------------------------------------------------
    def check_complete(self, pending: bool) -> None:
        """At the end of the body: a stream that never finished, or said nothing, is not an answer."""
        if not self.events:
            raise StreamFault("bad_stream", "the body has no SSE data events" + (" (it ends inside an unterminated event)" if pending else ""))
        if self.finish_reason is None and not self.done:
            raise StreamFault("truncated", f"the stream ended after {self.events} events without a finish_reason or [DONE]")
        if self.finish_reason is None:
            self.flags.append("no_finish_reason")
        elif not self.done:
            self.flags.append("no_done")
        if not self.text_parts and not self.tool_calls:
            raise StreamFault("empty_answer", f"the answer has no text and no tool calls (finish_reason {self.finish_reason!r})")

    def text(self) -> str:
        text = "".join(self.text_parts)
        if not valid_unicode(text):
            text, lossy = repair_unicode(text)
            if lossy:
                self.flags.append("bad_unicode")
        return text

    def calls(self) -> list[dict[str, Any]]:
        out = [self.tool_calls[i] for i in sorted(self.tool_calls)]
        for call in out:
            fn = call["function"]
            for key in ("name", "arguments"):
                if not valid_unicode(fn[key]):
                    fn[key], lossy = repair_unicode(fn[key])
                    if lossy and "bad_unicode" not in self.flags:
                        self.flags.append("bad_unicode")
        return out


def _merge_tool_call(acc: dict[int, dict[str, Any]], delta: Any) -> None:
    """Tool calls arrive in pieces keyed by index: id and name once, arguments as string fragments."""
    if type(delta) is not dict:
        raise _bad("a tool call", delta, "an object")
    index = delta.get("index", len(acc))
    if type(index) is not int:
        raise _bad("tool_calls[].index", index, "an integer")
    call = acc.get(index)
    if call is None:
        call = acc[index] = {"id": None, "type": "function", "function": {"name": "", "arguments": ""}}
    call_id = delta.get("id")
    if call_id is not None:
        call["id"] = call_id if type(call_id) is str else as_text(call_id)
    fn = delta.get("function")
    if fn is None:
        return
    if type(fn) is not dict:
        raise _bad("tool_calls[].function", fn, "an object")
    name, arguments = fn.get("name"), fn.get("arguments")
    if name is not None:
        if type(name) is not str:
            raise _bad("tool_calls[].function.name", name, "a string")
        call["function"]["name"] += name
    if arguments is not None:
        if type(arguments) is not str:
            raise _bad("tool_calls[].function.arguments", arguments, "a string (JSON text)")
        call["function"]["arguments"] += arguments


def usage_problem(usage: Any) -> str | None:
    """Why the server's usage cannot be used as it is, or None when it can."""
    if type(usage) is not dict:
        return f"usage is {_kind(usage)}, not an object"
    counts = {}
    for key in ("prompt_tokens", "completion_tokens", "total_tokens"):
        value = usage.get(key)
        if value is None:
            if key == "total_tokens":
                continue
            return f"usage has no {key}"
        if type(value) is not int:
            return f"usage.{key} is {_kind(value)} ({snippet(value, 40)}), not an integer"
        if value < 0:
            return f"usage.{key} is negative ({value})"
        if value > MAX_TOKENS:
            return f"usage.{key} is out of range ({snippet(value, 40)})"
        counts[key] = value
    total = counts.get("total_tokens")
    if total is not None and total != counts["prompt_tokens"] + counts["completion_tokens"]:
        return f"usage is inconsistent: total_tokens {total} != prompt_tokens {counts['prompt_tokens']} + completion_tokens {counts['completion_tokens']}"
    return None
