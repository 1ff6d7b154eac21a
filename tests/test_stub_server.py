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
