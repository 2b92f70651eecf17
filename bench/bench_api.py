"""Benchmark: accepted single submissions per second through the HTTP API, and CPU per submission.

    .venv/bin/python bench/bench_api.py [--seconds 20] [--connections 64] [--no-write]

One `ai-pipeline serve` process (uvicorn, one worker) in front of a fresh database on the machine's
Postgres (`AI_PIPELINE_TEST_DATABASE_URL`, else the embedded one); 200 users with plenty of credits;
every POST /v1/generations is a new paid submission (checked, debited, inserted: `submit_generation`).
The load comes from another process: `wrk` (Debian package `wrk`) when installed, else a Python
aiohttp client pool. Reported: accepted submissions per second (201s, checked against the rows the
database holds), latency, and the service process's CPU per submission (psutil, user + system). The
Postgres server's CPU is not counted here (it is shared with whatever else runs on the machine).
Writes its section of bench/RESULTS.md unless `--no-write`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
from sqlalchemy import text

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from ai_pipeline.catalogue import ModelSpec, upsert_models  # noqa: E402
from ai_pipeline.credits import grant  # noqa: E402
from ai_pipeline.db.engine import engine_for_url  # noqa: E402
from ai_pipeline.dev.local_stack import free_port  # noqa: E402
from ai_pipeline.service.keys import create_key  # noqa: E402
from ai_pipeline_tests.support.databases import migrated_database  # noqa: E402
from bench.results import write_section  # noqa: E402

MODEL = "bench/image"
USERS = 200
WRK_SCRIPT = """
local counter = 0
local thread_id = 0
local threads = 0
function setup(thread)
    thread:set("thread_id", threads)
    threads = threads + 1
end
function request()
    counter = counter + 1
    local body = string.format(
        '{"user_id":"user-%d","model":"%s","prompt":"a red fox, study %d-%d"}',
        counter %% USERS, "MODEL", thread_id, counter)
    return wrk.format("POST", "/v1/generations",
        {["Content-Type"] = "application/json", ["Authorization"] = "Bearer KEY"}, body)
