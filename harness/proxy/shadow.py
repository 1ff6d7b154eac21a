"""Mirroring live traffic to the candidate routes: sampled, bounded, never in the primary's way.

A request is sampled once (all candidates or none, so candidates are compared on the same
prompts) at the current rate, which the admin endpoint may change at any time. A sampled request
becomes one job per candidate in that candidate's queue; `max_concurrency` workers per candidate
take jobs from it. A full queue drops the job and counts it: the primary never waits on a
candidate, and memory is bounded by queue_size x candidates however slow a candidate gets.
"""

from __future__ import annotations

import asyncio
import dataclasses
import random
import time
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable

from harness.config import RouteConfig
from harness.proxy.records import TraceIds


@dataclass
class MirrorJob:
    run_id: str
    prompt_id: str
    cohort: str
    raw: bytes  # the client's body as received (what is recorded)
    body: dict[str, Any]  # the same, parsed (each route's model is set when sent)
    headers: dict[str, str]  # the client's headers, filtered (upstream.request_headers without a key)
    server: TraceIds  # the request's proxy span: each mirrored call's span is its child
    enqueued: float = field(default_factory=time.perf_counter)


@dataclass
class MirrorCounts:
    """Per run and candidate: requests mirrored, not sampled, dropped (queue full, proxy stopping)."""

    mirrored: int = 0
    not_sampled: int = 0
    queue_full: int = 0
    shutdown: int = 0

    def as_dict(self) -> dict[str, int]:
        return dataclasses.asdict(self)


Caller = Callable[[RouteConfig, MirrorJob], Awaitable[None]]


class Shadow:
    def __init__(self, candidates: list[RouteConfig], queue_size: int, rate: float, call: Caller, seed: int | None = None):
        self.candidates = candidates
        self.rate = rate
        self._call = call
        self._rng = random.Random(seed)
        self.queues: dict[str, asyncio.Queue[MirrorJob]] = {r.name: asyncio.Queue(queue_size) for r in candidates}
        self.counts: dict[tuple[str, str], MirrorCounts] = {}
        self.in_flight: dict[str, int] = {r.name: 0 for r in candidates}
        self._workers: list[asyncio.Task] = []

    def count(self, run_id: str, route: str) -> MirrorCounts:
        c = self.counts.get((run_id, route))
        if c is None:
            c = self.counts[(run_id, route)] = MirrorCounts()
        return c

    def offer(self, job: MirrorJob) -> list[str]:
        """Enqueue the job for every candidate if this request is sampled; the routes it went to."""
        if not self.candidates:
            return []
        sampled = self.rate >= 1.0 or (self.rate > 0.0 and self._rng.random() < self.rate)
        sent = []
        for r in self.candidates:
            c = self.count(job.run_id, r.name)
            if not sampled:
                c.not_sampled += 1
                continue
            try:
                self.queues[r.name].put_nowait(job)
            except asyncio.QueueFull:
                c.queue_full += 1
                continue
            c.mirrored += 1
            sent.append(r.name)
        return sent

    def start(self) -> None:
        for r in self.candidates:
            for _ in range(r.max_concurrency):
                self._workers.append(asyncio.create_task(self._work(r), name=f"mirror {r.name}"))

    async def _work(self, route: RouteConfig) -> None:
        q = self.queues[route.name]
        while True:
            job = await q.get()
            self.in_flight[route.name] += 1
            try:
                await self._call(route, job)
            except asyncio.CancelledError:
                raise
            except Exception:  # a bug in one mirrored call must not stop the worker
                pass
            finally:
                self.in_flight[route.name] -= 1
                q.task_done()

    def depth(self) -> dict[str, int]:
        return {name: q.qsize() for name, q in self.queues.items()}

    async def stop(self, grace_s: float) -> None:
        """Drop the jobs still queued (counted as `shutdown`), give calls in flight `grace_s`, cancel the rest.
        The call function records a cancelled call itself."""
        for name, q in self.queues.items():
            while not q.empty():
                job = q.get_nowait()
                q.task_done()
                c = self.count(job.run_id, name)
                c.mirrored -= 1
                c.shutdown += 1
        deadline = time.monotonic() + grace_s
        while any(self.in_flight.values()) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        for w in self._workers:
            w.cancel()
        await asyncio.gather(*self._workers, return_exceptions=True)
