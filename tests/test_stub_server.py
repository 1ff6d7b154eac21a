"""The stub server speaks enough OpenAI for tests and benchmarks: models, health, plain and streamed chat."""

import json

import httpx


def test_endpoints(stub_server):
    s = stub_server(model="stub-x", answers={"refund": "Refunds take 5 days."})
    assert httpx.get(s.url + "/health").status_code == 200
    assert httpx.get(s.base_url + "/models").json()["data"][0]["id"] == "stub-x"

    body = {"model": "m", "messages": [{"role": "user", "content": "refund please"}]}
    r = httpx.post(s.base_url + "/chat/completions", json=body).json()
    assert r["choices"][0]["message"]["content"] == "Refunds take 5 days."
    assert r["usage"] == {"prompt_tokens": 2, "completion_tokens": 4, "total_tokens": 6}

    with httpx.stream("POST", s.base_url + "/chat/completions",
                      json={**body, "stream": True, "stream_options": {"include_usage": True}, "max_tokens": 2}) as resp:
        events = [line[6:] for line in resp.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"]) == "Refunds take"
    assert [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]][-1] == "length"
    assert chunks[-1]["usage"] == {"prompt_tokens": 2, "completion_tokens": 2, "total_tokens": 4}


def test_bad_request(stub_server):
    s = stub_server()
    r = httpx.post(s.base_url + "/chat/completions", content=b"not json")
    assert r.status_code == 400 and "messages" in r.json()["error"]["message"]


def test_content_as_a_list_of_parts(stub_server):
    """`vllm bench serve` and the openai client send content as parts; the stub reads their text
    (images skipped), streamed or not, and can keep the exact bytes it sent (record_bodies)."""
    s = stub_server(record_bodies=10)
    parts = [{"type": "text", "text": "refund please"},
             {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
             {"type": "text", "text": "today"}]
    body = {"model": "m", "messages": [{"role": "system", "content": [{"type": "text", "text": "be brief"}]},
                                       {"role": "user", "content": parts}]}
    r = httpx.post(s.base_url + "/chat/completions", json=body)
    assert r.status_code == 200
    doc = r.json()
    assert doc["choices"][0]["message"]["content"] == "Echo: refund please today"
    assert doc["usage"]["prompt_tokens"] == 5  # "be brief" + "refund please today"
    with httpx.stream("POST", s.base_url + "/chat/completions", json={**body, "stream": True}) as resp:
        streamed = resp.read().decode()
    kept = httpx.get(s.url + "/stub/bodies").json()
    assert kept[doc["id"]] == r.text
    assert streamed in kept.values()


def test_arrivals_one_wall_clock_time_per_chat_request(stub_server):
    """bench/peers.py takes a client's load window from these."""
    import time

    s = stub_server()
    t0 = time.time()
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    for _ in range(3):
        httpx.post(s.base_url + "/chat/completions", json=body)
    httpx.get(s.base_url + "/models")  # not a chat request
    times = httpx.get(s.url + "/stub/arrivals").json()
    assert len(times) == 3 and t0 <= times[0] <= times[1] <= times[2] <= time.time()
    assert httpx.get(s.url + "/stub/arrivals", params={"since": times[1]}).json() == times[1:]


def test_timings_are_the_stubs_own_ttft_and_e2e_per_streamed_answer(stub_server):
    """bench/peers.py holds each client's TTFT and E2E against these: the server side of the same calls."""
    import time

    s = stub_server(ttft_s=0.05, tokens_per_s=100, answer="a b c d e")
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": True}
    t0, client_e2e = time.time(), []
    with httpx.Client() as client:
        for _ in range(2):
            t = time.perf_counter()
            r = client.post(s.base_url + "/chat/completions", json=body)
            client_e2e.append(time.perf_counter() - t)
            assert r.status_code == 200 and r.text.endswith("data: [DONE]\n\n")
        client.post(s.base_url + "/chat/completions", json={**body, "stream": False})  # not streamed: not timed
    timings = httpx.get(s.url + "/stub/timings").json()
    assert len(timings) == 2
    for row, seen in zip(timings, client_e2e):
        assert t0 <= row["arrived"] <= time.time()
        assert 0.05 <= row["ttft_s"] < 0.5  # the configured 50 ms to the first token (a busy machine adds)
        assert row["ttft_s"] + 0.04 <= row["e2e_s"] <= seen  # four more tokens at 10 ms each; within the client's time
    assert httpx.get(s.url + "/stub/timings", params={"since": timings[1]["arrived"]}).json() == timings[1:]
