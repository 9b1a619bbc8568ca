"""`outreach worker`: the schedule (interval, cron in a time zone), the example config running
unattended, one worker at a time on SQLite (and a new one after the first is SIGKILLed), a
graceful SIGTERM that lets an in-flight send finish, the optional inbound and anchor stages,
and two workers on PostgreSQL ticking through a simulated month sending every step once."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import UTC, date, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import IO, Any
from zoneinfo import ZoneInfo

import pytest
import sqlalchemy as sa
from click.testing import CliRunner, Result

from outreach import clock
from outreach.app import App
from outreach.cli import main
from outreach.config import InboundConfig, ScheduleConfig
from outreach.proof import all_chains, verify_chain
from outreach.scheduler import Schedule, Worker, lock_path_for
from outreach.store import Attempt, Case, Event, Notice
from tests.test_ladder import write_config

ROOT = Path(__file__).resolve().parent.parent


def outreach(
    cfg: Path, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "outreach", "-c", str(cfg), *args],
        capture_output=True,
        text=True,
        cwd=cfg.parent,
        timeout=60,
        env={**os.environ, **(env or {})},
    )


def start(
    cfg: Path, log: Path, *args: str, env: dict[str, str] | None = None
) -> subprocess.Popen[str]:
    handle: IO[str] = log.open("w")
    return subprocess.Popen(
        [sys.executable, "-m", "outreach", "-c", str(cfg), "worker", *args],
        stdout=handle,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=cfg.parent,
        env={**os.environ, **(env or {})},
    )


def wait_for(what: Callable[[], bool], timeout: float = 30.0, step: float = 0.01) -> None:
    deadline = time.monotonic() + timeout
    while not what():
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting")
        time.sleep(step)


def ticks_in(log: Path) -> int:
    return sum(1 for line in log.read_text().splitlines() if " INFO tick " in line)


# ---------------------------------------------------------------------------- schedule


def test_interval_and_cron_schedules() -> None:
    every = Schedule.from_config(ScheduleConfig(interval="6h"))
    t = datetime(2026, 11, 27, 2, 0, tzinfo=UTC)
    assert every.next_after(t) == t + timedelta(hours=6)
    # Weekdays at 09:00 Beijing time: after Friday 10:00 comes Monday 09:00 (01:00 UTC).
    cron = Schedule.from_config(ScheduleConfig(cron="0 9 * * 1-5", timezone="Asia/Shanghai"))
    friday = datetime(2026, 11, 27, 10, 0, tzinfo=ZoneInfo("Asia/Shanghai"))
    assert cron.next_after(friday) == datetime(2026, 11, 30, 1, 0, tzinfo=UTC)
    # The time zone is the schedule's, not the machine's.
    ny = Schedule.from_config(ScheduleConfig(cron="0 9 * * *", timezone="America/New_York"))
    assert ny.next_after(datetime(2026, 7, 1, 0, 0, tzinfo=UTC)) == datetime(
        2026, 7, 1, 13, 0, tzinfo=UTC
    )
    with pytest.raises(ValueError, match=r"schedule\.cron"):
        # model_construct: the scheduler checks on its own, whatever the config model checks
        Schedule.from_config(ScheduleConfig.model_construct(cron="every monday", interval=None))
    with pytest.raises(ValueError, match=r"schedule\.timezone"):
        Schedule.from_config(ScheduleConfig.model_construct(timezone="Mars/Olympus"))


def test_lock_lives_next_to_a_sqlite_file_only() -> None:
    assert lock_path_for("sqlite:////srv/o/outreach.db") == Path("/srv/o/outreach.db.worker.lock")
    assert lock_path_for("sqlite:///:memory:") is None
    assert lock_path_for("postgresql://u@127.0.0.1/o") is None


# ---------------------------------------------------------------------------- the example


def test_example_config_runs_unattended(example_config: Path) -> None:
    proc = outreach(example_config, "worker", "--ticks", "2")
    assert proc.returncode == 0, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if " INFO tick " in line]
    assert len(lines) == 2
    assert "sent 2," in lines[0] and "errors 0" in lines[0]
    assert "planned 0 steps" in lines[1] and "sent 0," in lines[1]
    assert "inbound off" in lines[0] and "anchor off" in lines[0]
    files = [p for p in (example_config.parent / "var" / "outbox").rglob("*") if p.is_file()]
    assert len(files) == 2
    assert (example_config.parent / "var" / "outreach.db.worker.lock").exists()
    app = App.open(example_config)
    try:
        with app.sessions() as s:
            assert all(verify_chain(s, c).problem is None for c in all_chains(s))
    finally:
        app.close()


def test_a_reply_stops_the_workers_ladder(example_config: Path) -> None:
    """The issue's promise: the worker runs the example unattended and a reply stops its case."""
    monday = datetime(2026, 11, 23, 2, 0, tzinfo=UTC)  # 10:00 in Beijing
    app = App.open(example_config)
    try:
        assert asyncio.run(Worker(app, env={}, offline=True, start_at=monday).run(1)) == 0
        outbox = example_config.parent / "var" / "outbox"
        assert len([p for p in outbox.rglob("*") if p.is_file()]) == 2
        app.plan(at=monday + timedelta(days=7))  # the reminder is queued (not yet sent) ...
        with app.sessions.begin() as s:  # ... when the agent's answer is matched (inbound)
            s.scalars(sa.select(Case)).one().state = "replied"
        later = Worker(app, env={}, offline=True, start_at=monday + timedelta(days=7, minutes=15))
        assert asyncio.run(later.run(1)) == 0
        assert asyncio.run(Worker(app, env={}, start_at=monday + timedelta(days=30)).run(1)) == 0
        with app.sessions() as s:
            states = Counter(s.scalars(sa.select(Attempt.state)).all())
            kinds = Counter(s.scalars(sa.select(Event.kind)).all())
        assert states == {"sent": 2, "cancelled": 2}
        assert kinds["attempt_cancelled"] == 2 and kinds["step_planned"] == 2
        assert len([p for p in outbox.rglob("*") if p.is_file()]) == 2
    finally:
        app.close()


