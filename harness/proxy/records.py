"""What the serving process tells the recording process: pure data and its framing, no I/O.

The proxy is two processes (docs/proxy.md, "Two processes"). The serving process answers clients
and mirrors; all it does for the record is pickle one message per finished call and write it to a
pipe. The recording process reads the messages in order and turns them into spans and rows.
Span ids are chosen where the call is made, because the upstream's `traceparent` must carry them
before anything is recorded; the recording process makes its spans with those ids.

Framing is multiprocessing's (`Connection.recv_bytes`): a 4-byte big-endian signed length, then a
pickle; the serving side writes frames through a non-blocking asyncio pipe transport.
"""

from __future__ import annotations

import pickle
import random
import struct
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Union

from harness.proxy.capture import Exchange

_LENGTH = struct.Struct("!i")


@dataclass
class TraceIds:
    """One span's ids. `parent_id` 0: a root span. `remote`: the parent is the client's (traceparent)."""

    trace_id: int
    span_id: int
    parent_id: int = 0
    sampled: bool = True
    tracestate: str = ""
    remote: bool = False

    def child(self) -> "TraceIds":
        """A span under this one, in the same trace."""
        return TraceIds(self.trace_id, new_span_id(), self.span_id, self.sampled, self.tracestate, False)

    def traceparent(self) -> dict[str, str]:
        """The W3C headers that make this span the upstream server's parent."""
        h = {"traceparent": f"00-{self.trace_id:032x}-{self.span_id:016x}-{'01' if self.sampled else '00'}"}
        if self.tracestate:
            h["tracestate"] = self.tracestate
        return h


def new_span_id() -> int:
    return random.getrandbits(64) or 1


def new_trace_id() -> int:
    return random.getrandbits(128) or 1


@dataclass
class RunOpened:
    run_id: str
    started_at: datetime
    window_end: float | None  # epoch seconds; None: until the session ends


@dataclass
class PrimaryCall:
    """A client's request and the primary's answer; `server` is the proxy's SERVER span, `client` the
    call's CLIENT span under it."""

    run_id: str
    prompt_id: str
    seq: int
    cohort: str
    raw: bytes  # the client's body as received
    path: str
    server: TraceIds
    client: TraceIds
    server_start_ns: int
    ex: Exchange
    mirrored: list[str]


@dataclass
class MirrorCall:
    run_id: str
    prompt_id: str
    cohort: str
    route: str
    raw: bytes  # the client's body (the route's model is set when read)
    span: TraceIds
    queue_wait_s: float
    ex: Exchange


@dataclass
class RunNotice:
    """What only the serving side knows of a run: mirror counts, rate changes, a window's end."""

    mirror: dict[str, dict[str, int]] = field(default_factory=dict)  # route -> MirrorCounts.as_dict()
    rate_changes: list[dict[str, Any]] = field(default_factory=list)
    status: str = "running"
    finished_at: datetime | None = None


@dataclass
class Counts:
    runs: dict[str, RunNotice]
    records_dropped: int = 0  # messages the serving side could not hand over (its buffer was full)


@dataclass
class Ready:
    url: str
    run_id: str


@dataclass
class Ended:
    status: str


@dataclass
class Failed:
    """The serving process could not start (a port in use, say): the message is the user's."""

    message: str


Message = Union[RunOpened, PrimaryCall, MirrorCall, Counts, Ready, Ended, Failed]


def frame(msg: Message) -> bytes:
    """One message as `Connection.recv_bytes` reads it."""
    data = pickle.dumps(msg, protocol=pickle.HIGHEST_PROTOCOL)
    return _LENGTH.pack(len(data)) + data


def read(data: bytes) -> Message:
    return pickle.loads(data)