end
"""


def _wait_for(url: str, process: subprocess.Popen[bytes]) -> None:
    import httpx

    for _ in range(300):
        if process.poll() is not None:
            raise RuntimeError("the API exited")
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise RuntimeError("the API did not start")


def _run_wrk(base_url: str, key: str, seconds: int, connections: int, scratch: Path) -> dict[str, float]:
    script = scratch / "submit.lua"
    lua = WRK_SCRIPT.replace("%%", "%").replace("USERS", str(USERS)).replace("MODEL", MODEL)
    script.write_text(lua.replace("KEY", key))
    out = subprocess.run(
        ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency", "-s", str(script), base_url],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    figures: dict[str, float] = {}
    for line in out.splitlines():
        parts = line.split()
        if line.strip().startswith("50%"):
            figures["p50_ms"] = _ms(parts[1])
        elif line.strip().startswith("99%"):
            figures["p99_ms"] = _ms(parts[1])
        elif "requests in" in line:
            figures["requests"] = float(parts[0])
        elif "Non-2xx" in line:
            figures["non_2xx"] = float(parts[-1])
    return figures


def _ms(value: str) -> float:
    for suffix, scale in (("us", 0.001), ("ms", 1.0), ("s", 1000.0)):
        if value.endswith(suffix):
            return float(value[: -len(suffix)]) * scale
    return float(value)


async def _python_load(base_url: str, key: str, seconds: int, connections: int) -> dict[str, float]:
    import aiohttp

    latencies: list[float] = []
    failures = 0
    deadline = time.monotonic() + seconds
    headers = {"Authorization": f"Bearer {key}"}

    async def worker(n: int, session: aiohttp.ClientSession) -> None:
        nonlocal failures
        i = 0
        while time.monotonic() < deadline:
            i += 1
            body = {"user_id": f"user-{i % USERS}", "model": MODEL, "prompt": f"a red fox, study {n}-{i}"}
            started = time.monotonic()
            async with session.post(f"{base_url}/v1/generations", json=body, headers=headers) as answer:
                await answer.read()
                if answer.status != 201:
                    failures += 1
            latencies.append(time.monotonic() - started)

    connector = aiohttp.TCPConnector(limit=connections)
    async with aiohttp.ClientSession(connector=connector) as session:
        await asyncio.gather(*(worker(n, session) for n in range(connections)))
    latencies.sort()
    return {
        "requests": float(len(latencies)),
        "non_2xx": float(failures),
        "p50_ms": latencies[len(latencies) // 2] * 1000,
        "p99_ms": latencies[int(len(latencies) * 0.99)] * 1000,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=20)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--no-write", action="store_true", help="do not write bench/RESULTS.md")
    parser.add_argument(
        "--python-load", action="store_true", help="use the Python load generator even with wrk"
    )
    args = parser.parse_args()

    with migrated_database() as url, tempfile.TemporaryDirectory() as scratch:
        engine = engine_for_url(url)
        with engine.begin() as conn:
            upsert_models(conn, [ModelSpec(name=MODEL, credits_per_run=1, replicate_model="bench/image")])
            for user in range(USERS):
                grant(conn, f"user-{user}", 10**9)
            key = create_key(conn, "bench").key
        port = free_port()
        env = {
            **os.environ,
            "AI_PIPELINE_DATABASE_URL": url,
            "AI_PIPELINE_API_RATE_PER_SECOND": "1000000",
            "AI_PIPELINE_API_RATE_BURST": "1000000",
        }
        server = subprocess.Popen(
            [sys.executable, "-m", "ai_pipeline.cli", "serve", "--port", str(port)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        base_url = f"http://127.0.0.1:{port}"
        try:
            _wait_for(f"{base_url}/openapi.json", server)
            use_wrk = shutil.which("wrk") is not None and not args.python_load
            # warm-up: connections, the catalogue cache, the database's plan cache
            if use_wrk:
                _run_wrk(base_url, key, 2, args.connections, Path(scratch))
            else:
                asyncio.run(_python_load(base_url, key, 2, args.connections))
            with engine.connect() as conn:
                before = conn.execute(text("SELECT count(*) FROM generation_requests")).scalar_one()
            process = psutil.Process(server.pid)
            cpu_before = process.cpu_times()
            started = time.monotonic()
            if use_wrk:
                figures = _run_wrk(base_url, key, args.seconds, args.connections, Path(scratch))
            else:
                figures = asyncio.run(_python_load(base_url, key, args.seconds, args.connections))
            elapsed = time.monotonic() - started
            cpu_after = process.cpu_times()
            with engine.connect() as conn:
                after = conn.execute(text("SELECT count(*) FROM generation_requests")).scalar_one()
        finally:
            server.terminate()
            server.wait(timeout=30)
            engine.dispose()

    accepted = after - before
    cpu = (cpu_after.user - cpu_before.user) + (cpu_after.system - cpu_before.system)
    rate = accepted / elapsed
    generator = "wrk (1 thread)" if use_wrk else "Python aiohttp pool"
    result = {
        "accepted": accepted,
        "answered": int(figures["requests"]),
        "non_2xx": int(figures.get("non_2xx", 0)),
        "seconds": round(elapsed, 1),
        "accepted_per_second": round(rate, 1),
        "service_cpu_ms_per_submission": round(cpu / max(accepted, 1) * 1000, 3),
        "service_cpu_share": round(cpu / elapsed, 2),
        "p50_ms": round(figures["p50_ms"], 1),
        "p99_ms": round(figures["p99_ms"], 1),
        "generator": generator,
        "connections": args.connections,
    }
    print(json.dumps(result, indent=2))
    if not args.no_write:
        write_section(
            "## API submissions (bench/bench_api.py)\n\n"
            f"{time.strftime('%Y-%m-%d')}, {platform.node()}, {os.cpu_count()} cores; one `ai-pipeline serve`"
            f" process; load from {generator}, {args.connections} connections, {args.seconds} s after a"
            " 2 s warm-up; every request a new paid submission (200 users). Load average at the end:"
            f" {os.getloadavg()[0]:.1f} (other work shares this machine's 2 cores and its Postgres).\n\n"
            "| accepted/s | accepted | non-2xx | p50 ms | p99 ms | service CPU per submission"
            " | service CPU |\n| --- | --- | --- | --- | --- | --- | --- |\n"
            f"| **{rate:,.0f}** | {accepted:,} | {result['non_2xx']} | {result['p50_ms']}"
            f" | {result['p99_ms']} | {result['service_cpu_ms_per_submission']} ms"
            f" | {result['service_cpu_share']:.0%} of a core |\n"
        )


if __name__ == "__main__":
    main()
