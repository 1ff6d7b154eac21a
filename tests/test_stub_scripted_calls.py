"""The stub answers a prompt carrying [[stub:KEY]] with KEY's scripted tool calls (parallel ones too)."""

import asyncio
import json

import httpx

from harness.mirror.openai_stream import RetryPolicy, stream_chat

SCRIPT = {
    "two": [{"name": "get_weather", "arguments": {"city": "Paris"}}, {"name": "get_time", "arguments": '{"tz": "Europe/Paris"}'}],
    "none": [],
}


def test_scripted_calls_plain_and_streamed(stub_server):
    s = stub_server(scripted_tool_calls=SCRIPT)
    body = {"model": "m", "messages": [{"role": "user", "content": "weather and time please [[stub:two]]"}]}
    msg = httpx.post(s.base_url + "/chat/completions", json=body).json()["choices"][0]["message"]
    assert [(c["function"]["name"], json.loads(c["function"]["arguments"])) for c in msg["tool_calls"]] == [
        ("get_weather", {"city": "Paris"}), ("get_time", {"tz": "Europe/Paris"})]

    with httpx.stream("POST", s.base_url + "/chat/completions", json={**body, "stream": True}) as resp:
        chunks = [json.loads(line[6:]) for line in resp.iter_lines() if line.startswith("data: ") and line != "data: [DONE]"]
    calls: dict[int, dict] = {}
    for c in chunks:
        for tc in c["choices"][0]["delta"].get("tool_calls") or []:
            acc = calls.setdefault(tc["index"], {"name": "", "arguments": ""})
            acc["name"] += tc["function"].get("name", "")
            acc["arguments"] += tc["function"].get("arguments", "")
    assert [(calls[k]["name"], json.loads(calls[k]["arguments"])) for k in sorted(calls)] == [
        ("get_weather", {"city": "Paris"}), ("get_time", {"tz": "Europe/Paris"})]
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"


def test_empty_script_and_no_marker_answer_in_text(stub_server):
    s = stub_server(scripted_tool_calls=SCRIPT, answer="plain text")
    for content in ("hello [[stub:none]]", "hello, no marker", "unknown [[stub:nope]]"):
        body = {"model": "m", "messages": [{"role": "user", "content": content}]}
        msg = httpx.post(s.base_url + "/chat/completions", json=body).json()["choices"][0]["message"]
        assert msg["content"] == "plain text" and "tool_calls" not in msg


def test_runner_stream_client_assembles_parallel_calls(stub_server):
    s = stub_server(scripted_tool_calls=SCRIPT)

    async def go():
        async with httpx.AsyncClient(base_url=s.base_url + "/") as client:
            body = {"model": "m", "stream": True, "messages": [{"role": "user", "content": "[[stub:two]]"}]}
            return await stream_chat(client, body, {}, 10.0, RetryPolicy(max_retries=0))

    result = asyncio.run(go())
    assert result.error_type is None, result.error_message
    assert [c["function"]["name"] for c in result.tool_calls] == ["get_weather", "get_time"]
