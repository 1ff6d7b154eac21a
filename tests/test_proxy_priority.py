"""The recording process's CPU priority (harness/proxy/priority.py) against the real kernel: the
policies threads actually have after each step, and Linux's rule for leaving SCHED_IDLE checked
in a child that drops root."""

from __future__ import annotations

import os
import subprocess
import sys
import threading

import pytest

from conftest import REPO
from harness.proxy.priority import BEHIND_S, Priority, can_leave_idle

linux_root = pytest.mark.skipif(not hasattr(os, "SCHED_IDLE") or os.geteuid() != 0,
                                reason="Linux scheduling policies, set as root")


def policies_in_a_thread(steps) -> list[tuple[int, int, int]]:
    """Run `steps(priority)` in a fresh thread inside `priority.lowered()`; returns (the thread's
    policy, a helper thread's policy, the thread's nice) at the start, after each step and after the
    block."""
    out: list[tuple[int, int, int]] = []
    error: list[BaseException] = []

    def body() -> None:
        try:
            p = Priority()
            stop = threading.Event()
            me = threading.get_native_id()
            with p.lowered():
                helper = threading.Thread(target=stop.wait)  # started lowered: inherits it, as the span exporter does
                helper.start()

                def look() -> None:
                    out.append((os.sched_getscheduler(me), os.sched_getscheduler(helper.native_id),
                                os.getpriority(os.PRIO_PROCESS, me)))

                look()
                for step in steps:
                    step(p)
                    look()
            look()  # the block left: this thread as it was (the helper, its own thread, as it was last set)
            stop.set()
            helper.join()
        except BaseException as e:  # noqa: BLE001 - re-raised in the test's thread
            error.append(e)

    t = threading.Thread(target=body)
    t.start()
    t.join(30)
    if error:
        raise error[0]
    return out


@linux_root
def test_idle_while_keeping_up_batch_while_behind_and_from_the_stop_on():
    main_policy = os.sched_getscheduler(0)
    idle, batch = os.SCHED_IDLE, os.SCHED_BATCH
    seen = policies_in_a_thread([
        lambda p: p.observe(BEHIND_S * 0.5, now=10.0),  # a little late: still keeping up
        lambda p: p.observe(BEHIND_S + 0.5, now=11.0),  # behind
        lambda p: p.observe(0.05, now=11.5),  # caught up, but within a second of the last switch
        lambda p: p.observe(0.5, now=13.0),  # between the two marks: stays
        lambda p: p.idle(now=14.0),  # nothing waiting: caught up
        lambda p: p.observe(5.0, now=20.0),
        lambda p: p.stopping(),
        lambda p: p.idle(now=30.0),  # once stopping, never idle again
    ])
    assert [(a, b) for a, b, _ in seen[:-1]] == [(idle, idle), (idle, idle), (batch, batch), (batch, batch), (batch, batch),
                                                 (idle, idle), (batch, batch), (batch, batch), (batch, batch)]
    assert {nice for _, _, nice in seen[:-1]} == {10}
    assert seen[-1][0] == main_policy and seen[-1][2] == os.getpriority(os.PRIO_PROCESS, threading.get_native_id())  # put back
    assert os.sched_getscheduler(0) == main_policy  # only the threads it lowered


@linux_root
def test_not_adaptive_is_batch_throughout_and_still_counts_falling_behind():
    batch = os.SCHED_BATCH
    counted: list[int] = []

    def count(p: Priority) -> None:
        counted.append(p.fell_behind)

    seen = policies_in_a_thread([
        lambda p: setattr(p, "adaptive", False) or p._switch(batch),  # as an unprivileged process starts
        lambda p: p.observe(3.0, now=10.0), count,
        lambda p: p.idle(now=12.0),
        lambda p: p.observe(3.0, now=14.0), count,
    ])
    assert [(a, b) for a, b, _ in seen][1:-1] == [(batch, batch)] * 6
    assert counted == [1, 2]


CHILD = r"""
import os, sys
sys.path.insert(0, sys.argv[1])
from harness.proxy.priority import can_leave_idle
os.setgid(65534); os.setuid(65534)  # nobody: no CAP_SYS_NICE, RLIMIT_NICE as inherited
os.setpriority(os.PRIO_PROCESS, 0, 10)
os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))  # lowering: always allowed
try:
    os.sched_setscheduler(0, os.SCHED_BATCH, os.sched_param(0))
    kernel = True
except PermissionError:
    kernel = False
print(can_leave_idle(10), kernel)
"""


@linux_root
def test_can_leave_idle_agrees_with_the_kernel_for_an_unprivileged_process():
    """Linux lets an unprivileged thread leave SCHED_IDLE only at a nice its RLIMIT_NICE allows
    (20 - limit or above; the default limit, 0, allows none): the proxy's check must say what the
    kernel then does, so an unprivileged proxy never lowers itself into SCHED_IDLE for good.
    (Other limits need CAP_SYS_RESOURCE to set, which this machine's root lacks.)"""
    import resource

    out = subprocess.run([sys.executable, "-c", CHILD, str(REPO)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    can, kernel = out.stdout.split()
    assert can == kernel
    if resource.getrlimit(resource.RLIMIT_NICE)[0] == 0:
        assert (can, kernel) == ("False", "False")
    assert can_leave_idle(10)  # this process is root
