"""Downloading outputs from delivery hosts, against a real local HTTP server."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import Sequence

import httpx
import pytest

from ai_pipeline.http_transport import pooled_async_transport
from ai_pipeline.storage.errors import OutputFetchError, OutputGone, OutputRefused, OutputUnavailable
from ai_pipeline.storage.fetch import USER_AGENT, FetchedFile, FetchPolicy, Resolver, fetch_output
from ai_pipeline_tests.storage.file_server import PNG_BODY

PUBLIC_ADDRESS = "93.184.215.14"


def fetch(
    url: str,
    allowed_hosts: Sequence[str],
    *,
    max_bytes: int = 1_000_000,
    timeout_seconds: float = 5.0,
    resolve: Resolver | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
) -> FetchedFile:
    """Run `fetch_output` to completion on a fresh transport of the kind the runner uses."""
    policy = FetchPolicy(tuple(allowed_hosts), max_bytes=max_bytes, timeout_seconds=timeout_seconds)

    async def run() -> FetchedFile:
        async with transport or pooled_async_transport(4) as http:
            return await fetch_output(http, url, policy, resolve=resolve)

    return asyncio.run(run())


def resolving(table: dict[str, list[str]]) -> Resolver:
    """A resolver answering from `table`, like a DNS server we control."""

    async def resolve(host: str, port: int) -> list[str]:
        if host not in table:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return table[host]

    return resolve


@pytest.fixture
def local(file_server_port: int) -> str:
    """Base URL of the file server, by IP literal."""
    return f"http://127.0.0.1:{file_server_port}"


@pytest.fixture
def local_entry(file_server_port: int) -> str:
    """The allowlist entry an operator writes for the local server."""
    return f"127.0.0.1:{file_server_port}"


# --- what may be fetched -------------------------------------------------------------------------


def test_fetches_a_file_from_an_allowed_ip_literal_host(local: str, local_entry: str) -> None:
    fetched = fetch(f"{local}/file.png", [local_entry])
    assert fetched == FetchedFile(content=PNG_BODY, content_type="image/png", source_url=f"{local}/file.png")


def test_localhost_entry_lets_the_pipeline_reach_a_local_server(file_server_port: int) -> None:
    url = f"http://localhost:{file_server_port}/file.png"
    assert fetch(url, [f"localhost:{file_server_port}"]).content == PNG_BODY


def test_host_not_on_the_allowlist_is_refused(local: str) -> None:
    with pytest.raises(OutputRefused) as caught:
        fetch(f"{local}/file.png", ["replicate.delivery", "*.replicate.delivery"])
    assert caught.value.transient is False


def test_port_specific_entry_does_not_allow_other_ports(local: str) -> None:
    with pytest.raises(OutputRefused):
        fetch(f"{local}/file.png", ["127.0.0.1:1"])


@pytest.mark.parametrize("url", ["file:///etc/passwd", "ftp://127.0.0.1/x", "gopher://127.0.0.1/x"])
def test_non_http_schemes_are_refused(url: str) -> None:
    with pytest.raises(OutputRefused):
        fetch(url, ["127.0.0.1"])


def test_credentials_in_the_url_are_refused(file_server_port: int) -> None:
    with pytest.raises(OutputRefused):
        fetch(f"http://user:pw@127.0.0.1:{file_server_port}/file.png", ["127.0.0.1"])


# --- where it may be fetched from ----------------------------------------------------------------


@pytest.mark.parametrize("address", ["127.0.0.1", "10.0.0.7", "192.168.1.20", "100.64.0.1", "::1", "fc00::1"])
def test_allowed_name_resolving_to_a_non_public_address_is_refused(address: str) -> None:
    resolve = resolving({"replicate.delivery": [address]})
    with pytest.raises(OutputRefused, match="private, loopback or reserved"):
        fetch("https://replicate.delivery/pbxt/a.png", ["replicate.delivery"], resolve=resolve)


def test_one_non_public_address_among_several_is_enough_to_refuse() -> None:
    resolve = resolving({"replicate.delivery": [PUBLIC_ADDRESS, "10.1.2.3"]})
    with pytest.raises(OutputRefused):
        fetch("https://replicate.delivery/pbxt/a.png", ["replicate.delivery"], resolve=resolve)


@pytest.mark.parametrize("address", ["169.254.169.254", "fe80::1", "fd00:ec2::254", "::ffff:169.254.169.254"])
def test_metadata_and_link_local_addresses_are_refused_even_when_listed_literally(address: str) -> None:
    host = f"[{address}]" if ":" in address else address
    with pytest.raises(OutputRefused):
        fetch(f"http://{host}/latest/meta-data/", [host])


def test_localhost_entry_resolving_to_link_local_is_refused() -> None:
    resolve = resolving({"localhost": ["169.254.169.254"]})
    with pytest.raises(OutputRefused, match="link-local"):
        fetch("http://localhost:8787/x.png", ["localhost"], resolve=resolve)


@pytest.mark.parametrize("address", ["224.0.0.1", "0.0.0.0"])
def test_multicast_and_unspecified_addresses_are_refused(address: str) -> None:
    with pytest.raises(OutputRefused):
        fetch(f"http://{address}/x.png", [address])


def test_connection_goes_to_the_checked_address_under_the_original_name() -> None:
    seen: list[httpx.Request] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, content=b"ok", headers={"content-type": "text/plain"})

    resolve = resolving({"replicate.delivery": [PUBLIC_ADDRESS]})
    fetch(
        "https://replicate.delivery/pbxt/a.png",
        ["replicate.delivery"],
        resolve=resolve,
        transport=httpx.MockTransport(answer),
    )
    assert seen[0].url.host == PUBLIC_ADDRESS
    assert seen[0].headers["host"] == "replicate.delivery"
    assert seen[0].extensions["sni_hostname"] == "replicate.delivery"


def test_no_credentials_or_cookies_are_sent(local: str, local_entry: str) -> None:
    """The Replicate token must never reach a delivery host."""
    fetched = fetch(f"{local}/headers", [local_entry])
    sent = {name.lower(): value for name, value in json.loads(fetched.content).items()}
    assert set(sent) <= {"host", "accept", "user-agent", "content-length"}, sent
    assert sent["user-agent"] == USER_AGENT


def test_dns_failure_is_transient() -> None:
    with pytest.raises(OutputUnavailable):
        fetch("https://nowhere.replicate.delivery/a.png", ["*.replicate.delivery"], resolve=resolving({}))


# --- how the host answers ------------------------------------------------------------------------


@pytest.mark.parametrize("status", [404, 410])
def test_deleted_file_is_output_gone(local: str, local_entry: str, status: int) -> None:
    with pytest.raises(OutputGone) as caught:
        fetch(f"{local}/status/{status}", [local_entry])
    assert (caught.value.transient, caught.value.status_code) == (False, status)


@pytest.mark.parametrize("status", [500, 502, 503, 429])
def test_server_errors_and_throttling_are_transient(local: str, local_entry: str, status: int) -> None:
    with pytest.raises(OutputUnavailable) as caught:
        fetch(f"{local}/status/{status}", [local_entry])
    assert caught.value.transient is True


def test_other_client_errors_are_permanent(local: str, local_entry: str) -> None:
    with pytest.raises(OutputFetchError) as caught:
        fetch(f"{local}/status/400", [local_entry])
    assert caught.value.transient is False


def test_slow_answer_times_out_as_transient(local: str, local_entry: str) -> None:
    with pytest.raises(OutputUnavailable, match=r"longer than|timed out"):
        fetch(f"{local}/slow/3", [local_entry], timeout_seconds=0.3)


def test_trickling_body_is_cut_off_by_the_overall_deadline(local: str, local_entry: str) -> None:
    # One byte every 50 ms never trips a per-read timeout; only the overall deadline stops it.
    with pytest.raises(OutputUnavailable):
        fetch(f"{local}/drip/3", [local_entry], timeout_seconds=0.5)


def test_connection_refused_is_transient() -> None:
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
    with pytest.raises(OutputUnavailable):
        fetch(f"http://127.0.0.1:{port}/file.png", [f"127.0.0.1:{port}"])


def test_declared_size_over_the_cap_is_refused(local: str, local_entry: str) -> None:
    with pytest.raises(OutputRefused, match="larger than"):
        fetch(f"{local}/bytes/5000", [local_entry], max_bytes=4096)


def test_undeclared_size_is_cut_off_while_streaming(local: str, local_entry: str) -> None:
    with pytest.raises(OutputRefused, match="larger than"):
        fetch(f"{local}/bytes-unsized/200000", [local_entry], max_bytes=4096)


def test_body_exactly_at_the_cap_is_accepted(local: str, local_entry: str) -> None:
    assert len(fetch(f"{local}/bytes-unsized/4096", [local_entry], max_bytes=4096).content) == 4096


def test_error_messages_never_carry_the_query_string(local: str, local_entry: str) -> None:
    with pytest.raises(OutputGone) as caught:
        fetch(f"{local}/status/404?X-Amz-Signature=s3cr3t", [local_entry])
    assert "s3cr3t" not in str(caught.value)
    assert "s3cr3t" not in caught.value.url
    assert "/status/404" in str(caught.value)


# --- redirects -----------------------------------------------------------------------------------


def test_redirects_are_followed_up_to_three(local: str, local_entry: str) -> None:
    fetched = fetch(f"{local}/hops/3", [local_entry])
    assert (fetched.content, fetched.source_url) == (PNG_BODY, f"{local}/hops/3")


def test_a_fourth_redirect_is_refused(local: str, local_entry: str) -> None:
    with pytest.raises(OutputRefused, match="redirects"):
        fetch(f"{local}/hops/4", [local_entry])


def test_redirect_to_a_host_off_the_allowlist_is_refused(local: str, local_entry: str) -> None:
    with pytest.raises(OutputRefused, match="not an allowed output host"):
        fetch(f"{local}/redirect?to=http://example.org/x.png", [local_entry])


def test_redirect_to_an_allowed_name_with_a_private_address_is_refused(local: str, local_entry: str) -> None:
    resolve = resolving({"replicate.delivery": ["10.0.0.9"]})
    with pytest.raises(OutputRefused, match="private"):
        fetch(
            f"{local}/redirect?to=http://replicate.delivery/x.png",
            [local_entry, "replicate.delivery"],
            resolve=resolve,
        )


def test_redirect_to_cloud_metadata_is_refused(local: str, local_entry: str) -> None:
    with pytest.raises(OutputRefused):
        fetch(f"{local}/redirect?to=http://169.254.169.254/latest/", [local_entry, "169.254.169.254"])
