"""The aiohttp transport under httpx: the same answers as httpx's own, and errors that still say whether
a request may have reached the server (the difference between retrying a create and billing twice)."""

from __future__ import annotations

import asyncio
import gzip

import aiohttp
import httpx
import multidict
import pytest
import yarl

from ai_pipeline.dev.emulator.server import run_emulator
from ai_pipeline.http_transport import pooled_async_transport, transport_error
from ai_pipeline.replicate.errors import classify_failure
from ai_pipeline.replicate.predictions import close_client, make_client
from ai_pipeline_tests.http.raw_server import answer, raw_server, read_request, reset, unused_port


async def _send(url: str, method: str = "POST", **kwargs: object) -> httpx.Response:
    async with httpx.AsyncClient(transport=pooled_async_transport(4)) as client:
        response = await client.request(method, url, **kwargs)  # type: ignore[arg-type]
        await response.aread()
        return response


def test_requests_and_answers_pass_through_unchanged() -> None:
    seen: list[bytes] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen.append(await read_request(reader))
        body = gzip.compress(b'{"ok": true}')
        writer.write(
            answer("201 Created", body, "Content-Type: application/json\r\nContent-Encoding: gzip\r\n")
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
    port = unused_port()
    with pytest.raises(httpx.ConnectError) as caught:
        asyncio.run(_send(f"http://127.0.0.1:{port}/v1/predictions", json={}))
    assert not classify_failure(caught.value).ambiguous


def test_a_connection_dropped_after_the_request_is_ambiguous() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
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
        await read_request(reader)
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
        await read_request(reader)
        await asyncio.sleep(2)
        writer.close()

    async def run() -> None:
        async with raw_server(handler) as url:
            await _send(f"{url}/v1/predictions", json={}, timeout=httpx.Timeout(5.0, read=0.2))

    with pytest.raises(httpx.ReadTimeout) as caught:
        asyncio.run(run())
    assert classify_failure(caught.value).ambiguous


def test_a_connection_reset_after_the_request_is_ambiguous() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        reset(writer)  # the request arrived; the answer is a TCP reset

    async def run() -> None:
        async with raw_server(handler) as url:
            await _send(f"{url}/v1/predictions", json={})

    with pytest.raises(httpx.ReadError) as caught:
        asyncio.run(run())
    failure = classify_failure(caught.value)
    assert failure.transient and failure.ambiguous


def test_a_malformed_answer_is_a_protocol_error_and_ambiguous() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"NOT HTTP AT ALL\r\n\r\n")
        await writer.drain()
        writer.close()

    async def run() -> None:
        async with raw_server(handler) as url:
            await _send(f"{url}/v1/predictions", json={})

    with pytest.raises(httpx.RemoteProtocolError) as caught:
        asyncio.run(run())
    assert classify_failure(caught.value).ambiguous


def test_waiting_too_long_for_a_pooled_connection_is_never_sent() -> None:
    release = asyncio.Event()

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        await release.wait()  # holds the pool's only connection
        writer.write(answer("200 OK", b""))
        await writer.drain()
        writer.close()

    async def run() -> None:
        async with (
            raw_server(handler) as url,
            httpx.AsyncClient(transport=pooled_async_transport(1)) as client,
        ):
            first = asyncio.create_task(client.get(f"{url}/slow"))
            await asyncio.sleep(0.1)
            try:
                await client.post(f"{url}/v1/predictions", json={}, timeout=httpx.Timeout(5.0, pool=0.2))
            finally:
                release.set()
                await first

    with pytest.raises(httpx.ConnectTimeout) as caught:
        asyncio.run(run())
    failure = classify_failure(caught.value)
    assert failure.transient and not failure.ambiguous


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


_URL = yarl.URL("http://127.0.0.1/v1/predictions")
_REQUEST_INFO = aiohttp.RequestInfo(_URL, "POST", multidict.CIMultiDictProxy(multidict.CIMultiDict()), _URL)
_CONNECTION_KEY = aiohttp.client_reqrep.ConnectionKey("127.0.0.1", 80, False, True, None, None, None)


@pytest.mark.parametrize(
    ("raised", "expected", "ambiguous"),
    [
        (aiohttp.ConnectionTimeoutError("no connection in time"), httpx.ConnectTimeout, False),
        (
            aiohttp.ClientConnectorError(_CONNECTION_KEY, ConnectionRefusedError(111, "refused")),
            httpx.ConnectError,
            False,
        ),
        (aiohttp.SocketTimeoutError("no answer in time"), httpx.ReadTimeout, True),
        (TimeoutError(), httpx.ReadTimeout, True),
        (aiohttp.ServerDisconnectedError(), httpx.RemoteProtocolError, True),
        (aiohttp.ClientPayloadError("cut short"), httpx.RemoteProtocolError, True),
        (aiohttp.ClientOSError(104, "Connection reset by peer"), httpx.ReadError, True),
        (ConnectionResetError(104, "Connection reset by peer"), httpx.ReadError, True),
        (aiohttp.ClientConnectionResetError("reset while sending"), httpx.ReadError, True),
        (
            aiohttp.ClientResponseError(_REQUEST_INFO, (), message="bad status line"),
            httpx.RemoteProtocolError,
            True,
        ),
        (aiohttp.ClientHttpProxyError(_REQUEST_INFO, (), status=403), httpx.ProxyError, True),
    ],
)
def test_each_aiohttp_error_keeps_whether_the_request_may_have_arrived(
    raised: BaseException, expected: type[httpx.TransportError], ambiguous: bool
) -> None:
    request = httpx.Request("POST", "http://127.0.0.1/v1/predictions")
    error = transport_error(raised, request)
    assert type(error) is expected and error.request is request
    assert classify_failure(error).ambiguous is ambiguous
