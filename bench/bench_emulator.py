"""Benchmark: sustained create+get requests/s of the Replicate emulator with 1,000 predictions in flight.

    .venv/bin/python bench/bench_emulator.py [--in-flight 1000] [--seconds 30] [--no-append]

Starts the emulator as its own process (``python -m ai_pipeline.dev.emulator``: uvicorn, one worker, uvloop
+ httptools, rate limits off, predict_seconds 1 +/- 0.2, loopback only). This process is the load
generator: ``--in-flight`` workers on uvloop, each creating a prediction, polling it with GET every
``--poll-interval`` seconds (the official client's default, 0.5 s) until it is terminal, then starting
the next - so 1,000 predictions are always in flight and the offered load (~2,500 requests/s) is above
what is measured. After ``--warmup`` seconds it counts completed create and get answers for
``--seconds`` seconds, then stops. Bounded: at most warmup + seconds + 10 s and ``--max-predictions``.
Reports requests/s, answer latency percentiles and the CPU each process used, and writes the
``## Emulator throughput`` section of bench/RESULTS.md (replaced if present).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import importlib.util
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psutil

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

# httpcore looks for the optional `sniffio` on every request; when it is not installed, each failed
# import searches sys.path again (~0.5 ms per request, most of the load generator's CPU). A None entry
# in sys.modules makes that import fail at once, with exactly the same outcome (asyncio assumed).
if importlib.util.find_spec("sniffio") is None:
    sys.modules["sniffio"] = None  # type: ignore[assignment]

from ai_pipeline.dev.emulator import IMAGE_MODEL_VERSION, emulator_process  # noqa: E402
from bench.results import RESULTS, write_section  # noqa: E402

HEADING = "## Emulator throughput"
TARGET_REQUESTS_PER_SECOND = 500
TERMINAL = {"succeeded", "failed", "canceled"}
EMULATOR_SETTINGS = {
    "rate_limits_enabled": False,
    "predict_seconds": 1.0,
    "predict_jitter_seconds": 0.2,
    "start_seconds": 0.05,
    "seed": 1,
}


@dataclass
class Tally:
    """What the workers did inside the measured window."""

    window_start: float = 0.0
    window_end: float = 0.0
    creates: int = 0
    gets: int = 0
    errors: int = 0
    predictions_done: int = 0
    started: int = 0
    latencies: list[float] = field(default_factory=list)

    def in_window(self, t: float) -> bool:
        return self.window_start <= t < self.window_end


@dataclass
class Pool:
    """An httpx client plus a semaphore sized to its connections: requests queue on the (cheap) semaphore,
    never inside httpcore, whose queue handling is costly with hundreds of waiters."""

    http: httpx.AsyncClient
    slots: asyncio.Semaphore


async def worker(number: int, pool: Pool, tally: Tally, args: argparse.Namespace) -> None:
    """Create a prediction, poll it until terminal, repeat until the window closes."""
    while time.monotonic() < tally.window_end and tally.started < args.max_predictions:
        tally.started += 1
        body = {"version": IMAGE_MODEL_VERSION, "input": {"prompt": f"bench {number}-{tally.started}"}}
        prediction = await request(pool, tally, "create", "POST", "/v1/predictions", json=body)
        if prediction is None:
            continue
        while prediction.get("status") not in TERMINAL and time.monotonic() < tally.window_end:
            await asyncio.sleep(args.poll_interval)
            answer = await request(pool, tally, "get", "GET", f"/v1/predictions/{prediction['id']}")
            prediction = answer or prediction
        if prediction.get("status") in TERMINAL and tally.in_window(time.monotonic()):
            tally.predictions_done += 1


async def request(pool: Pool, tally: Tally, kind: str, method: str, url: str, **kw: object) -> dict | None:
    """One API call, counted if it completes inside the window."""
    started = time.monotonic()
    try:
        async with pool.slots:
            response = await pool.http.request(method, url, **kw)  # type: ignore[arg-type]
        ok = response.status_code in (200, 201)
        payload = response.json() if ok else None
    except httpx.HTTPError:
        ok, payload = False, None
    finished = time.monotonic()
    if tally.in_window(finished):
        if not ok:
            tally.errors += 1
        elif kind == "create":
            tally.creates += 1
        else:
            tally.gets += 1
        tally.latencies.append(finished - started)
    return payload


async def drive(base_url: str, args: argparse.Namespace) -> Tally:
    """Run the workers over a few connection pools (httpx pools get slow when very large)."""
    now = time.monotonic()
    tally = Tally(window_start=now + args.warmup, window_end=now + args.warmup + args.seconds)
    per_pool = max(1, args.connections // args.pools)
    pools = [
        Pool(
            httpx.AsyncClient(
                base_url=base_url,
                headers={"Authorization": "Bearer r8_bench"},
                limits=httpx.Limits(max_connections=per_pool, max_keepalive_connections=per_pool),
                timeout=httpx.Timeout(30.0),
                trust_env=False,
            ),
            asyncio.Semaphore(per_pool),
        )
        for _ in range(args.pools)
    ]
    try:
        tasks = [
            asyncio.create_task(worker(i, pools[i % args.pools], tally, args)) for i in range(args.in_flight)
        ]
        await asyncio.wait(tasks, timeout=args.warmup + args.seconds + 10)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    finally:
        for pool in pools:
            await pool.http.aclose()
    return tally


def run_load(base_url: str, args: argparse.Namespace) -> Tally:
    """Drive the load on uvloop when it is installed."""
    try:
        import uvloop

        loop_factory = uvloop.new_event_loop
    except ImportError:  # pragma: no cover
        loop_factory = None
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        return runner.run(drive(base_url, args))


def cpu_seconds(process: psutil.Process) -> float:
    times = process.cpu_times()
    return times.user + times.system


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--in-flight", type=int, default=1000, help="predictions kept in flight")
    parser.add_argument("--seconds", type=float, default=30.0, help="measured window")
    parser.add_argument("--warmup", type=float, default=5.0, help="seconds before measuring")
    parser.add_argument(
        "--poll-interval", type=float, default=0.5, help="seconds between GETs of one prediction"
    )
    parser.add_argument("--connections", type=int, default=200, help="HTTP connections, all pools together")
    parser.add_argument("--pools", type=int, default=25, help="httpx clients the workers are spread over")
    parser.add_argument("--max-predictions", type=int, default=200_000, help="hard cap on creates")
    parser.add_argument("--no-append", action="store_true", help="do not write bench/RESULTS.md")
    args = parser.parse_args()

    with emulator_process(**EMULATOR_SETTINGS) as emu:
        assert emu.process is not None
        server = psutil.Process(emu.process.pid)
        me = psutil.Process()
        wall_started = time.monotonic()
        server_cpu, my_cpu = cpu_seconds(server), cpu_seconds(me)
        tally = run_load(emu.base_url, args)
        wall = time.monotonic() - wall_started
        server_cpu, my_cpu = cpu_seconds(server) - server_cpu, cpu_seconds(me) - my_cpu
        stats = emu.stats()

    requests = tally.creates + tally.gets
    # The load generator, not the emulator, is usually the limit here: the emulator's own CPU per
    # request shows how far it could go.
    per_request_us = 1e6 * server_cpu / max(1, stats["requests"])
    per_core = 1e6 / max(per_request_us, 1e-9)
    target = TARGET_REQUESTS_PER_SECOND
    rate = requests / args.seconds
    latencies = sorted(tally.latencies) or [0.0]
    p50 = statistics.median(latencies) * 1000
    p99 = latencies[int(len(latencies) * 0.99) - 1 if len(latencies) > 1 else 0] * 1000
    verdict = "meets" if rate >= TARGET_REQUESTS_PER_SECOND else "MISSES"
    command = " ".join(["bench/bench_emulator.py", *sys.argv[1:]])
    lines = [
        HEADING,
        "",
        f"_{dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC, {platform.python_version()}, "
        f"{os.cpu_count()} CPUs shared with other work; `.venv/bin/python {command}`_",
        "",
        f"Emulator in its own process (uvicorn, 1 worker, uvloop + httptools), settings {EMULATOR_SETTINGS}.",
        f"Load generator in this process: {args.in_flight} predictions in flight (create, then GET every "
        f"{args.poll_interval} s until terminal, repeat), {args.connections} keep-alive connections, "
        f"{args.warmup:g} s warm-up, {args.seconds:g} s measured.",
        "",
        "| measure | value |",
        "| --- | --- |",
        f"| **create+get requests/s (sustained)** | **{rate:,.0f}** ({verdict} the {target}/s target) |",
        f"| creates / gets in window | {tally.creates:,} / {tally.gets:,} |",
        f"| predictions completed per second | {tally.predictions_done / args.seconds:,.0f} |",
        f"| failed requests | {tally.errors} |",
        f"| answer latency p50 / p99 | {p50:.1f} ms / {p99:.1f} ms |",
        f"| emulator CPU (of one core) | {100 * server_cpu / wall:.0f} % |",
        f"| emulator CPU per request | {per_request_us:.0f} µs (≈ {per_core:,.0f} requests/s per core) |",
        f"| load generator CPU (of one core) | {100 * my_cpu / wall:.0f} % |",
        f"| emulator totals | {stats['requests']:,} requests, {stats['predictions_created']:,} predictions |",
        "",
    ]
    section = "\n".join(lines)
    print(section)
    if not args.no_append:
        write_section(section)
        print(f"written to {RESULTS.relative_to(REPO)}")


if __name__ == "__main__":
    main()