def cli(cfg: Path, *args: str) -> Result:
    return CliRunner().invoke(main, ["-c", str(cfg), *args])


def test_worker_usage_and_config_errors(example_config: Path) -> None:
    no_ticks = cli(example_config, "worker", "--at", "2026-11-23")
    assert no_ticks.exit_code == 2 and "--ticks" in no_ticks.output
    both = cli(example_config, "worker", "--once", "--ticks", "3")
    assert both.exit_code == 2 and "contradict" in both.output
    text = example_config.read_text().replace('interval = "15m"', 'cron = "every monday"')
    example_config.write_text(text)
    bad = cli(example_config, "worker", "--once")
    assert bad.exit_code == 2 and "schedule.cron" in bad.output
    helped = cli(example_config, "worker", "--help")
    assert helped.exit_code == 0 and "SIGTERM" in helped.output


# ---------------------------------------------------------------------------- one worker on SQLite


def test_sqlite_second_worker_refuses_until_the_first_dies(
    example_config: Path, tmp_path: Path
) -> None:
    log = tmp_path / "first.log"
    first = start(example_config, log)
    try:
        wait_for(lambda: ticks_in(log) >= 1)
        # The second worker (here in-process: flock conflicts between processes alike).
        second = cli(example_config, "worker", "--once")
        assert second.exit_code == 1
        assert "another worker is running" in second.output
        assert f"pid {first.pid} " in second.output
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=10)
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    # The kernel released the lock with the process: no stale lock to wait out.
    third = cli(example_config, "worker", "--once")
    assert third.exit_code == 0, third.output


# ---------------------------------------------------------------------------- graceful stop


class SlowReceiver:
    """A webhook receiver on loopback that answers 200 after ``delay`` seconds."""

    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.received = threading.Event()
        self.answered = threading.Event()
        self.bodies: list[bytes] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                outer.bodies.append(self.rfile.read(int(self.headers["Content-Length"])))
                outer.received.set()
                time.sleep(outer.delay)
                self.send_response(200)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")
                outer.answered.set()

            def log_message(self, *args: Any) -> None:
                return None

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/hook"

    def __enter__(self) -> SlowReceiver:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()


