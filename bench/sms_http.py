"""SMS gateway throughput: the stock httpx client against ``channels.http.make_client``.

A local gateway (``bench/_sinks.py``: stdlib asyncio only, in its own process so that it does
not share a core with the client) answers every request after ``--delay`` seconds with a small JSON body, over
HTTP/1.1 keep-alive. N requests go through each client at a fixed concurrency; the ideal time
is ``N * delay / concurrency`` (every slot always busy). The two clients run alternately in
each round, so a noisy neighbour hurts both, and the summary reports medians.

    .venv/bin/python bench/sms_http.py                 # N=5000, concurrency 100, 50 ms, 3 rounds
    .venv/bin/python bench/sms_http.py --smoke         # a few seconds, for CI
    .venv/bin/python bench/sms_http.py --require 70    # exit 1 if make_client < 70 % of ideal

Target (docs: reference/performance.md): make_client >= 70 % of ideal at concurrency 100.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _sinks import HttpGateway

from channels.http import make_client

REQUEST = json.dumps(
    {
        "to": "+8613800138000",
        "text": "【商户】关于终端 12345678 的注销申请，案号 OUT-2026-000123，请于五个工作日内答复。",
        "out_id": "a7f3c2e1d9b04c55",
    },
    ensure_ascii=False,
).encode()


# -- the clients --------------------------------------------------------------------------------


async def run_batch(client: httpx.AsyncClient, url: str, n: int, concurrency: int) -> float:
    """Send ``n`` requests with ``concurrency`` in flight; return the wall time in seconds."""
    todo = iter(range(n))
    failures: list[str] = []
    headers = {"Content-Type": "application/json; charset=utf-8"}

    async def worker() -> None:
        for _ in todo:
            try:
                response = await client.post(url, content=REQUEST, headers=headers)
                if response.status_code != 200 or response.json()["code"] != "0":
                    failures.append(f"HTTP {response.status_code}")
            except httpx.HTTPError as exc:
                failures.append(f"{type(exc).__name__}: {exc}")

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.perf_counter() - started
    if failures:
        raise SystemExit(f"{len(failures)} of {n} requests failed, first: {failures[0]}")
    return elapsed


async def measure(
    label: str,
    factory: Callable[[], httpx.AsyncClient],
    url: str,
    n: int,
    concurrency: int,
    ideal: float,
) -> float:
    client = factory()
    try:
        elapsed = await run_batch(client, url, n, concurrency)
    finally:
        await client.aclose()
    rate = n / elapsed
    print(
        f"  {label:<32} {rate:8.0f} req/s  {elapsed:6.2f} s  {100 * ideal / elapsed:5.1f} % of ideal"
    )
    return elapsed


def _stock() -> httpx.AsyncClient:
    return httpx.AsyncClient(timeout=10.0)


def _ours() -> httpx.AsyncClient:
    return make_client(timeout=10.0, max_connections=100)


async def bench(n: int, concurrency: int, delay: float, rounds: int, url: str) -> float:
    ideal = n * delay / concurrency
    print(
        f"N={n} concurrency={concurrency} server delay={delay * 1000:.0f} ms "
        f"ideal={ideal:.2f} s ({n / ideal:.0f} req/s), {rounds} round(s), cpus={os.cpu_count()}"
    )
    contenders: list[tuple[str, Callable[[], httpx.AsyncClient]]] = [
        ("(a) httpx.AsyncClient() default", _stock),
        ("(b) channels.http.make_client", _ours),
    ]
    times: dict[str, list[float]] = {label: [] for label, _ in contenders}
    for r in range(rounds):
        print(f"round {r + 1}")
        order = contenders if r % 2 == 0 else contenders[::-1]
        for label, factory in order:
            run: Awaitable[float] = measure(label, factory, url, n, concurrency, ideal)
            times[label].append(await run)
    base = statistics.median(times[contenders[0][0]])
    ours = statistics.median(times[contenders[1][0]])
    print("median")
    for label, elapsed in ((contenders[0][0], base), (contenders[1][0], ours)):
        print(
            f"  {label:<32} {n / elapsed:8.0f} req/s  {elapsed:6.2f} s  "
            f"{100 * ideal / elapsed:5.1f} % of ideal  ({elapsed / ideal:.2f}x ideal time)"
        )
    print(f"  ratio (b)/(a) throughput: {base / ours:.2f}x")
    return 100 * ideal / ours


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=5000, help="requests per client per round")
    parser.add_argument("--concurrency", type=int, default=100)
    parser.add_argument("--delay", type=float, default=0.05, help="gateway latency in seconds")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--smoke", action="store_true", help="N=1000, 1 round: a quick CI check")
    parser.add_argument("--require", type=float, help="exit 1 if (b) is below this %% of ideal")
    args = parser.parse_args()
    if args.smoke:
        args.n, args.rounds = 1000, 1
    with HttpGateway(args.delay) as gateway:  # the same gateway bench/sms_pipeline.py uses
        pct = asyncio.run(bench(args.n, args.concurrency, args.delay, args.rounds, gateway.url))
    if args.require is not None and pct < args.require:
        raise SystemExit(
            f"make_client reached {pct:.1f} % of ideal, below the required {args.require} %"
        )


if __name__ == "__main__":
    main()
