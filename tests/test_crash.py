"""Crash safety through the real command: ``outreach run`` in a subprocess sends notices to a real
SMTP server on loopback, and is killed mid-batch.

- **SIGKILL**: nothing of the worker survives but what it committed. After its lease runs out,
  a second run recovers: every attempt ends in exactly one final state, every ``try_started``
  is followed by an outcome or an ``unknown``, every message the server got carries exactly
  the bytes chained for it, every duplicate the server got is preceded by an ``unknown`` for
  that attempt (matched by Message-ID), and every chain verifies.
- **SIGTERM**: in-flight sends finish and are recorded, what was claimed but not sent is
  released with a ``released`` event, nothing is left ``sending``, nothing is unknown, and the
  next run sends the rest without a duplicate.

The server (tests/smtp_server.py) waits before answering the end of DATA, so a kill lands
while messages are on the wire; it records each message when its DATA ends, before that wait,
which is exactly the "delivered but not yet acknowledged" window the proof must survive.
"""

from __future__ import annotations

import email
import json
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from outreach.proof import all_chains, verify_chain
from outreach.store import Attempt, Event, make_engine, session_factory
from tests.smtp_server import Faults, LoopbackSmtpServer

N = 16  # cases, one e-mail attempt each
DATA_END_DELAY = 0.15  # seconds the server takes to acknowledge each message
OUTCOMES = {"sent", "pending", "failed", "unknown", "rescheduled", "released", "try_failed"}