def test_sigterm_lets_the_send_in_flight_finish(tmp_path: Path) -> None:
    with SlowReceiver(delay=1.5) as receiver:
        cfg = write_config(
            tmp_path,
            [{"after": 0, "to": "agent", "via": ["webhook"], "template": "cancellation_request"}],
            [("c", "hooked", (clock.today() - timedelta(days=30)).isoformat())],
            channels='[channels.hook]\nadapter = "webhook"\nsecret_env = "HOOK_SECRET"\nallow_http = true',
            extra=f'[parties.hooked]\nrole = "agent"\nname = "接口代理商"\n'
            f'  [[parties.hooked.contacts]]\n  kind = "webhook"\n  value = "{receiver.url}"\n',
            schedule='interval = "1h"',
        )
        log = tmp_path / "worker.log"
        worker = start(cfg, log, "--offline", env={"HOOK_SECRET": "whsec-test"})
        try:
            assert receiver.received.wait(30), log.read_text()
            assert not receiver.answered.is_set()
            worker.send_signal(signal.SIGTERM)
            assert worker.wait(timeout=30) == 0, log.read_text()
        finally:
            if worker.poll() is None:
                worker.kill()
                worker.wait()
        assert receiver.answered.is_set()
    text = log.read_text()
    assert "stopping: finishing the sends in flight" in text and "stopped" in text
    assert "sent 1," in text
    app = App.open(cfg)
    try:
        with app.sessions() as s:
            assert s.scalars(sa.select(Attempt.state)).all() == ["sent"]
            kinds = s.scalars(sa.select(Event.kind).where(Event.attempt_id.is_not(None))).all()
        assert kinds == ["attempt_queued", "try_started", "sent"]
    finally:
        app.close()


# ---------------------------------------------------------------------------- optional stages


def test_inbound_and_anchor_stages_are_called_when_present(
    example_config: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[tuple[str, Any]] = []

    async def poll(sessions: Any, config: Any, *, env: Any, now: Callable[[], datetime]) -> Any:
        calls.append(("poll", now()))
        return SimpleNamespace(fetched=3, replies=1, bounces=0)

    async def anchor_due(sessions: Any, proof: Any, client: Any, *, now: datetime) -> Any:
        calls.append(("anchor", now))
        return SimpleNamespace(anchored=2, error=None)

    fake_inbound = ModuleType("outreach.inbound")
    fake_inbound.poll = poll  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "outreach.inbound", fake_inbound)
    import outreach.anchor

    monkeypatch.setattr(outreach.anchor, "anchor_due", anchor_due)
    app = App.open(example_config)
    inbound = InboundConfig(imap_host="127.0.0.1", username="u", password_env="IMAP_PASSWORD")
    proof = app.config.proof.model_copy(update={"tsa_urls": ["http://127.0.0.1:9/tsa"]})
    app.config = app.config.model_copy(update={"inbound": inbound, "proof": proof})
    start_at = datetime(2026, 11, 23, 2, 0, tzinfo=UTC)
    try:
        worker = Worker(app, env={}, offline=True, start_at=start_at)
        assert asyncio.run(worker.run(2)) == 0
    finally:
        app.close()
    assert calls == [
        ("poll", start_at),
        ("anchor", start_at),
        ("poll", start_at + timedelta(minutes=15)),
        ("anchor", start_at + timedelta(minutes=15)),
    ]


