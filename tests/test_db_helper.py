"""``[dispatch] db_process``: the dispatcher's database work in a helper process.

The promises: the same outcome, proof and files as with the work in a thread (and none of the
database writes in the main process); a helper that dies stops the run without losing an
attempt (recovery takes over, as after any crash); a main process that dies takes its helper
with it; a Ctrl-C reaching the helper does not stop it; a helper that cannot start says why.
"""

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
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from channels.base import Channel, Permanent, Prepared, Receipt, Transient
from outreach.app import App
from outreach.db_helper import (
    _FROM_HELPER,
    _TO_HELPER,
    DbHelper,
    HelperFailed,
    _dumps,
    _jobs,
    _loads,
    portable,
)
from outreach.dispatch import Dispatcher, DispatchPolicy, Job, Outcome
from outreach.proof import all_chains, verify_chain
from outreach.store import Attempt, Event

ROOT = Path(__file__).resolve().parent.parent


def _planned(folder: Path, database: str | None = None) -> App:
    """The example config in ``folder``, synced, discovered and planned: attempts queued."""
    folder.mkdir()
    config = folder / "outreach.toml"
    text = (ROOT / "config.example.toml").read_text(encoding="utf-8")
    if database is not None:
        default = 'url = "sqlite:///var/outreach.db"'
        assert default in text
        text = text.replace(default, f'url = "{database}"', 1)
    config.write_text(text, encoding="utf-8")
    app = App.open(config)
    app.sync()
    app.discover()
    app.plan()
    return app


@pytest.fixture
def twins(tmp_path: Path) -> Iterator[tuple[App, App]]:
    a, b = _planned(tmp_path / "thread"), _planned(tmp_path / "helper")
    yield a, b
    a.close()
    b.close()


def _kinds(app: App) -> Counter[tuple[str, str]]:
    with app.sessions() as s:
        rows = s.execute(sa.select(Event.chain, Event.kind)).all()
    return Counter((chain, kind) for chain, kind in rows)


def _states(app: App) -> list[tuple[str, str, str]]:
    with app.sessions() as s:
        rows = s.execute(
            sa.select(Attempt.channel, Attempt.recipient, Attempt.state).order_by(Attempt.id)
        ).all()
    return [tuple(r) for r in rows]


def _files(app: App) -> dict[str, bytes]:
    var = app.config.source_path.parent / "var"
    return {
        str(p.relative_to(var)): p.read_bytes()
        for p in sorted(var.rglob("*"))
        if p.is_file() and p.suffix != ".db" and "outreach.db" not in p.name
    }


def _verify(app: App) -> None:
    with app.sessions() as s:
        chains = all_chains(s)
        assert chains
        assert all(verify_chain(s, c).problem is None for c in chains)


async def _run(app: App, channels: dict[str, Channel] | None = None, **kw: Any) -> Any:
    d = app.dispatcher(channels or app.build_channels(os.environ), **kw)
    try:
        return await d.run_once()
    finally:
        await d.aclose()


