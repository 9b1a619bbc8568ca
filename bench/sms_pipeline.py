"""SMS throughput: the whole outreach pipeline against a gateway that answers after 50 ms.

N SMS notices (each to its own number, so the default per-recipient caps of ``http_sms`` are
checked but never bind) go through ``App.dispatcher().run_once()`` with an ``http_sms``
channel at concurrency 100: claim under lease, render the request, store it as a blob, chain
``try_started`` and commit, POST it, chain the outcome with the gateway's reply and commit.
The gateway (``bench/_sinks.py``, its own process) answers every request 50 ms after it
arrived. The ideal time is N x 50 ms / 100 (every slot busy all the time, no cost at all on
our side); the target is at most 1.4x that, i.e. >= 71 % of the ideal rate.

For context the same run also times the bare HTTP client (``channels.http.make_client``) posting
N prepared bodies at the same concurrency, recording nothing: the pipeline's ceiling here.

    .venv/bin/python bench/sms_pipeline.py                  # N=5000, 3 rounds
    .venv/bin/python bench/sms_pipeline.py --smoke          # CI: N=1000, 1 round
    .venv/bin/python bench/sms_pipeline.py --db postgresql://postgres@127.0.0.1:5432/postgres
    .venv/bin/python bench/sms_pipeline.py --workers 2      # two dispatcher processes, one DB
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import sqlalchemy as sa

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _sinks import HttpGateway, seed_queue, write_config
from smtp_pipeline import Database

from channels.http import make_client
from outreach.app import App
from outreach.proof import all_chains, verify_chain
from outreach.runtime import tune_gc
from outreach.store import Attempt

RECIPIENT = "+86139{i:08d}"


def channel_table(url: str, concurrency: int) -> str:
    return f"""
