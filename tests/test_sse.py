"""The SSE parser against the WHATWG rules: fixed cases, a reference implementation written from the
spec text, httpx-sse on the events both define, and hypothesis over random streams and splits."""

from __future__ import annotations

import re

import httpx_sse._decoders as hs
from hypothesis import given, settings
from hypothesis import strategies as st

from harness.mirror.sse import SSEDecoder


def parse(body: bytes, splits: list[int] | None = None) -> tuple[list, SSEDecoder]:
    d, events, last = SSEDecoder(), [], 0
    for cut in sorted(set(splits or [])) + [len(body)]:
        events += d.feed(body[last:cut])
        last = cut
    return events, d


def reference(body: bytes) -> list[tuple[bytes | None, bytes]]:
    """The spec's interpretation steps, literally, over the whole body (bytes kept: no decoding)."""
    if body.startswith(b"\xef\xbb\xbf"):
        body = body[3:]
    lines = re.split(rb"\r\n|\r|\n", body)
    lines.pop()  # the part after the last line end is not a line
    events, data, etype = [], b"", b""
    for line in lines:
        if line == b"":
            if data:
                events.append((None if etype == b"" else etype, data[:-1] if data.endswith(b"\n") else data))
            data, etype = b"", b""
            continue
        if line.startswith(b":"):
            continue
        if b":" in line:
            name, value = line.split(b":", 1)
            value = value[1:] if value.startswith(b" ") else value
        else:
            name, value = line, b""
        if name == b"data":
            data += value + b"\n"
        elif name == b"event":
            etype = value
    return [(None if t == b"message" else t, d) for t, d in events]


def test_line_endings_all_give_the_same_events():
    for nl in (b"\n", b"\r", b"\r\n"):
        body = nl.join([b"data: {\"a\": 1}", b"", b"data: [DONE]", b"", b""])
        assert parse(body)[0] == [(None, b'{"a": 1}'), (None, b"[DONE]")], nl


def test_crlf_split_across_reads_is_one_line_end():
    body = b"data: x\r\n\r\ndata: y\r\n\r\n"
    for cut in range(1, len(body)):
        assert parse(body, [cut])[0] == [(None, b"x"), (None, b"y")], cut


def test_multiline_data_comments_event_id_retry_bom():
    body = (b"\xef\xbb\xbf: keep-alive\n"
            b"event: message\nid: 7\nretry: 250\ndata: {\"a\":\ndata:  1}\n\n"
            b"event: error\ndata: boom\n\n"
            b"data\n\n"  # a field without a colon: empty data
            b"id: bad\0id\nevent: ping\n\n")  # no data: not dispatched
    events, d = parse(body, [1, 2, 40])
    assert events == [(None, b'{"a":\n 1}'), (b"error", b"boom"), (None, b"")]
    assert d.last_event_id == b"7" and d.retry_ms == 250 and not d.pending


def test_unterminated_event_is_not_dispatched():
    events, d = parse(b"data: a\n\ndata: b\n")
    assert events == [(None, b"a")] and d.pending


def test_invalid_utf8_is_passed_through_for_the_caller_to_reject():
    assert parse(b"data: \xff\xfe\n\n")[0] == [(None, b"\xff\xfe")]


LINE = st.one_of(
    st.binary(max_size=12).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b"")),
    st.sampled_from([b"data: x", b"data:y", b"data", b": c", b"event: e", b"event:", b"id: 1", b"retry: 5", b""]),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(LINE, st.sampled_from([b"\n", b"\r", b"\r\n"])), max_size=20),
       st.lists(st.integers(min_value=0, max_value=300), max_size=6), st.booleans())
def test_matches_reference_for_any_stream_and_any_split(lines, splits, bom):
    body = (b"\xef\xbb\xbf" if bom else b"") + b"".join(l + nl for l, nl in lines)
    assert parse(body, splits)[0] == reference(body)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400), st.lists(st.integers(min_value=0, max_value=400), max_size=8))
def test_random_bytes_never_raise_and_match_reference(body, splits):
    assert parse(body, splits)[0] == reference(body)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["data: a", "data:b", "data", ": c", "event: e", "id: 1", "x: y", ""]),
                          st.sampled_from(["\n", "\r", "\r\n"])), max_size=20))
def test_agrees_with_httpx_sse_on_events_with_data(lines):
    """httpx-sse (a maintained parser) dispatches data-less events too; on the others we agree.
    (Its line decoder holds a final CR until flush(), which an end of body is.)"""
    text = "".join(l + nl for l, nl in lines)
    line_dec, dec, theirs = hs.SSELineDecoder(), hs.SSEDecoder(), []
    for line in line_dec.decode(text) + line_dec.flush():
        sse = dec.decode(line.rstrip("\n"))
        if sse is not None and sse.data:
            theirs.append(((sse.event if sse.event != "message" else None), sse.data))
    ours = [(e.decode() if e else None, d.decode()) for e, d in parse(text.encode())[0] if d]
    assert ours == theirs
