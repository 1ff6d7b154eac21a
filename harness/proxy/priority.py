"""The recording process's CPU priority: out of the serving process's way, yet never starved.

`SCHED_IDLE` hands the CPU to any other runnable task at once: side by side with nice 10 under
`SCHED_BATCH`, the primary's p99 was lower with it in 6 of 6 runs without mirroring (by 0.6-2.3 ms)
and in 7 of 10 at 100 % mirroring (docs/benchmarks.md, "Shadow proxy: the recording process's
priority"). But beside work that keeps every core busy it gets next to nothing:
recording stops, and a stop waits minutes to write what is left. So the process runs `SCHED_IDLE`
while it keeps up, and nice 10 under `SCHED_BATCH` (a tenth of a contended core; its wake-ups still
never preempt the serving process) once it is behind: the newest call it has read ended more than
`BEHIND_S` ago. It goes back once it has caught up (under `CAUGHT_UP_S`), and stays at nice 10 from
the moment the session stops, so the last rows are written promptly.

Leaving `SCHED_IDLE` needs CAP_SYS_NICE or an RLIMIT_NICE of at least 20 - nice (Linux's rule for
raising a priority); without either, the process stays at nice 10 under `SCHED_BATCH` throughout.
Only the threads this class lowered are switched: a thread at the normal policy is not its own.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Iterator

NICE = 10
BEHIND_S = 1.0  # the newest call read ended longer ago than this: behind
CAUGHT_UP_S = 0.2  # ... and shorter ago than this: caught up
MIN_SWITCH_S = 1.0  # at most one switch a second (each is a system call per thread)


def can_leave_idle(nice: int = NICE) -> bool:
    """Whether this process may go back from SCHED_IDLE to SCHED_BATCH at `nice`."""
    if not hasattr(os, "SCHED_IDLE"):
        return False
    if os.geteuid() == 0:
        return True
    try:
        import resource

        soft = resource.getrlimit(resource.RLIMIT_NICE)[0]
    except (ImportError, AttributeError, OSError):
        return False
    return soft == resource.RLIM_INFINITY or soft >= 20 - nice


def _tasks() -> list[int]:
    try:
        return [int(t) for t in os.listdir("/proc/self/task")]
    except OSError:
        return [threading.get_native_id()]


class Priority:
    """`with lowered()` (or `lower()`) once, in the thread whose later threads should inherit it;
    then `observe(lag)` per call read, `idle()` when nothing is waiting, `stopping()` once the
    session stops. `fell_behind` counts the times the process fell behind (a saturated host),
    adaptive or not."""

    def __init__(self, nice: int = NICE, adaptive: bool | None = None):
        self.nice = nice
        self.adaptive = can_leave_idle(nice) if adaptive is None else adaptive
        self.policy: int | None = None  # the policy set last; None: nothing lowered (not Linux)
        self.behind = False
        self.fell_behind = 0
        self._stopping = False
        self._last_change = float("-inf")

    def lower(self) -> None:
        """The calling thread at `nice`, under SCHED_IDLE if it may come back from it, else SCHED_BATCH.
        What the platform does not allow is skipped (the normal priority)."""
        with contextlib.suppress(AttributeError, OSError):
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), self.nice)
        target = getattr(os, "SCHED_IDLE", None) if self.adaptive else getattr(os, "SCHED_BATCH", None)
        if target is None:
            return
        try:
            os.sched_setscheduler(0, target, os.sched_param(0))
            self.policy = target
        except OSError:
            self.adaptive = False

    @contextlib.contextmanager
    def lowered(self) -> Iterator[Priority]:
        """`lower()` for the block, then the calling thread's policy and nice as they were (where
        allowed: raising a priority back needs root or RLIMIT_NICE), so an in-process caller (a test
        invoking the CLI, a library user) is not left running at idle priority."""
        tid = threading.get_native_id()
        saved = None
        with contextlib.suppress(AttributeError, OSError):
            saved = (os.sched_getscheduler(0), os.sched_getparam(0), os.getpriority(os.PRIO_PROCESS, tid))
        self.lower()
        try:
            yield self
        finally:
            if saved is not None:
                with contextlib.suppress(OSError):
                    os.sched_setscheduler(0, saved[0], saved[1])
                with contextlib.suppress(OSError):
                    os.setpriority(os.PRIO_PROCESS, tid, saved[2])

    def observe(self, lag_s: float, now: float | None = None) -> None:
        """The newest call read ended `lag_s` ago."""
        if self._stopping or (lag_s > BEHIND_S) == self.behind or (CAUGHT_UP_S <= lag_s <= BEHIND_S):
            return
        now = time.monotonic() if now is None else now
        if now - self._last_change < MIN_SWITCH_S:
            return
        self._last_change = now
        self.behind = not self.behind
        self.fell_behind += self.behind
        if self.adaptive and self.policy is not None:
            self._switch(os.SCHED_BATCH if self.behind else os.SCHED_IDLE)

    def idle(self, now: float | None = None) -> None:
        """Nothing is waiting to be read: caught up."""
        self.observe(0.0, now)

    def stopping(self) -> None:
        """The session stops: what is left is written at nice 10, whatever else the machine does."""
        if self.adaptive and self.policy == getattr(os, "SCHED_IDLE", None):
            self._switch(os.SCHED_BATCH)
        self._stopping = True

    def _switch(self, target: int) -> None:
        ours = (os.SCHED_IDLE, os.SCHED_BATCH)
        for tid in _tasks():
            with contextlib.suppress(OSError):  # a thread that has just ended
                if os.sched_getscheduler(tid) in ours:
                    os.sched_setscheduler(tid, target, os.sched_param(0))
        self.policy = target
