"""The mirror's HTTP client reads proxy and .netrc settings from the environment once, when it is
made (harness/mirror/http.py), and still honours them: a request goes through HTTP_PROXY unless
NO_PROXY names the host, and a route without an API key gets .netrc's credentials."""

import asyncio

from aiohttp import web

from harness.mirror.http import RouteClient
from harness.mirror.openai_stream import RetryPolicy, stream_chat

BODY = {"model": "m", "stream": True, "messages": [{"role": "user", "content": "hi"}]}


async def _forward_proxy(seen: list[str]):
    """A plain HTTP forward proxy: records the absolute URL asked for and relays to it."""
    import aiohttp

    session = aiohttp.ClientSession(trust_env=False)

    async def relay(request: web.Request) -> web.StreamResponse:
        seen.append(str(request.url))
        async with session.request(request.method, str(request.url), data=await request.read(),
                                   headers={k: v for k, v in request.headers.items() if k.lower() not in ("host", "proxy-authorization")}) as up:
            resp = web.StreamResponse(status=up.status, headers={"Content-Type": up.headers.get("Content-Type", "")})
            await resp.prepare(request)
            async for chunk in up.content.iter_any():
                await resp.write(chunk)
            await resp.write_eof()
            return resp

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", relay)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    return runner, session, f"http://127.0.0.1:{port}"


def test_requests_go_through_http_proxy_unless_no_proxy_names_the_host(stub_server, monkeypatch):
    s = stub_server(answer="via proxy")
    seen: list[str] = []

    async def go(no_proxy: str):
        runner, session, proxy_url = await _forward_proxy(seen)
        monkeypatch.setenv("HTTP_PROXY", proxy_url)
        monkeypatch.setenv("NO_PROXY", no_proxy)
        try:
            async with RouteClient(s.base_url) as client:
                results = [await stream_chat(client, BODY, {}, 10.0, RetryPolicy(max_retries=0)) for _ in range(3)]
        finally:
            await session.close()
            await runner.cleanup()
        return results

    results = asyncio.run(go(no_proxy="example.invalid"))
    assert [r.text for r in results] == ["via proxy"] * 3
    assert seen == [s.base_url + "/chat/completions"] * 3  # absolute-form: the proxy was asked for the stub's URL

    seen.clear()
    results = asyncio.run(go(no_proxy="127.0.0.1"))
    assert [r.text for r in results] == ["via proxy"] * 3
    assert seen == []  # NO_PROXY: straight to the stub


def test_netrc_credentials_sent_only_without_an_api_key(stub_server, tmp_path, monkeypatch):
    import httpx

    s = stub_server()
    netrc = tmp_path / "netrc"
    netrc.write_text("machine 127.0.0.1 login alice password s3cret\n")
    netrc.chmod(0o600)
    monkeypatch.setenv("NETRC", str(netrc))
    monkeypatch.delenv("HTTP_PROXY", raising=False)

    async def go(headers):
        async with RouteClient(s.base_url, headers) as client:
            return await stream_chat(client, BODY, {}, 10.0, RetryPolicy(max_retries=0))

    assert asyncio.run(go({})).ok
    assert asyncio.run(go({"Authorization": "Bearer k"})).ok
    sent = [h.get("authorization") for h in httpx.get(s.url + "/stub/headers").json()]
    assert sent[-2:] == ["Basic YWxpY2U6czNjcmV0", "Bearer k"]  # base64("alice:s3cret")
