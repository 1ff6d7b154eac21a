"""The serving process's half of recording: which run a request belongs to, live counts for
/admin/stats, and the pipe to the recording process (records.py says what crosses it).

Writing never blocks the event loop: frames go through a non-blocking pipe transport, which keeps
what the pipe cannot take yet. Should the recording process fall that far behind (RECORD_BUFFER_LIMIT),
further records are dropped and counted in the run rows rather than held without bound.
"""

from __future__ import annotations

import asyncio
import os
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from multiprocessing.connection import Connection
from typing import Any

from harness.mirror.runner import new_run_id
from harness.proxy.records import Counts, Message, RunNotice, RunOpened, frame
from harness.proxy.shadow import MirrorCounts

RECORD_BUFFER_LIMIT = 256 * 1024 * 1024  # bytes of records waiting for the recording process
PIPE_SIZE = 1024 * 1024  # Linux's default pipe holds 64 KiB: a second of records at a few hundred req/s


@dataclass
class LiveRun:
    run_id: str
    started_at: datetime
    window_end: float | None
    primary: int = 0
    primary_errors: int = 0  # transport failures and non-200 answers (the recorded rows know more)
    mirror_calls: int = 0
    in_flight: int = 0
    status: str = "running"
    finished_at: datetime | None = None
    rate_changes: list[dict[str, Any]] = field(default_factory=list)

    def stats(self) -> dict[str, Any]:
        return {"status": self.status, "primary": self.primary, "primary_errors": self.primary_errors,
                "mirror_calls": self.mirror_calls, "in_flight": self.in_flight}


class Sink:
    """Runs by time window, and every message to the recording process, in order."""

    def __init__(self, conn: Connection, window_s: float | None):
        self._conn = conn
        self._transport: asyncio.WriteTransport | None = None
        self.window_s = window_s
        self.runs: dict[str, LiveRun] = {}
        self.current: LiveRun | None = None
        self.dropped = 0
        self._session_start = time.time()
        self._sent_counts: Counts | None = None

    async def attach(self, loop: asyncio.AbstractEventLoop) -> None:
        """From now on write through a non-blocking transport on the loop."""
        fd = self._conn.fileno()
        try:
            import fcntl

            fcntl.fcntl(fd, getattr(fcntl, "F_SETPIPE_SZ", 1031), PIPE_SIZE)
        except (ImportError, OSError):  # not Linux, or over the system's limit: the default size
            pass
        self._transport, _ = await loop.connect_write_pipe(asyncio.Protocol, os.fdopen(os.dup(fd), "wb", buffering=0))

    def send(self, msg: Message) -> None:
        data = frame(msg)
        t = self._transport
        if t is None:
            self._conn.send_bytes(data[4:])
        elif t.is_closing():
            self.dropped += 1
        elif t.get_write_buffer_size() > RECORD_BUFFER_LIMIT:
            self.dropped += 1
        else:
            t.write(data)

    async def close(self) -> None:
        """Everything written reaches the pipe, then it is closed (the recording process sees the end)."""
        t = self._transport
        if t is not None:
            while t.get_write_buffer_size() and not t.is_closing():
                await asyncio.sleep(0.01)
            t.close()
            self._transport = None
        self._conn.close()

    # -- runs ------------------------------------------------------------------------------------
    def run_for_now(self) -> LiveRun:
        """The run a request arriving now belongs to; opens the next window's run when one has ended."""
        now = time.time()
        cur = self.current
        if cur is not None and (cur.window_end is None or now < cur.window_end):
            return cur
        end = None
        if self.window_s:
            k = int((now - self._session_start) // self.window_s)
            end = self._session_start + (k + 1) * self.window_s
        run = LiveRun(new_run_id(), datetime.now(timezone.utc), end)
        self.runs[run.run_id] = run
        self.current = run
        self.send(RunOpened(run.run_id, run.started_at, end))
        return run

    def rate_changed(self, rate: float) -> None:
        entry = {"at": datetime.now(timezone.utc).isoformat(), "mirror_rate": rate}
        for run in self.runs.values():
            if run.status == "running":
                run.rate_changes.append(entry)

    def counts(self, mirror: dict[tuple[str, str], MirrorCounts], final_status: str | None = None) -> None:
        """Tell the recording process what changed: mirror counts, rate changes, windows that ended
        with nothing left in flight (completed), or every run's end (`final_status`)."""
        now = time.time()
        for run in self.runs.values():
            if run.status != "running":
                continue
            if final_status is not None:
                run.status, run.finished_at = final_status, datetime.now(timezone.utc)
            elif run.window_end is not None and now >= run.window_end and run.in_flight <= 0 and run is not self.current:
                run.status, run.finished_at = "completed", datetime.now(timezone.utc)
        notices = {r.run_id: RunNotice({}, list(r.rate_changes), r.status, r.finished_at) for r in self.runs.values()}
        for (run_id, route), c in mirror.items():
            if run_id in notices:
                notices[run_id].mirror[route] = c.as_dict()
        msg = Counts(notices, self.dropped)
        if msg != self._sent_counts:
            self._sent_counts = msg
            self.send(msg)