async def test_the_helper_dispatches_exactly_as_the_thread_does(twins: tuple[App, App]) -> None:
    thread, helped = twins
    inserts: list[str] = []

    @sa.event.listens_for(helped.engine, "before_cursor_execute")
    def _seen(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if statement.lstrip().upper().startswith(("INSERT", "UPDATE")):
            inserts.append(statement)

    by_thread = await _run(thread, helper=False)
    by_helper = await _run(helped, helper=True)
    assert helped._helper is not None and helped._helper.pid not in (None, os.getpid())
    assert by_thread.sent > 0
    assert (by_helper.sent, by_helper.pending, by_helper.failed, by_helper.errors) == (
        by_thread.sent,
        by_thread.pending,
        by_thread.failed,
        by_thread.errors,
    )
    assert _states(helped) == _states(thread)
    assert _kinds(helped) == _kinds(thread)
    assert len(_files(helped)) == len(_files(thread)) > 0  # (names carry random keys)
    _verify(helped)
    # every claim, proof and record was written by the helper, none by this process
    assert inserts == []


@pytest.mark.postgres
def test_the_helper_on_postgresql(tmp_path: Path, pg_url: str) -> None:
    app = _planned(tmp_path / "pg", database=pg_url)
    try:
        assert app.engine.dialect.name == "postgresql"
        report = asyncio.run(_run(app, helper=True))
        assert report.sent > 0 and not report.errors
        assert {state for _, _, state in _states(app)} <= {"sent", "pending", "queued"}
        _verify(app)
    finally:
        app.close()


def test_values_cross_the_pipe_unchanged() -> None:
    moments = [
        datetime(2026, 11, 23, 8, 0, 0, 123456, tzinfo=UTC),
        datetime(2026, 11, 23, 16, 0, tzinfo=timezone(timedelta(hours=8))),
        datetime(2026, 11, 23, 8, 0),  # naive: not ours, but must not be altered either
    ]
    back = _loads(_dumps(moments, _FROM_HELPER))
    assert back == moments
    assert [m.tzinfo for m in back] == [UTC, timezone(timedelta(hours=8)), None]

    # a job goes back to the helper as its attempt id: the helper's own copy is used, with
    # the main process's try number
    job = Job(1, 2, "case:X", "outbox", 3, _prepared(), try_number=1, claims=1)
    mine = Job(1, 2, "case:X", "outbox", 3, _prepared(), try_number=1, claims=1)
    _jobs[1] = mine
    try:
        job.try_number = 3
        outcome = Outcome(job, "sent", at=moments[0], tries=2)
        back_outcome = _loads(_dumps(outcome, _TO_HELPER))
        assert back_outcome.job is mine and mine.try_number == 3
        assert back_outcome.at == moments[0] and back_outcome.tries == 2
    finally:
        _jobs.pop(1, None)


class _OddTransient(Transient):
    """A channel's own failure type, with an __init__ pickle cannot call back."""

    def __init__(self, status: int, what: str) -> None:
        super().__init__(f"{what}: HTTP {status}", code=str(status), retry_after=7.0)


class _HoldsALock(Exception):
    def __init__(self) -> None:
        super().__init__("gateway client broke")
        self.lock = threading.Lock()  # does not pickle
        self.code = 42


def test_failures_cross_the_pipe_as_the_records_need_them() -> None:
    odd = portable(_OddTransient(429, "gw"))
    assert type(odd) is Transient and odd.detail == "gw: HTTP 429"
    assert (odd.code, odd.retry_after) == ("429", 7.0)
    held = _loads(_dumps(Outcome(_job_for_wire(), "unknown", error=_HoldsALock()), _FROM_HELPER))
    assert held.error.detail == "_HoldsALock: gateway client broke"  # the thread's own text
    assert held.error.code == "42"
    plain = Permanent("550 no such user", code="550", bad_recipient=True)
    assert portable(plain) is plain


def _job_for_wire() -> Job:
    return Job(1, 2, "case:X", "outbox", 3, _prepared(), try_number=1, claims=1)


def _prepared() -> Prepared:
    from channels.base import Outgoing

    out = Outgoing(
        channel="outbox",
        kind="sms",
        recipient="+8613900000001",
        recipient_name=None,
        subject=None,
        body="正文",
        reference="OUT-2026-000001",
        idempotency_key="k1",
        notice_kind="cancellation_request",
        language="zh-CN",
        created_at=datetime(2026, 11, 23, tzinfo=UTC),
    )
    return Prepared(out, b"x", "text/plain")


class _KillsHelper:
    """The outbox channel, except that its first send kills the database helper first."""

    def __init__(self, inner: Channel, helper: DbHelper) -> None:
        self.inner = inner
        self.helper = helper
        self.name = inner.name
        self.adapter = inner.adapter
        self.kinds = inner.kinds
        self.sent = 0

    def prepare(self, msg: Any) -> Prepared:
        return self.inner.prepare(msg)

    async def send(self, prepared: Prepared) -> Receipt:
        if self.sent == 0 and self.helper.pid is not None:
            os.kill(self.helper.pid, signal.SIGKILL)
            await asyncio.sleep(0.2)
        self.sent += 1
        return await self.inner.send(prepared)

    async def aclose(self) -> None:
        await self.inner.aclose()


@pytest.fixture
def planned(tmp_path: Path) -> Iterator[App]:
    app = _planned(tmp_path / "x")
    yield app
    app.close()


async def test_a_helper_that_dies_stops_the_run_and_recovery_takes_over(planned: App) -> None:
    app = planned
    if True:
        channels = app.build_channels(os.environ)
        d = app.dispatcher(channels, helper=True)
        assert d.helper is not None
        channels["outbox"] = _KillsHelper(channels["outbox"], d.helper)
        d.channels = channels
        # outcomes could not be recorded, nor the next batch claimed: the run ends, and says why
        with pytest.raises(HelperFailed, match="database helper process stopped"):
            await d.run_once()
        await d.aclose()
        stuck = [a for a in _attempts(app) if a.state == "sending"]
        assert stuck  # claimed, try_started chained, outcome never recorded

        later = datetime.now(UTC) + timedelta(seconds=DispatchPolicy().lease_seconds + 1)
        again = Dispatcher(app.sessions, app.build_channels(os.environ), now=lambda: later)
        result = await again.run_once()
        await again.aclose()
        assert result.recovered == len(stuck)
        assert not [a for a in _attempts(app) if a.state == "sending"]
        _verify(app)


def _attempts(app: App) -> list[Attempt]:
    with app.sessions() as s:
        return list(s.scalars(sa.select(Attempt).order_by(Attempt.id)))


_PARENT = """
import os, sys, time
from pathlib import Path
from outreach.app import App
app = App.open(Path(sys.argv[1]), migrate=False)
d = app.dispatcher(app.build_channels(os.environ), helper=True)
print(d.helper.pid, flush=True)
time.sleep(600)
"""


def _gone(pid: int, within: float) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        with open(f"/proc/{pid}/stat") as f:
            if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                return True
        time.sleep(0.05)
    return False


def test_the_helper_ends_with_its_main_process(tmp_path: Path) -> None:
    app = _planned(tmp_path / "x")
    config = app.config.source_path
    app.close()
    parent = subprocess.Popen(
        [sys.executable, "-c", _PARENT, str(config)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert parent.stdout is not None
        helper = int(parent.stdout.readline())
        os.kill(helper, signal.SIGINT)  # a Ctrl-C for the process group: ignored
        time.sleep(0.3)
        assert not _gone(helper, within=0.1)
        parent.kill()
        parent.wait()
        assert _gone(helper, within=10), "the helper outlived its main process"
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()


def test_a_helper_that_cannot_start_says_why(tmp_path: Path) -> None:
    app = _planned(tmp_path / "x")
    try:
        app.config.source_path.write_text("[database\n", encoding="utf-8")  # now unreadable
        with pytest.raises(HelperFailed, match=r"did not start .*db_process = false"):
            app.dispatcher(app.build_channels(os.environ), helper=True)
    finally:
        app.close()


def test_outreach_run_with_the_helper(example_config: Path) -> None:
    """The real command, `db_process = true` in the config: sends, stops its helper, verifies."""
    text = example_config.read_text(encoding="utf-8")
    assert "db_process = false" in text
    example_config.write_text(text.replace("db_process = false", "db_process = true"), "utf-8")
    run = subprocess.run(
        [sys.executable, "-m", "outreach", "-c", str(example_config), "run", "--json"],
        capture_output=True,
        text=True,
        cwd=example_config.parent,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr
    rows = {r["stage"]: r["result"] for r in json.loads(run.stdout)}
    assert rows["send"].startswith("2 sent")
    verify = subprocess.run(
        [sys.executable, "-m", "outreach", "-c", str(example_config), "audit", "verify"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert verify.returncode == 0 and verify.stdout.startswith("OK:")
