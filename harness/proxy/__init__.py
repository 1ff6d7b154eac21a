"""The shadow proxy stage: serve the primary route to real clients, mirror a sample to the candidates,
record both like a corpus run (docs/proxy.md).

    options.py   ProxyOptions, cohort rules (header, regex on the system prompt or `user`, metadata key)
    server.py    the aiohttp endpoint: the primary's bytes to the client, the job to the shadow
    upstream.py  one keep-alive pool per route, headers passed each way, the mirrored call
    h1.py        the upstream client: HTTP/1.1 connections as bare asyncio protocols (httptools)
    shadow.py    sampling, one bounded queue and max_concurrency workers per candidate, drop counts
    capture.py   pure: kept chunks -> CallResult (SSE or JSON), digests for capture_content: false
    recorder.py  run rows (per session or window), prompt and response rows, spans; batched writes
    run.py       a session: serve: routes, signals, graceful stop
"""
