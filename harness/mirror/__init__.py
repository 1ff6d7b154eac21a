"""The mirror stage: a corpus through every route at once, each call traced and stored.

    runner.py         mirror groups, bounded concurrency, resume, serve: routes
    openai_stream.py  one streamed chat completion: timing, retries, tool calls (the one OpenAI client)
    http.py           aiohttp client per route (chosen by measured CPU per request)
    attributes.py     the call span's GenAI / OpenInference attributes
"""