def test_missing_stages_are_skipped_with_one_note(
    example_config: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setitem(sys.modules, "outreach.inbound", ModuleType("outreach.inbound"))
    import outreach.anchor

    monkeypatch.delattr(outreach.anchor, "anchor_due", raising=False)
    app = App.open(example_config)
    inbound = InboundConfig(imap_host="127.0.0.1", username="u", password_env="IMAP_PASSWORD")
    proof = app.config.proof.model_copy(update={"tsa_urls": ["http://127.0.0.1:9/tsa"]})
    app.config = app.config.model_copy(update={"inbound": inbound, "proof": proof})
    caplog.set_level("INFO", logger="outreach.worker")
    try:
        worker = Worker(app, env={}, offline=True, start_at=datetime(2026, 11, 23, tzinfo=UTC))
        assert asyncio.run(worker.run(3)) == 0
    finally:
        app.close()
    notes = [r.getMessage() for r in caplog.records if r.getMessage().endswith("is missing")]
    assert notes == [
        "inbound polling skipped: outreach.inbound.poll is missing",
        "anchoring skipped: outreach.anchor.anchor_due is missing",
    ]
    assert all(
        "anchor missing" in r.getMessage() for r in caplog.records if " tick " in r.getMessage()
    )


# ---------------------------------------------------------------------------- PostgreSQL


@pytest.fixture
def clock_file(tmp_path: Path) -> Iterator[Callable[[datetime], None]]:
    path = tmp_path / "clock"

    def set_to(moment: datetime) -> None:
        tmp = path.with_suffix(".tmp")
        tmp.write_text(moment.isoformat())
        os.replace(tmp, path)  # a worker never reads half a timestamp

    set_to.path = path  # type: ignore[attr-defined]
    yield set_to


@pytest.mark.postgres
def test_two_workers_on_postgres_send_every_step_exactly_once(
    pg_url: str, tmp_path: Path, clock_file: Callable[[datetime], None]
) -> None:
    both = {"after": 0, "to": "agent", "via": ["email", "sms"], "template": "cancellation_request"}
    steps = [
        both,
        {**both, "after": 3, "template": "reminder"},
        {"after": 5, "to": "acquirer", "via": ["email"], "template": "complaint_acquirer"},
        {"after": 5, "to": "association", "via": ["email"], "template": "complaint_regulator"},
    ]
    cases = [
        ("a", "agent", "2026-09-01"),
        ("b", "solo", "2026-09-02"),
        ("c", "agent", "2026-09-03"),
        ("d", "solo", "2026-09-04"),
    ]
    # Twice a day, 09:00 and 15:00 Beijing time: 61 ticks from 2026-09-01 to 2026-10-01.
    schedule = 'cron = "0 9,15 * * *"\ntimezone = "Asia/Shanghai"'
    cfg = write_config(tmp_path, steps, cases, database=pg_url, schedule=schedule)
    cron = Schedule.from_config(ScheduleConfig(cron="0 9,15 * * *"))
    moments = [datetime(2026, 9, 1, 9, tzinfo=clock.CST).astimezone(UTC)]
    while len(moments) < 61:
        moments.append(cron.next_after(moments[-1]))
    assert moments[-1] == datetime(2026, 10, 1, 1, tzinfo=UTC)  # 2026-10-01 09:00 CST
    app = App.open(cfg)  # migrate before the workers start (`outreach db upgrade` in production)
    app.close()
    clock_file(moments[0])
    env = {"OUTREACH_FAKE_CLOCK_FILE": str(clock_file.path)}  # type: ignore[attr-defined]
    ticks = len(moments)
    logs = [tmp_path / "w1.log", tmp_path / "w2.log"]
    args = ("--offline", "--discover-every", "7d", "--ticks", str(ticks))
    workers = [start(cfg, log, *args, env=env) for log in logs]
    try:
        for k in range(1, ticks):
            wait_for(lambda k=k: all(ticks_in(log) >= k for log in logs))
            clock_file(moments[k])
        codes = [w.wait(timeout=60) for w in workers]
    finally:
        for w in workers:
            if w.poll() is None:
                w.kill()
                w.wait()
    assert codes == [0, 0], [log.read_text()[-2000:] for log in logs]
    assert [ticks_in(log) for log in logs] == [ticks, ticks]

    expected_attempts = 4 * (2 + 2 + 1 + 1)  # per case: both kinds twice, then one e-mail twice
    files = [p for p in (tmp_path / "var" / "outbox").rglob("*") if p.is_file()]
    app = App.open(cfg)
    try:
        with app.sessions() as s:
            kinds = Counter(s.scalars(sa.select(Event.kind)).all())
            missing = [
                json.loads(e.body)["data"]
                for e in s.scalars(
                    sa.select(Event).where(Event.kind.in_(("step_planned", "no_channel")))
                )
            ]
            assert len(files) == expected_attempts, (dict(kinds), missing)
            rows = s.scalars(sa.select(Attempt)).all()
            notices = s.scalars(sa.select(Notice)).all()
            workers_seen = Counter(
                json.loads(e.body)["data"]["worker"]
                for e in s.scalars(sa.select(Event).where(Event.kind == "try_started"))
            )
            assert all(verify_chain(s, c).problem is None for c in all_chains(s))
        assert len(notices) == 4 * 4 and kinds["step_planned"] == 16
        assert kinds["attempt_queued"] == kinds["try_started"] == kinds["sent"] == expected_attempts
        assert kinds["unknown"] == 0 and kinds["failed"] == 0
        assert {(a.state, a.tries) for a in rows} == {("sent", 1)}
        keys = sorted(a.idempotency_key for a in rows)
        assert len(set(keys)) == expected_attempts
        assert sorted(p.name.split("-", 1)[1].split(".")[0] for p in files) == keys
        last_planned = max(n.created_at for n in notices)
        assert last_planned.astimezone(clock.CST).date() <= date(2026, 9, 30)
        print(f"try_started per worker: {dict(workers_seen)}")
    finally:
        app.close()
