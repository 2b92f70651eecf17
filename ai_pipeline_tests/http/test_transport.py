"""The aiohttp transport under httpx: the same answers as httpx's own, and errors that still say whether
a request may have reached the server (the difference between retrying a create and billing twice)."""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import socket
from collections.abc import AsyncIterator, Awaitable, Callable

import aiohttp
import httpx
import pytest

from ai_pipeline.dev.emulator.server import run_emulator
from ai_pipeline.http_transport import pooled_async_transport, transport_error
from ai_pipeline.replicate.errors import classify_failure
from ai_pipeline.replicate.predictions import close_client, make_client

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@contextlib.asynccontextmanager
async def raw_server(handler: Handler) -> AsyncIterator[str]:
    """A TCP server answering with `handler`; yields its base URL."""
    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.close()
        await server.wait_closed()


async def _read_request(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":")[1])
    return head + (await reader.readexactly(length) if length else b"")


def _answer(status: str, body: bytes, headers: str = "") -> bytes:
    return f"HTTP/1.1 {status}\r\nContent-Length: {len(body)}\r\n{headers}\r\n".encode() + body


async def _send(url: str, method: str = "POST", **kwargs: object) -> httpx.Response:
    async with httpx.AsyncClient(transport=pooled_async_transport(4)) as client:
        response = await client.request(method, url, **kwargs)  # type: ignore[arg-type]
        await response.aread()
        return response


def test_requests_and_answers_pass_through_unchanged() -> None:
    seen: list[bytes] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen.append(await _read_request(reader))
        body = gzip.compress(b'{"ok": true}')
        writer.write(
            _answer("201 Created", body, "Content-Type: application/json\r\nContent-Encoding: gzip\r\n")
        )
        await writer.drain()
        writer.close()

    async def run() -> httpx.Response:
        async with raw_server(handler) as url:
            return await _send(f"{url}/v1/predictions?x=%2F", json={"input": {"prompt": "é"}})

    response = asyncio.run(run())
    assert response.status_code == 201
    assert response.json() == {"ok": True}  # httpx decodes the gzip body, as with its own transport
    request = seen[0]
    assert request.startswith(b"POST /v1/predictions?x=%2F HTTP/1.1\r\n")
    expected_body = httpx.Request("POST", "http://x", json={"input": {"prompt": "é"}}).content
    assert request.endswith(b"\r\n\r\n" + expected_body)
    assert b"content-type: application/json" in request.lower()


def test_connection_refused_is_a_connect_error_so_a_create_may_be_sent_again() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # closed again before the request: nothing listens
    with pytest.raises(httpx.ConnectError) as caught:
        asyncio.run(_send(f"http://127.0.0.1:{port}/v1/predictions", json={}))
    assert not classify_failure(caught.value).ambiguous


def test_a_connection_dropped_after_the_request_is_ambiguous() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        writer.close()  # the request arrived; no answer

    async def run() -> None:
        async with raw_server(handler) as url:
            await _send(f"{url}/v1/predictions", json={})

    with pytest.raises(httpx.RemoteProtocolError) as caught:
        asyncio.run(run())
    failure = classify_failure(caught.value)
    assert failure.transient and failure.ambiguous


def test_a_body_cut_short_is_a_protocol_error() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly a little")
        await writer.drain()
        writer.close()

    async def run() -> None:
        async with raw_server(handler) as url:
            await _send(f"{url}/file.png", method="GET")

    with pytest.raises(httpx.RemoteProtocolError):
        asyncio.run(run())


def test_no_answer_in_time_is_a_read_timeout_and_ambiguous() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        await asyncio.sleep(2)
        writer.close()

    async def run() -> None:
        async with raw_server(handler) as url:
            await _send(f"{url}/v1/predictions", json={}, timeout=httpx.Timeout(5.0, read=0.2))

    with pytest.raises(httpx.ReadTimeout) as caught:
        asyncio.run(run())
    assert classify_failure(caught.value).ambiguous


def test_the_official_client_through_the_transport_against_the_emulator() -> None:
    """A create answered, then a create whose connection the emulator drops: the client raises an
    error the runner treats as "may have been created" (it looks before creating again)."""

    async def run(base_url: str) -> tuple[str, BaseException]:
        client = make_client("r8_test", base_url, max_connections=4)
        try:
            created = await client.models.predictions.async_create(
                model="emulator/text", input={"prompt": "hello"}, wait=5
            )
            async with httpx.AsyncClient(base_url=base_url) as control:
                await control.post("/_emulator/config", json={"drop_rates": {"create": 1.0}})
            with pytest.raises(Exception) as caught:
                await client.models.predictions.async_create(model="emulator/text", input={"prompt": "hi"})
            return created.status, caught.value
        finally:
            await close_client(client)

    with run_emulator(predict_seconds=0.05, rate_limits_enabled=False, seed=3) as emulator:
        status, error = asyncio.run(run(emulator.base_url))
    assert status == "succeeded"
    failure = classify_failure(error)
    assert failure.transient and failure.ambiguous, error


@pytest.mark.parametrize(
    ("raised", "expected", "ambiguous"),
    [
        (aiohttp.ConnectionTimeoutError("no connection in time"), httpx.ConnectTimeout, False),
        (aiohttp.SocketTimeoutError("no answer in time"), httpx.ReadTimeout, True),
        (TimeoutError(), httpx.ReadTimeout, True),
        (aiohttp.ServerDisconnectedError(), httpx.RemoteProtocolError, True),
        (aiohttp.ClientPayloadError("cut short"), httpx.RemoteProtocolError, True),
        (aiohttp.ClientOSError(104, "Connection reset by peer"), httpx.ReadError, True),
        (ConnectionResetError(104, "Connection reset by peer"), httpx.ReadError, True),
    ],
)
def test_each_aiohttp_error_keeps_whether_the_request_may_have_arrived(
    raised: BaseException, expected: type[httpx.TransportError], ambiguous: bool
) -> None:
    request = httpx.Request("POST", "http://127.0.0.1/v1/predictions")
    error = transport_error(raised, request)
    assert type(error) is expected and error.request is request
    assert classify_failure(error).ambiguous is ambiguous