[channels.gw]
adapter = "http_sms"
url = "{url}"
encoding = "json"
request = {{ mobile = "{{recipient_national}}", content = "【商户】{{text}}", ext = "{{idempotency_key}}" }}
success_path = "code"
success_values = ["0"]
id_path = "sid"
max_length = 300
max_connections = {concurrency}
concurrency = {concurrency}
"""


async def bare_client(url: str, n: int, concurrency: int) -> float:
    body = (
        '{"mobile":"13900000001","content":"【商户】关于终端 12345678 的注销申请，'
        '案号 OUT-2026-000123，请于五个工作日内答复。","ext":"a7f3c2e1d9b04c55"}'
    ).encode()
    client = make_client(timeout=10.0, max_connections=concurrency)
    todo = iter(range(n))
    headers = {"Content-Type": "application/json; charset=utf-8"}

    async def worker() -> None:
        for _ in todo:
            r = await client.post(url, content=body, headers=headers)
            if r.status_code != 200:
                raise SystemExit(f"gateway answered {r.status_code}")

    try:
        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return time.perf_counter() - started
    finally:
        await client.aclose()


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def process_cpu(pid: int | None) -> float:
    """CPU seconds of another process so far (Linux /proc), 0 without one."""
    if pid is None:
        return 0.0
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def pipeline_run(config: Path) -> tuple[float, int]:
    app = App.open(config, migrate=False)
    try:
        dispatcher = app.dispatcher(app.build_channels(os.environ))
        helper = dispatcher.helper.pid if dispatcher.helper is not None else None
        cpu, helper_cpu = cpu_seconds(), process_cpu(helper)
        started = time.perf_counter()
        report = await dispatcher.run_once()
        elapsed = time.perf_counter() - started
        cpu, helper_cpu = cpu_seconds() - cpu, process_cpu(helper) - helper_cpu
        sent = max(report.sent, 1)
        print(
            f"    cpu: {cpu:.2f} s in this process ({100 * cpu / elapsed:.0f} % of one core), "
            f"{1000 * cpu / sent:.2f} ms per SMS"
            + (
                f"; database helper {helper_cpu:.2f} s ({100 * helper_cpu / elapsed:.0f} %), "
                f"{1000 * helper_cpu / sent:.2f} ms per SMS"
                if helper is not None
                else ""
            )
        )
        await dispatcher.aclose()
        return elapsed, report.sent
    finally:
        app.close()


def check(config: Path, n: int) -> str:
    app = App.open(config, migrate=False)
    try:
        with app.sessions() as s:
            states = dict(
                s.execute(sa.select(Attempt.state, sa.func.count()).group_by(Attempt.state)).all()
            )
            if states != {"sent": n}:
                raise SystemExit(f"pipeline: attempt states {states}, expected all {n} sent")
            chains = all_chains(s)
            broken = [str(r.problem) for c in chains if (r := verify_chain(s, c)).problem]
        if broken:
            raise SystemExit(f"pipeline: {len(broken)} chains do not verify: {broken[0]}")
        return f"{n} attempts sent, {len(chains)} chains verify"
    finally:
        app.close()


async def child_worker(config: str, go: str) -> None:
    """One of ``--workers`` processes: ready everything, wait for the start signal, dispatch."""
    app = App.open(Path(config), migrate=False)
    dispatcher = app.dispatcher(app.build_channels(os.environ))
    tune_gc()  # as `outreach worker` does
    print("ready", flush=True)
    while not os.path.exists(go):
        await asyncio.sleep(0.001)
    cpu = cpu_seconds()
    report = await dispatcher.run_once()
    ended = time.time()
    cpu = cpu_seconds() - cpu
    await dispatcher.aclose()
    app.close()
    print(json.dumps({"sent": report.sent, "cpu": cpu, "ended": ended}), flush=True)


def workers_run(config: Path, workers: int) -> tuple[float, int]:
    """``workers`` dispatcher processes on one database, started together."""
    go = config.parent / "go"
    procs = [
        subprocess.Popen(
            [sys.executable, __file__, "--child-worker", str(config), str(go)],
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(workers)
    ]
    for p in procs:
        assert p.stdout is not None
        if p.stdout.readline().strip() != "ready":
            raise SystemExit("a worker did not start")
    started = time.time()
    go.touch()
    rows = []
    for p in procs:
        out, _ = p.communicate(timeout=300)
        rows.append(json.loads(out.strip().splitlines()[-1]))
    elapsed = max(r["ended"] for r in rows) - started
    sent = sum(r["sent"] for r in rows)
    cpu = sum(r["cpu"] for r in rows)
    print(
        f"    cpu: {cpu:.2f} s in {workers} workers, {1000 * cpu / max(sent, 1):.2f} ms per SMS; "
        f"sent per worker {[r['sent'] for r in rows]}"
    )
    return elapsed, sent


def pipeline(
    base_db: str | None,
    n: int,
    concurrency: int,
    delay: float,
    batch: int,
    workers: int = 1,
    db_process: bool = False,
) -> float:
    with (
        tempfile.TemporaryDirectory(prefix="outreach-bench-") as tmp,
        HttpGateway(delay) as gateway,
        Database(base_db, Path(tmp)) as db_url,
    ):
        config = write_config(
            Path(tmp),
            db_url,
            channel_table(gateway.url, concurrency // workers),
            batch=batch,
            db_process=db_process,
        )
        app = App.open(config)
        try:
            seed_queue(app.sessions, n, channel="gw", kind="sms", recipient=RECIPIENT)
        finally:
            app.close()
        if workers > 1:
            elapsed, sent = workers_run(config, workers)
        else:
            elapsed, sent = asyncio.run(pipeline_run(config))
        if sent != n:
            raise SystemExit(f"pipeline: {sent} of {n} reported sent")
        summary = check(config, n)
    if gateway.served != n:
        raise SystemExit(f"pipeline: the gateway answered {gateway.served} requests, N={n}")
    print(f"    check: {summary}; the gateway answered {gateway.served}")
    return elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=5000)
    parser.add_argument("--concurrency", type=int, default=100)
    parser.add_argument("--delay", type=float, default=0.05, help="gateway latency, seconds")
    parser.add_argument("--batch", type=int, default=200, help="[dispatch] batch (the default)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--smoke", action="store_true", help="N=1000, one round, for CI")
    parser.add_argument("--db", help="a PostgreSQL URL; default: a SQLite file")
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        help="dispatcher processes sharing the database (concurrency split between them)",
    )
    parser.add_argument(
        "--mode",
        choices=("both", "thread", "helper"),
        default="both",
        help="database work in the dispatcher's thread, in a helper process ([dispatch] "
        "db_process = true), or both side by side (the default; the target is for the helper)",
    )
    parser.add_argument("--require", action="store_true", help="exit 1 if the target is missed")
    parser.add_argument("--child-worker", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child_worker:
        asyncio.run(child_worker(*args.child_worker))
        return 0
    # Both sides run with the garbage-collector settings `outreach run` and `worker` use.
    tune_gc()
    if args.smoke:
        args.n, args.rounds = 1000, 1
    n, conc, delay = args.n, args.concurrency, args.delay
    ideal = n * delay / conc
    print(
        f"N={n} concurrency={conc} gateway delay={delay * 1000:.0f} ms ideal={ideal:.2f} s "
        f"batch={args.batch} workers={args.workers} cpus={os.cpu_count()} "
        f"db={'postgresql' if args.db else 'sqlite'}"
    )
    modes = {"both": ["thread", "helper"], "thread": ["thread"], "helper": ["helper"]}[args.mode]
    names = ["bare client"] + [f"pipeline, {m}" for m in modes]
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(args.rounds):
        order = names if r % 2 == 0 else names[::-1]
        for name in order:
            if name.startswith("pipeline"):
                elapsed = pipeline(
                    args.db,
                    n,
                    conc,
                    delay,
                    args.batch,
                    args.workers,
                    db_process=name.endswith("helper"),
                )
            else:
                with HttpGateway(delay) as gateway:
                    elapsed = asyncio.run(bare_client(gateway.url, n, conc))
            times[name].append(elapsed)
            print(
                f"  {name:<18} {n / elapsed:7.0f} msgs/s  {elapsed:6.2f} s  "
                f"{elapsed / ideal:5.2f}x ideal"
            )
    print("median")
    for name, values in times.items():
        elapsed = statistics.median(values)
        print(
            f"  {name:<18} {n / elapsed:7.0f} msgs/s  {elapsed:6.2f} s  "
            f"{elapsed / ideal:5.2f}x ideal ({100 * ideal / elapsed:.0f} % of the ideal rate)"
        )
    judged = names[-1]
    ratio = statistics.median(times[judged]) / ideal
    met = ratio <= 1.4
    print(f"target: {judged} <= 1.4x ideal: {'met' if met else 'MISSED'} ({ratio:.2f}x)")
    return 1 if args.require and not met else 0


if __name__ == "__main__":
    sys.exit(main())
