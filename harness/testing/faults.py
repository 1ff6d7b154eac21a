"""Server faults the stub can inject, one per name: each reproduces a way a real server (or proxy)
breaks a chat completion. Selected per request with `[[fault:NAME]]` in the last user message
(when the stub runs with `faults: true` or `--faults`), or for every request with `--fault NAME`.

Each fault is a function of the normal answer (`Answer`) returning the raw reply: status,
headers and the body as the byte pieces to write one by one, so framing faults reach the client
exactly as written. FAULTS lists them with the class of fault each belongs to (docs/reliability.md).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any, Callable

MARKER = re.compile(r"\[\[fault:([a-z0-9_]+)\]\]")
SSE = {"content-type": "text/event-stream"}


@dataclass
class Answer:
    """What the stub would have answered, for a fault to break."""

    rid: str
    model: str
    pieces: list[str]  # text pieces (one per token)
    usage: dict[str, int]
    finish: str
    authorization: str  # the request's Authorization header, for the echo faults
    seen: int  # earlier requests with the same body (0 on the first)


@dataclass
class Reply:
    status: int = 200
    headers: dict[str, str] = field(default_factory=lambda: dict(SSE))
    parts: list[bytes] = field(default_factory=list)


def _chunk(a: Answer, delta: Any = None, finish: Any = None, **top: Any) -> dict[str, Any]:
    obj = {"id": a.rid, "object": "chat.completion.chunk", "created": 0, "model": a.model,
           "choices": [{"index": 0, "delta": {} if delta is None else delta, "finish_reason": finish}]}
    obj.update(top)
    return obj


def _data(obj: Any) -> bytes:
    return b"data: " + json.dumps(obj).encode() + b"\n\n"


def _stream(a: Answer, *, content: list[Any] | None = None, finish: bool = True, usage: Any = "default",
            done: bool = True, top: dict[str, Any] | None = None) -> list[bytes]:
    """The normal stream, with any piece replaced: role, content chunks, finish, usage, [DONE]."""
    top = top or {}
    parts = [_data(_chunk(a, {"role": "assistant", "content": ""}, **top))]
    parts += [_data(_chunk(a, {"content": p}, **top)) for p in (a.pieces if content is None else content)]
    if finish:
        parts.append(_data(_chunk(a, {}, a.finish, **top)))
    if usage is not None:
        u = a.usage if usage == "default" else usage
        parts.append(_data({"id": a.rid, "object": "chat.completion.chunk", "created": 0, "model": a.model, "choices": [], "usage": u, **top}))
    if done:
        parts.append(b"data: [DONE]\n\n")
    return parts


def _first_then_ok(status: int, headers: dict[str, str]) -> Callable[[Answer], Reply]:
    def fault(a: Answer) -> Reply:
        if a.seen == 0:
            return Reply(status, {"content-type": "application/json", **headers}, [json.dumps({"error": {"message": "busy"}}).encode()])
        return Reply(parts=_stream(a))
    return fault


def _bad_chunk(obj: Callable[[Answer], Any]) -> Callable[[Answer], Reply]:
    """One good content chunk, then `obj` as a chunk, then the rest of the normal stream."""
    def fault(a: Answer) -> Reply:
        parts = _stream(a)
        return Reply(parts=parts[:2] + [_data(obj(a))] + parts[2:])
    return fault


def _raw_chunk(raw: bytes) -> Callable[[Answer], Reply]:
    def fault(a: Answer) -> Reply:
        parts = _stream(a)
        return Reply(parts=parts[:2] + [raw] + parts[2:])
    return fault


def _usage(u: Any) -> Callable[[Answer], Reply]:
    return lambda a: Reply(parts=_stream(a, usage=u))


def _top(**fields: Any) -> Callable[[Answer], Reply]:
    return lambda a: Reply(parts=_stream(a, top=fields))


def _endings(nl: bytes) -> Callable[[Answer], Reply]:
    return lambda a: Reply(parts=[p.replace(b"\n", nl) for p in _stream(a)])


def _multiline(a: Answer) -> Reply:
    """Each JSON chunk split over several `data:` lines (joined with LF, still the same JSON)."""
    out = []
    for p in _stream(a):
        body = p[len(b"data: "):-2]
        if body == b"[DONE]":
            out.append(p)
            continue
        text = body.decode()
        cut = text.index(",") + 1
        out.append(f"data: {text[:cut]}\ndata:{text[cut:]}\n\n".encode())
    return Reply(parts=out)


def _fields(a: Answer) -> Reply:
    parts = [b": keep-alive comment\n\n", b"retry: 1000\n"]
    for i, p in enumerate(_stream(a)):
        parts.append(b"event: message\nid: " + str(i).encode() + b"\n" + p + b": ping\n")
    return Reply(parts=parts)


def _byte_by_byte(a: Answer) -> Reply:
    body = b"".join(_stream(a)).replace(b"\n", b"\r\n")
    return Reply(parts=[body[i:i + 1] for i in range(len(body))])


def _json_reply(a: Answer, content_type: str = "application/json") -> Reply:
    body = {"id": a.rid, "object": "chat.completion", "created": 0, "model": a.model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "".join(a.pieces)}, "finish_reason": a.finish}],
            "usage": a.usage}
    return Reply(headers={"content-type": content_type}, parts=[json.dumps(body).encode()])


def _echo_error(a: Answer) -> Reply:
    msg = {"error": {"message": f"invalid key, you sent: {a.authorization}", "type": "auth"}}
    return Reply(401, {"content-type": "application/json"}, [json.dumps(msg).encode()])


def _echo_text(a: Answer) -> Reply:
    return Reply(parts=_stream(a, content=[*a.pieces, f" (your header: {a.authorization})"]))


GARBAGE = b"\x1f\x8b\x08\x00this is not gzip at all" * 4

# name -> (class, reply). The class names are the headings of docs/reliability.md.
FAULTS: dict[str, tuple[str, Callable[[Answer], Reply]]] = {
    # a chunk that is not JSON, or JSON of the wrong shape or types
    "bad_json": ("chunk", _raw_chunk(b'data: {"choices": [oops\n\n')),
    "data_null": ("chunk", _raw_chunk(b"data: null\n\n")),
    "list_chunk": ("chunk", _raw_chunk(b"data: [1, 2]\n\n")),
    "string_chunk": ("chunk", _raw_chunk(b'data: "hello"\n\n')),
    "number_chunk": ("chunk", _raw_chunk(b"data: 5\n\n")),
    "choices_object": ("chunk", _bad_chunk(lambda a: {**_chunk(a), "choices": {"0": {"delta": {"content": "x"}}}})),
    "choice_string": ("chunk", _bad_chunk(lambda a: {**_chunk(a), "choices": ["x"]})),
    "delta_string": ("chunk", _bad_chunk(lambda a: _chunk(a, "hi"))),
    "content_number": ("chunk", _bad_chunk(lambda a: _chunk(a, {"content": 5}))),
    "content_list": ("chunk", _bad_chunk(lambda a: _chunk(a, {"content": ["a"]}))),
    "finish_number": ("chunk", _bad_chunk(lambda a: _chunk(a, {}, 1))),
    "tool_calls_object": ("chunk", _bad_chunk(lambda a: _chunk(a, {"tool_calls": {"index": 0}}))),
    "tool_call_string": ("chunk", _bad_chunk(lambda a: _chunk(a, {"tool_calls": ["call"]}))),
    "tool_call_index_string": ("chunk", _bad_chunk(lambda a: _chunk(a, {"tool_calls": [{"index": "0", "function": {"name": "f"}}]}))),
    "tool_call_function_string": ("chunk", _bad_chunk(lambda a: _chunk(a, {"tool_calls": [{"index": 0, "function": "f"}]}))),
    "tool_call_name_number": ("chunk", _bad_chunk(lambda a: _chunk(a, {"tool_calls": [{"index": 0, "function": {"name": 5}}]}))),
    "tool_call_arguments_object": ("chunk", _bad_chunk(lambda a: _chunk(a, {"tool_calls": [{"index": 0, "function": {"name": "f", "arguments": {"a": 1}}}]}))),
    "error_chunk": ("chunk", _bad_chunk(lambda a: {"error": {"message": "overloaded", "type": "server"}})),
    "error_event": ("chunk", _raw_chunk(b'event: error\ndata: {"message": "overloaded"}\n\n')),
    # bytes that are not UTF-8, and JSON strings that are not Unicode
    "invalid_utf8": ("encoding", _raw_chunk(b'data: {"choices": [{"index": 0, "delta": {"content": "caf\xe9 \xff"}}]}\n\n')),
    "lone_surrogate": ("encoding", lambda a: Reply(parts=[p.replace(b"LONE", b"\\ud800") for p in _stream(a, content=[*a.pieces, " LONE"])])),
    "split_surrogate_pair": ("encoding", lambda a: Reply(parts=[p.replace(b"SPLIT1", b"\\ud83d").replace(b"SPLIT2", b"\\ude00")
                                                                 for p in _stream(a, content=[*a.pieces, " SPLIT1", "SPLIT2"])])),
    # headers a client must not trust, bodies it cannot decode
    "retry_after_garbage": ("headers", _first_then_ok(503, {"retry-after": "soon-ish"})),
    "retry_after_nan": ("headers", _first_then_ok(429, {"retry-after": "nan"})),
    "retry_after_bad_date": ("headers", _first_then_ok(429, {"retry-after": "Mon, 32 Foo 2025 25:61:00 GMT"})),
    "retry_after_garbage_always": ("headers", lambda a: Reply(503, {"content-type": "application/json", "retry-after": "soon-ish"}, [b"{}"])),
    "gzip_garbage": ("headers", lambda a: Reply(200, {**SSE, "content-encoding": "gzip"}, [GARBAGE])),
    "gzip_garbage_error": ("headers", lambda a: Reply(500, {"content-type": "application/json", "content-encoding": "gzip"}, [GARBAGE])),
    "content_length_short": ("headers", lambda a: Reply(200, {**SSE, "content-length": "100000"}, _stream(a))),
    "json_content_type_on_sse": ("headers", lambda a: Reply(200, {"content-type": "application/json"}, _stream(a))),
    # usage of the wrong type, negative, inconsistent or out of range
    "usage_string": ("usage", _usage({"prompt_tokens": "3", "completion_tokens": "4", "total_tokens": "7"})),
    "usage_negative": ("usage", _usage({"prompt_tokens": 3, "completion_tokens": -4, "total_tokens": -1})),
    "usage_inconsistent": ("usage", _usage({"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 99})),
    "usage_huge": ("usage", _usage({"prompt_tokens": 3, "completion_tokens": 2**70, "total_tokens": 2**70 + 3})),
    "usage_float": ("usage", _usage({"prompt_tokens": 3.5, "completion_tokens": 4, "total_tokens": 7.5})),
    "usage_bool": ("usage", _usage({"prompt_tokens": True, "completion_tokens": 4, "total_tokens": 5})),
    "usage_not_object": ("usage", _usage("lots")),
    "usage_missing_counts": ("usage", _usage({"total_tokens": 7})),
    # ids and models of the wrong type
    "id_number": ("ids", _top(id=12345)),
    "id_huge": ("ids", _top(id=2**80)),
    "id_object": ("ids", _top(id={"x": 1})),
    "model_number": ("ids", _top(model=7)),
    "model_list": ("ids", _top(model=["a", "b"])),
    # streams that end early, say nothing, or are not streams
    "no_finish_no_done": ("completeness", lambda a: Reply(parts=_stream(a, finish=False, usage=None, done=False))),
    "finish_no_done": ("completeness", lambda a: Reply(parts=_stream(a, done=False))),
    "done_no_finish": ("completeness", lambda a: Reply(parts=_stream(a, finish=False))),
    "no_data_prefix": ("completeness", lambda a: Reply(parts=[p[len(b"data: "):] for p in _stream(a)])),
    "unknown_field_lines": ("completeness", lambda a: Reply(parts=[b"message" + p[len(b"data"):] for p in _stream(a)])),
    "empty_body": ("completeness", lambda a: Reply(parts=[])),
    "empty_answer": ("completeness", lambda a: Reply(parts=_stream(a, content=[], usage={**a.usage, "completion_tokens": 0,
                                                                                       "total_tokens": a.usage["prompt_tokens"]}))),
    "json_reply": ("completeness", _json_reply),
    "json_reply_sse_type": ("completeness", lambda a: _json_reply(a, "text/event-stream")),
    # valid SSE that a careless parser gets wrong
    "cr_endings": ("framing", _endings(b"\r")),
    "crlf_endings": ("framing", _endings(b"\r\n")),
    "multiline_data": ("framing", _multiline),
    "comments_and_fields": ("framing", _fields),
    "bom": ("framing", lambda a: Reply(parts=[b"\xef\xbb\xbf", *_stream(a)])),
    "byte_by_byte": ("framing", _byte_by_byte),
    # a server that echoes the API key
    "echo_key_error": ("secrets", _echo_error),
    "echo_key_text": ("secrets", _echo_text),
}


def select(text: str, default: str | None) -> str | None:
    """The fault for a request: its [[fault:NAME]] marker, else the stub's --fault."""
    found = MARKER.search(text)
    return found.group(1) if found and found.group(1) in FAULTS else default
