"""The transport goes through the proxies the environment names, as httpx does with `trust_env`."""

from __future__ import annotations

import asyncio
import base64

import httpx
import pytest

from ai_pipeline.http_transport import pooled_async_transport
from ai_pipeline.storage.fetch import FetchPolicy, fetch_output
from ai_pipeline_tests.http.raw_server import answer, raw_server, read_request, unused_port

PROXY_VARIABLES = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY")


@pytest.fixture(autouse=True)
def no_proxy_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    """Start each test from an environment without proxy variables, in either case."""
    for name in PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)


class Recorder:
    """A server that records each request head and gives every one the same answer: a forward proxy
    that answers for the origin, or the origin itself."""

    def __init__(self, reply: bytes) -> None:
        self.reply = reply
        self.seen: list[bytes] = []

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.seen.append(await read_request(reader))
        writer.write(self.reply)
        await writer.drain()
        writer.close()


async def _post(url: str, *, trust_env: bool = True, extensions: dict[str, object] | None = None) -> int:
    transport = pooled_async_transport(4, trust_env=trust_env)
    try:
        request = httpx.Request("POST", url, json={}, extensions=extensions or {})
        response = await transport.handle_async_request(request)
        await response.aread()
        return response.status_code
    finally:
        await transport.aclose()


def test_http_requests_go_through_the_proxy_named_by_http_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    proxy = Recorder(answer("201 Created", b"{}"))

    async def run() -> int:
        async with raw_server(proxy.handle) as proxy_url:
            monkeypatch.setenv("HTTP_PROXY", proxy_url)
            # A name nothing resolves: only the proxy can answer it.
            return await _post("http://api.replicate.invalid/v1/predictions?x=%2F")

    assert asyncio.run(run()) == 201
    assert proxy.seen[0].startswith(b"POST http://api.replicate.invalid/v1/predictions?x=%2F HTTP/1.1\r\n")


def test_credentials_in_the_proxy_url_go_to_the_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    proxy = Recorder(answer("200 OK", b""))

    async def run() -> None:
        async with raw_server(proxy.handle) as proxy_url:
            monkeypatch.setenv("http_proxy", proxy_url.replace("http://", "http://user:s3cr3t@"))
            await _post("http://api.replicate.invalid/v1/predictions")

    asyncio.run(run())
    expected = base64.b64encode(b"user:s3cr3t")
    assert b"\r\nproxy-authorization: basic " + expected.lower() in proxy.seen[0].lower()


def test_https_requests_ask_the_proxy_for_a_tunnel(monkeypatch: pytest.MonkeyPatch) -> None:
    proxy = Recorder(answer("403 Forbidden", b""))

    async def run() -> None:
        async with raw_server(proxy.handle) as proxy_url:
            monkeypatch.setenv("HTTPS_PROXY", proxy_url)
            await _post("https://api.replicate.invalid/v1/predictions")

    with pytest.raises(httpx.ProxyError):
        asyncio.run(run())
    assert proxy.seen[0].startswith(b"CONNECT api.replicate.invalid:443 HTTP/1.1\r\n")


def test_hosts_in_no_proxy_are_reached_directly(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{unused_port()}")  # would refuse the connection
    monkeypatch.setenv("NO_PROXY", "localhost,127.0.0.1")
    server = Recorder(answer("201 Created", b"{}"))

    async def run() -> int:
        async with raw_server(server.handle) as url:
            return await _post(f"{url}/v1/predictions")

    assert asyncio.run(run()) == 201
    assert server.seen[0].startswith(b"POST /v1/predictions HTTP/1.1\r\n")


def test_a_request_pinned_to_an_address_is_matched_by_its_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{unused_port()}")
    monkeypatch.setenv("NO_PROXY", "delivery.test")
    server = Recorder(answer("200 OK", b""))

    async def run() -> int:
        async with raw_server(server.handle) as url:
            return await _post(f"{url}/file.png", extensions={"sni_hostname": "delivery.test"})

    assert asyncio.run(run()) == 200


def test_without_trust_env_the_proxy_variables_are_ignored(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{unused_port()}")
    server = Recorder(answer("201 Created", b"{}"))

    async def run() -> int:
        async with raw_server(server.handle) as url:
            return await _post(f"{url}/v1/predictions", trust_env=False)

    assert asyncio.run(run()) == 201


def test_a_socks_proxy_is_refused_when_the_transport_is_made(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ALL_PROXY", "socks5://127.0.0.1:1080")
    with pytest.raises(ValueError, match="not supported"):
        pooled_async_transport(4)


def test_an_output_download_through_the_proxy_still_goes_to_the_checked_address(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    png = b"\x89PNG\r\n\x1a\n" + bytes(64)
    proxy = Recorder(answer("200 OK", png, "Content-Type: image/png\r\n"))

    async def resolve(host: str, port: int) -> list[str]:
        return ["93.184.215.14"]

    async def run() -> bytes:
        async with raw_server(proxy.handle) as proxy_url:
            monkeypatch.setenv("HTTP_PROXY", proxy_url)
            policy = FetchPolicy(("replicate.delivery",), max_bytes=10_000, timeout_seconds=5.0)
            async with pooled_async_transport(4) as http:
                fetched = await fetch_output(
                    http, "http://replicate.delivery/pbxt/a.png", policy, resolve=resolve
                )
            return fetched.content

    assert asyncio.run(run()) == png
    head = proxy.seen[0].lower()
    assert head.startswith(b"get http://93.184.215.14/pbxt/a.png http/1.1\r\n")
    assert b"\r\nhost: replicate.delivery\r\n" in head
