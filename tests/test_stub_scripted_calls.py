"""The stub answers a prompt carrying [[stub:KEY]] with KEY's scripted tool calls (parallel ones too)."""

import asyncio
import json

import httpx

from harness.mirror.http import RouteClient
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
        async with RouteClient(s.base_url) as client:
            body = {"model": "m", "stream": True, "messages": [{"role": "user", "content": "[[stub:two]]"}]}
            return await stream_chat(client, body, {}, 10.0, RetryPolicy(max_retries=0))

    result = asyncio.run(go())
    assert result.error_type is None, result.error_message
    assert [c["function"]["name"] for c in result.tool_calls] == ["get_weather", "get_time"]


def test_per_step_script_follows_the_tool_turns_already_taken(stub_server):
    """{"steps": [...]}: the answer depends on how many assistant tool-call turns the request holds."""
    s = stub_server(scripted_tool_calls={
        "agent": {"steps": [[{"name": "lookup", "arguments": {"q": "a"}}], [{"name": "fetch", "arguments": {"id": 1}}], "done: 42"]},
        "loop": {"steps": [[{"name": "lookup", "arguments": {}}]]},
    })
    user = {"role": "user", "content": "go [[stub:agent]]"}

    def turn(k):  # the messages after k tool-call turns, each answered by a tool message
        msgs = [user]
        for i in range(k):
            msgs += [{"role": "assistant", "content": None, "tool_calls": [{"id": f"c{i}", "type": "function", "function": {"name": "x", "arguments": "{}"}}]},
                     {"role": "tool", "tool_call_id": f"c{i}", "content": "result"}]
        return msgs

    def answer(msgs):
        return httpx.post(s.base_url + "/chat/completions", json={"model": "m", "messages": msgs}).json()["choices"][0]

    assert answer(turn(0))["message"]["tool_calls"][0]["function"]["name"] == "lookup"
    assert json.loads(answer(turn(1))["message"]["tool_calls"][0]["function"]["arguments"]) == {"id": 1}
    final = answer(turn(2))
    assert final["message"]["content"] == "done: 42" and final["finish_reason"] == "stop"
    assert answer(turn(5))["message"]["content"] == "done: 42"  # past the end the last step repeats
    user["content"] = "again [[stub:loop]]"
    assert all(answer(turn(k))["message"]["tool_calls"][0]["function"]["name"] == "lookup" for k in (0, 1, 7))
