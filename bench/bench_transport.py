"""CPU per request of the HTTP transport under httpx: ours (aiohttp by hand), httpx-aiohttp, httpx's own.

    .venv/bin/python bench/bench_transport.py [--rounds 8] [--requests 1000] [--in-flight 16] [--no-write]

One request is what a run worker does per generation: the official `replicate` client creates a
prediction with `Prefer: wait` (answered `succeeded` at once) and `fetch_output` downloads its PNG, both
through the same transport, as `BatchRunner` has them. The emulator serves both from its own process
(rate limits off, predictions end at once), so this process's CPU (`time.process_time`) is the client
side only. The transports take turns, round after round, on the same emulator and event loop (uvloop),
so a noisy machine slows them alike; each round makes a fresh transport and client, warms them up, then
counts `--requests` requests with `--in-flight` at once. Reported: CPU per request of each round, the
median per transport, and the ratio to ours within each round (then its median). Writes the
``## HTTP transport CPU`` section of bench/RESULTS.md unless `--no-write`.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import httpx_aiohttp
import replicate
import uvloop

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from ai_pipeline.dev.emulator import IMAGE_MODEL_VERSION, emulator_process  # noqa: E402
from ai_pipeline.http_transport import pooled_async_transport  # noqa: E402
from ai_pipeline.storage.fetch import FetchPolicy, fetch_output  # noqa: E402
from bench.results import RESULTS, write_section  # noqa: E402

HEADING = "## HTTP transport CPU"
EMULATOR_SETTINGS = {
    "rate_limits_enabled": False,
    "predict_seconds": 0.0,
    "predict_jitter_seconds": 0.0,
    "start_seconds": 0.0,
    "seed": 1,
}
WARMUP_REQUESTS = 32


def _httpx_aiohttp(max_connections: int) -> httpx.AsyncBaseTransport:
    return httpx_aiohttp.AiohttpTransport(
        limits=httpx.Limits(max_connections=max_connections, keepalive_expiry=5.0)
    )


def _httpx_own(max_connections: int) -> httpx.AsyncBaseTransport:
    return httpx.AsyncHTTPTransport(
        limits=httpx.Limits(max_connections=max_connections, keepalive_expiry=5.0)
    )


TRANSPORTS: dict[str, Callable[[int], httpx.AsyncBaseTransport]] = {
    "ours": pooled_async_transport,
    "httpx-aiohttp": _httpx_aiohttp,
    "httpx (httpcore)": _httpx_own,
}


async def one_request(
    client: replicate.Client, transport: httpx.AsyncBaseTransport, policy: FetchPolicy
) -> None:
    """A create answered `succeeded`, then the download of its output."""
    prediction = await client.predictions.async_create(
        version=IMAGE_MODEL_VERSION, input={"prompt": "bench"}, wait=5
    )
    assert prediction.status == "succeeded", prediction.status
    fetched = await fetch_output(transport, prediction.output, policy)
    assert fetched.content.startswith(b"\x89PNG"), fetched.content[:8]


async def measure_round(
    make_transport: Callable[[int], httpx.AsyncBaseTransport],
    base_url: str,
    policy: FetchPolicy,
    args: argparse.Namespace,
) -> float:
    """CPU seconds per request for `args.requests` requests, `args.in_flight` at once."""
    transport = make_transport(args.in_flight * 2)
    client = replicate.Client(
        api_token="r8_bench",
        base_url=base_url,
        timeout=httpx.Timeout(connect=5.0, read=75.0, write=30.0, pool=60.0),
        transport=transport,
    )

    async def run(count: int) -> None:
        remaining = count

        async def worker() -> None:
            nonlocal remaining
            while remaining > 0:
                remaining -= 1
                await one_request(client, transport, policy)

        await asyncio.gather(*(worker() for _ in range(args.in_flight)))

    try:
        await run(WARMUP_REQUESTS)
        started = time.process_time()
        await run(args.requests)
        return (time.process_time() - started) / args.requests
    finally:
        await transport.aclose()


async def measure_all(base_url: str, names: list[str], args: argparse.Namespace) -> dict[str, list[float]]:
    host_port = base_url.removeprefix("http://")
    policy = FetchPolicy((host_port,), max_bytes=10_000_000, timeout_seconds=30.0)
    cpu: dict[str, list[float]] = {name: [] for name in names}
    for number in range(args.rounds):
        # Rotate who goes first so that no transport always follows the same neighbour.
        order = names[number % len(names) :] + names[: number % len(names)]
        for name in order:
            cpu[name].append(await measure_round(TRANSPORTS[name], base_url, policy, args))
        print(
            f"round {number + 1}: " + ", ".join(f"{name} {1e6 * cpu[name][-1]:.0f} µs" for name in names),
            flush=True,
        )
    return cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=8, help="turns each transport takes")
    parser.add_argument("--requests", type=int, default=1000, help="measured requests per round")
    parser.add_argument("--in-flight", type=int, default=16, help="requests at once")
    parser.add_argument("--no-write", action="store_true", help="do not write bench/RESULTS.md")
    args = parser.parse_args()

    names = list(TRANSPORTS)
    with emulator_process(**EMULATOR_SETTINGS) as emu:
        cpu = uvloop.run(measure_all(emu.base_url, names, args))

    ours = cpu["ours"]
    median = {name: statistics.median(values) for name, values in cpu.items()}
    ratios = {name: [v / o for v, o in zip(values, ours, strict=True)] for name, values in cpu.items()}
    command = " ".join(["bench/bench_transport.py", *sys.argv[1:]])
    lines = [
        HEADING,
        "",
        f"_{dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC, {platform.python_version()}, "
        f"{os.cpu_count()} CPUs shared with other work; `.venv/bin/python {command}`_",
        "",
        "CPU of this process per request (the official client's create answered `succeeded`, then "
        f"`fetch_output` of its PNG), {args.requests} requests per round with {args.in_flight} in flight, "
        f"{args.rounds} rounds taking turns on one emulator process and one uvloop loop.",
        "",
        "| transport | µs CPU per request, each round | median | ratio to ours, each round | median ratio |",
        "| --- | --- | ---: | --- | ---: |",
    ]
    for name in names:
        rounds = ", ".join(f"{1e6 * v:.0f}" for v in cpu[name])
        each_ratio = ", ".join(f"{r:.2f}" for r in ratios[name])
        lines.append(
            f"| {name} | {rounds} | {1e6 * median[name]:.0f} | {each_ratio} | "
            f"{statistics.median(ratios[name]):.2f} |"
        )
    summary = {
        name: f"{statistics.median(r):.2f}x ours (rounds {min(r):.2f}-{max(r):.2f})"
        for name, r in ratios.items()
    }
    lines += [
        "",
        f"httpx-aiohttp costs {summary['httpx-aiohttp']}, httpx's own transport "
        f"{summary['httpx (httpcore)']}. Why the pipeline keeps its own transport all the same: the "
        "docstring of ai_pipeline/http_transport.py.",
        "",
    ]
    section = "\n".join(lines)
    print(section)
    if not args.no_write:
        write_section(section)
        print(f"written to {RESULTS.relative_to(REPO)}")


if __name__ == "__main__":
    main()