def write_config(folder: Path, db_url: str, smtp_port: int, n: int = N) -> Path:
    """N merchants with one terminal each, one agent reachable by e-mail, one step each."""
    lines = [
        "[database]",
        f'url = "{db_url}"',
        "[sender]",
        'name = "张三"',
        'email = "zhangsan@example.com"',
        "[parties.agent]",
        'role = "agent"',
        'name = "深圳某某支付服务有限公司"',
        "  [[parties.agent.contacts]]",
        '  kind = "email"',
        '  value = "service@agent.example.cn"',
        "[parties.acquirer]",
        'role = "acquirer"',
        'name = "拉卡拉"',
        "[channels.mail]",
        'adapter = "smtp"',
        'host = "127.0.0.1"',
        f"port = {smtp_port}",
        'security = "none"',
        'from_address = "zhangsan@example.com"',
        'from_name = "张三"',
        'local_hostname = "worker.test"',
        "max_connections = 2",
        "concurrency = 2",
        "timeout = 10",
        "[plans.p]",
        "  [[plans.p.steps]]",
        "  after = 0",
        '  to = "agent"',
        '  via = ["email"]',
        '  template = "cancellation_request"',
        "[dispatch]",
        "lease_seconds = 5",  # the shortest the config allows: recovery waits for it
        "batch = 100",
        'reschedule_after = "30m"',
    ]
    for i in range(n):
        lines += [
            "[[merchants]]",
            f'key = "m{i}"',
            f'name = "深圳市福田区便利店{i}号"',
            f'merchant_no = "8225840539{i:05d}"',
            "  [[merchants.terminals]]",
            f'  terminal_no = "{10000000 + i}"',
            '  acquirer = "acquirer"',
            '  agent = "agent"',
            "[[cases]]",
            f'key = "c{i}"',
            f'merchant = "m{i}"',
            'goal = "cancel_terminal"',
            'plan = "p"',
        ]
    path = folder / "outreach.toml"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def start_run(cfg: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "outreach", "-c", str(cfg), "run", "--offline", "--json"],
        cwd=cfg.parent,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def run(cfg: Path) -> dict[str, str]:
    done = subprocess.run(
        [sys.executable, "-m", "outreach", "-c", str(cfg), "run", "--offline", "--json"],
        cwd=cfg.parent,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    return {r["stage"]: r["result"] for r in json.loads(done.stdout)}


def wait_for(what: str, condition: Callable[[], bool], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.005)


def message_id(content: bytes) -> str:
    return str(email.message_from_bytes(content)["Message-ID"])


def history(db_url: str) -> tuple[dict[int, Attempt], dict[int, list[str]]]:
    """Attempts by id, and the kinds of each attempt's events in chain order."""
    engine = make_engine(db_url)
    try:
        with session_factory(engine)() as s:
            attempts = {a.id: a for a in s.scalars(sa.select(Attempt))}
            kinds: dict[int, list[str]] = {a: [] for a in attempts}
            rows = s.execute(
                sa.select(Event.attempt_id, Event.kind)
                .where(Event.attempt_id.is_not(None))
                .order_by(Event.chain, Event.seq)
            )
            for attempt_id, kind in rows:
                kinds[attempt_id].append(kind)
            broken = [str(r.problem) for c in all_chains(s) if (r := verify_chain(s, c)).problem]
        assert not broken, broken
        return attempts, kinds
    finally:
        engine.dispose()


def check_proof(db_url: str, server: LoopbackSmtpServer) -> dict[str, int]:
    """The invariants of the proof after a crash and a recovery (see the module docstring)."""
    attempts, kinds = history(db_url)
    by_mid = {a.message_id: a for a in attempts.values()}
    deliveries: Counter[str] = Counter()
    for m in server.messages:
        mid = message_id(m.content)
        attempt = by_mid.get(mid)
        assert attempt is not None, f"the server got {mid}, which no attempt chained"
        # the bytes on the wire are the bytes chained in try_started
        assert m.sha256 == attempt.payload_sha256
        deliveries[mid] += 1
    for a in attempts.values():
        k = kinds[a.id]
        assert a.state == "sent", (a.id, a.state, k)
        assert k.count("sent") == 1 and k[-1] == "sent", k  # exactly one final state
        open_try = False
        for kind in k:  # every try_started has an outcome (or recovery's unknown) after it
            if kind == "try_started":
                assert not open_try, k
                open_try = True
            elif kind in OUTCOMES:
                open_try = False
        assert not open_try, k
        got = deliveries[a.message_id]
        assert 1 <= got <= k.count("try_started"), (got, k)
        assert k.count("unknown") >= got - 1, (got, k)  # every duplicate follows an unknown
    return {
        "duplicates": sum(n - 1 for n in deliveries.values()),
        "unknown": sum(k.count("unknown") for k in kinds.values()),
        "released": sum(k.count("released") for k in kinds.values()),
    }


def lease_deadline(db_url: str) -> datetime | None:
    engine = make_engine(db_url)
    try:
        with engine.connect() as conn:
            value: Any = conn.execute(
                sa.select(sa.func.max(Attempt.lease_expires_at)).where(Attempt.state == "sending")
            ).scalar()
    finally:
        engine.dispose()
    return None if value is None else value.replace(tzinfo=UTC)


def test_sigkill_mid_batch_then_recovery(tmp_path: Path, db_url: str) -> None:
    with LoopbackSmtpServer(faults=Faults(data_end_delay=DATA_END_DELAY)) as server:
        cfg = write_config(tmp_path, db_url, server.port)
        worker = start_run(cfg)
        try:
            # Kill right after the server took a message and before it acknowledged it.
            wait_for("the first messages", lambda: len(server.messages) >= 6)
            worker.send_signal(signal.SIGKILL)
        finally:
            worker.wait(10)
        assert worker.returncode == -signal.SIGKILL
        got_before = len(server.messages)
        assert got_before < N, "the worker finished before it could be killed"
        deadline = lease_deadline(db_url)
        assert deadline is not None, "nothing was in flight when the worker died"
        time.sleep(max(0.0, (deadline - datetime.now(UTC)).total_seconds()) + 0.3)

        server.faults.data_end_delay = 0.0  # the recovery run need not be slow
        summary = run(cfg)
        stats = check_proof(db_url, server)  # every attempt sent, exactly once recorded
        # the message on the wire at the kill went out twice, attributably
        assert stats["duplicates"] >= 1 and stats["unknown"] >= stats["duplicates"]
        assert len(server.messages) == N + stats["duplicates"]
        assert summary["send"].startswith(f"{len(server.messages) - got_before} sent")


def test_sigterm_finishes_in_flight_and_releases_the_rest(tmp_path: Path, sqlite_url: str) -> None:
    db_url = sqlite_url
    with LoopbackSmtpServer(faults=Faults(data_end_delay=DATA_END_DELAY)) as server:
        cfg = write_config(tmp_path, db_url, server.port)
        worker = start_run(cfg)
        try:
            wait_for("the first messages", lambda: len(server.messages) >= 4)
            worker.send_signal(signal.SIGTERM)
            out, err = worker.communicate(timeout=30)
        finally:
            if worker.poll() is None:
                worker.kill()
                worker.wait()
        assert worker.returncode == 0, err
        send = {r["stage"]: r["result"] for r in json.loads(out)}["send"]
        attempts, kinds = history(db_url)
        states = Counter(a.state for a in attempts.values())
        received = len(server.messages)
        # everything that reached the server was recorded as sent; nothing is in limbo
        assert states["sent"] == received and states["sending"] == 0, states
        assert states["queued"] == N - received > 0, states
        assert send.startswith(f"{received} sent"), send
        for a in attempts.values():
            k = kinds[a.id]
            assert "unknown" not in k
            if a.state == "queued":  # claimed, never sent: its try_started is answered
                assert k[-2:] == ["try_started", "released"], k
            else:
                assert k[-2:] == ["try_started", "sent"], k

        # the next run sends the rest, each exactly once
        server.faults.data_end_delay = 0.0
        run(cfg)
        stats = check_proof(db_url, server)
        assert stats["duplicates"] == 0 and stats["unknown"] == 0
        assert stats["released"] == N - received
        assert len(server.messages) == N
