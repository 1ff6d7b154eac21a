"""An incremental Server-Sent Events parser over bytes, per the WHATWG event-stream rules.

Why not httpx-sse: it parses text from `aiter_text()`, which replaces invalid UTF-8 silently (we
must report it), costs a text decode of the whole body per chunk, and dispatches events that
carry no data. This parser splits bytes, so only `data` payloads are ever decoded (strictly, by
the caller), and it keeps the CPU per event low on the mirror's hot path.

Rules implemented (https://html.spec.whatwg.org/multipage/server-sent-events.html):
lines end at CRLF, LF or CR (also when split across reads); a leading UTF-8 BOM is dropped; a
line starting with ':' is a comment; `field:value` with one leading space of the value removed,
a line without ':' is a field with an empty value; `data` lines accumulate joined by LF; an empty
line dispatches the event if it has data; `event` sets the type of the next event (default
"message"); `id` sets the last event id unless it contains NUL; `retry` takes ASCII digits;
other fields are ignored; an event not closed by an empty line at the end of the body is not
dispatched (`SSEDecoder.pending` says whether one was left).
"""

from __future__ import annotations

_BOM = b"\xef\xbb\xbf"


class SSEDecoder:
    """Feed it the body's bytes as they arrive; each call returns the events completed so far.

    An event is `(event_type, data)`: event_type is None for the default "message" type, data is
    the raw bytes of the joined `data` lines.
    """

    __slots__ = ("_pending", "_data", "_event", "_skip_lf", "_started", "last_event_id", "retry_ms", "lines")

    def __init__(self) -> None:
        self._pending = b""
        self._data: bytes | None = None
        self._event: bytes | None = None
        self._skip_lf = False  # the previous read ended with CR: a LF starting this one belongs to it
        self._started = False
        self.last_event_id = b""
        self.retry_ms: int | None = None
        self.lines = 0  # complete lines seen (comments and fields included)

    def feed(self, chunk: bytes) -> list[tuple[bytes | None, bytes]]:
        if not chunk:
            return []
        if self._skip_lf:
            self._skip_lf = False
            if chunk[:1] == b"\n":
                chunk = chunk[1:]
        buf = self._pending + chunk if self._pending else chunk
        if not self._started:
            if len(buf) < 3 and _BOM.startswith(buf):
                self._pending = buf  # could still become a BOM
                return []
            self._started = True
            if buf.startswith(_BOM):
                buf = buf[3:]
        if b"\r" in buf:
            if buf[-1:] == b"\r":
                self._skip_lf = True
            buf = buf.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        lines = buf.split(b"\n")
        self._pending = lines.pop()
        if not lines:
            return []
        self.lines += len(lines)
        events: list[tuple[bytes | None, bytes]] = []
        for line in lines:
            if line.startswith(b"data:"):  # the common case first
                value = line[6:] if line[5:6] == b" " else line[5:]
                self._data = value if self._data is None else self._data + b"\n" + value
            elif not line:
                if self._data is not None:
                    events.append((self._event, self._data))
                self._data = self._event = None
            elif line[0] != 58:  # not a ':' comment
                self._field(line)
        return events

    def _field(self, line: bytes) -> None:
        name, colon, value = line.partition(b":")
        if colon and value[:1] == b" ":
            value = value[1:]
        if name == b"data":  # "data" without a colon: an empty data line
            self._data = value if self._data is None else self._data + b"\n" + value
        elif name == b"event":
            self._event = None if value in (b"", b"message") else value
        elif name == b"id":
            if b"\0" not in value:
                self.last_event_id = value
        elif name == b"retry":
            if value.isdigit() and value.isascii():
                self.retry_ms = int(value)

    @property
    def pending(self) -> bool:
        """True when the body ended inside an event (data read but no closing empty line)."""
        return self._data is not None or bool(self._pending.strip())
