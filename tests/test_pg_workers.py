"""Two worker processes on one PostgreSQL database, dispatching the same queue at once.

- They never claim the same attempt: every attempt is claimed once, has exactly one
  ``try_started`` (written by one worker), and the gateway receives each notice exactly once.
- Per-recipient caps hold across them: counting a recipient's recent sends and inserting the
  new one is serialised per recipient (an advisory lock held until the claim commits), so two
  workers claiming attempts to the same number at the same moment cannot both see room for
  one more. Two processes overlap their claims only by luck, so this one is forced: worker B
  claims while worker A is held between counting and committing (threads, two connections).

The queue workers are real processes running :meth:`outreach.dispatch.Dispatcher.run_once`
through :class:`outreach.app.App`, started together behind a barrier so their claims overlap;
the gateway is a real HTTP server on loopback that records every request body.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import pytest
import sqlalchemy as sa

from channels.base import Outgoing, Prepared, RateLimit, Receipt
from outreach.app import App
from outreach.dispatch import Dispatcher, DispatchPolicy, DispatchReport
from outreach.proof import all_chains, verify_chain
from outreach.store import Attempt, Event, Send
from tests.test_dispatch import seed  # the same queue the single-worker tests use

pytestmark = pytest.mark.postgres

WORKER = """
import asyncio, json, os, signal, sys, time
from dataclasses import asdict
from pathlib import Path
from outreach.app import App

async def main(cfg: str, go: str) -> None:
    app = App.open(Path(cfg), migrate=False)
    d = app.dispatcher(app.build_channels(os.environ))
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, d.request_stop)
    while not os.path.exists(go):  # start together with the other worker
        await asyncio.sleep(0.005)
    report = await d.run_once()
    await d.aclose()
    app.close()
    print(json.dumps({"owner": d.owner, **asdict(report)}))

asyncio.run(main(sys.argv[1], sys.argv[2]))
"""


class Gateway:
    """An SMS gateway on 127.0.0.1 that answers each JSON request after ``delay`` seconds and
    keeps every request body."""

    def __init__(self, delay: float = 0.005) -> None:
        self.delay = delay
        self.bodies: list[dict[str, Any]] = []
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.AbstractServer | None = None

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":", 1)[1])
                body = json.loads(await reader.readexactly(length))
                self.bodies.append(body)
                await asyncio.sleep(self.delay)
                reply = json.dumps({"code": "0", "sid": f"S{len(self.bodies)}"}).encode()
                writer.write(
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                    b"Content-Length: " + str(len(reply)).encode() + b"\r\n\r\n" + reply
                )
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    def __enter__(self) -> Gateway:
        self._thread.start()
        start = asyncio.start_server(self._handle, "127.0.0.1", 0)
        self._server = asyncio.run_coroutine_threadsafe(start, self._loop).result(5)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    def __exit__(self, *exc: object) -> None:
        async def stop() -> None:
            assert self._server is not None
            self._server.close()
            await self._server.wait_closed()

        asyncio.run_coroutine_threadsafe(stop(), self._loop).result(5)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        self._loop.close()


@pytest.fixture
def gateway() -> Iterator[Gateway]:
    with Gateway() as gw:
        yield gw


def write_config(folder: Path, db_url: str, port: int, *, batch: int, limits: str) -> Path:
    path = folder / "outreach.toml"
    path.write_text(
        f"""
[database]
url = "{db_url}"

[sender]
name = "张三"

[channels.gw]
adapter = "http_sms"
url = "http://127.0.0.1:{port}/send"
request = {{ mobile = "{{recipient_national}}", content = "{{text}}", ext = "{{idempotency_key}}" }}
success_path = "code"
success_values = ["0"]
id_path = "sid"
max_connections = 8
concurrency = 8
limits = {limits}

