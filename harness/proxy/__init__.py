"""The shadow proxy stage: serve the primary route to real clients, mirror a sample to the candidates,
record both like a corpus run (docs/proxy.md).

    Two processes (docs/proxy.md, "Two processes"): the serving process answers and mirrors, the
    recording process (the command's own, yielding the CPU to it) owns the store.

    options.py   ProxyOptions, cohort rules (header, regex on the system prompt or `user`, metadata key)
    server.py    serving: the aiohttp endpoint, the primary's bytes to the client, the job to the shadow
    upstream.py  serving: one keep-alive pool per route, headers passed each way, the mirrored call
    h1.py        serving: the upstream client, HTTP/1.1 connections as bare asyncio protocols (httptools)
    shadow.py    serving: sampling, one bounded queue and max_concurrency workers per candidate, drop counts
    sink.py      serving: run windows, live counts, the non-blocking pipe to the recording process
    records.py   pure: what crosses the pipe (finished calls with their span ids, runs, counts) and its framing
    capture.py   pure: kept chunks -> CallResult (SSE or JSON), digests for capture_content: false
    priority.py  recording: its CPU priority (SCHED_IDLE while it keeps up, nice 10 SCHED_BATCH when behind)
    recorder.py  recording: run rows (per session or window), prompt and response rows, spans
    run.py       recording: a session (serve: routes, the serving process, signals, flushes, graceful stop)
"""