[dispatch]
batch = {batch}
lease_seconds = 60
""",
        encoding="utf-8",
    )
    return path


def run_two_workers(cfg: Path, tmp_path: Path) -> list[dict[str, Any]]:
    go = tmp_path / "go"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WORKER, str(cfg), str(go)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    go.touch()
    reports = []
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
        reports.append(json.loads(out.strip().splitlines()[-1]))
    assert reports[0]["owner"] != reports[1]["owner"]
    return reports


def test_two_workers_never_claim_the_same_attempt(
    pg_url: str, tmp_path: Path, gateway: Gateway
) -> None:
    n = 400
    cfg = write_config(tmp_path, pg_url, gateway.port, batch=10, limits="[]")
    app = App.open(cfg)
    try:
        seed(app, [f"+86139{i:08d}" for i in range(n)])
        reports = run_two_workers(cfg, tmp_path)
        assert sum(r["sent"] for r in reports) == n
        assert all(r["sent"] > 0 for r in reports), reports  # both really worked the queue
        assert not any(r["errors"] for r in reports)
        with app.sessions() as s:
            attempts = {a.id: a for a in s.scalars(sa.select(Attempt))}
            started = s.execute(
                sa.select(Event.attempt_id, Event.body).where(Event.kind == "try_started")
            ).all()
            assert all(verify_chain(s, c).problem is None for c in all_chains(s))
        assert {a.state for a in attempts.values()} == {"sent"}
        assert {a.claims for a in attempts.values()} == {1}
        per_attempt = Counter(attempt_id for attempt_id, _ in started)
        assert len(per_attempt) == n and set(per_attempt.values()) == {1}
        workers = Counter(json.loads(body)["data"]["worker"] for _, body in started)
        assert set(workers) == {r["owner"] for r in reports}
        assert {w: workers[w] for w in workers} == {r["owner"]: r["sent"] for r in reports}
        # the gateway got every notice exactly once
        keys = Counter(b["ext"] for b in gateway.bodies)
        assert len(gateway.bodies) == n and set(keys.values()) == {1}
        assert set(keys) == {a.idempotency_key for a in attempts.values()}
    finally:
        app.close()


class Rendezvous:
    """A channel for claims only: on its first ``prepare`` - which a claim reaches after it
    counted the recipients' recent sends and before it commits - it waits (up to ``patience``)
    for the other worker's claim to get that far too. If counting were not serialised, both
    claims would count the same empty history here and both admit a send."""

    adapter: ClassVar[str] = "rendezvous"
    kinds: ClassVar[frozenset[str]] = frozenset({"sms"})

    def __init__(self, me: threading.Event, other: threading.Event, patience: float) -> None:
        self.name = "gw"
        self.me, self.other, self.patience = me, other, patience

    def prepare(self, msg: Outgoing) -> Prepared:
        if not self.me.is_set():
            self.me.set()
            self.other.wait(self.patience)
        return Prepared(msg, msg.body.encode(), "text/plain", msg.idempotency_key)

    async def send(self, prepared: Prepared) -> Receipt:
        raise AssertionError("claims only")

    async def aclose(self) -> None:
        return None


def test_per_recipient_caps_hold_across_two_workers(pg_url: str, tmp_path: Path) -> None:
    """Worker B claims while worker A sits between counting and committing: B must wait for
    A's commit and then see A's sends, so each number gets exactly one send (cap 1/h)."""
    numbers = [f"+86138{i:08d}" for i in range(20)]
    cfg = write_config(tmp_path, pg_url, 9, batch=len(numbers), limits="[]")
    app = App.open(cfg)
    try:
        seed(app, numbers + numbers)  # two attempts per number, one per worker's batch
        a_ready, b_ready = threading.Event(), threading.Event()
        workers = {
            name: Dispatcher(
                app.sessions,
                {"gw": Rendezvous(me, other, patience=1.0)},
                DispatchPolicy(batch=len(numbers)),
                owner=f"worker-{name}",
                limits={"gw": [RateLimit(1, 3600)]},
            )
            for name, me, other in (("a", a_ready, b_ready), ("b", b_ready, a_ready))
        }
        reports = {name: DispatchReport() for name in workers}
        claimed: dict[str, int] = {}

        def claim(name: str) -> None:
            claimed[name] = len(workers[name].claim(reports[name]))

        a = threading.Thread(target=claim, args=("a",))
        a.start()
        assert a_ready.wait(10), "worker A never reached its claim"
        b = threading.Thread(target=claim, args=("b",))
        b.start()
        a.join(30)
        b.join(30)
        assert claimed == {"a": len(numbers), "b": 0}
        assert reports["b"].deferred == len(numbers)
        with app.sessions() as s:
            assert Counter(s.scalars(sa.select(Send.recipient))) == dict.fromkeys(numbers, 1)
            deferred = s.scalars(sa.select(Event.body).where(Event.kind == "deferred")).all()
            assert len(deferred) == len(numbers)
            assert all(verify_chain(s, c).problem is None for c in all_chains(s))
    finally:
        app.close()
