"""The dispatcher's promises: payload chained before sending, retries counted and chained,
permanent failures mark the contact bad, unknown outcomes re-send the same bytes with the same
key, a crash mid-send is recovered as ``unknown``, a stop releases what was not sent.

And its robustness: batches pipelined under per-channel concurrency, caps counted within a
batch and over a sliding window, bulk chaining identical to ``record_event``, leases renewed
during long sends and fenced when lost, adapter bugs and database failures handled without
losing or misreporting an attempt, deadlocks retried."""

from __future__ import annotations

import asyncio
import json
import secrets
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any, ClassVar

import pytest
import sqlalchemy as sa

from channels.base import Outgoing, Permanent, Prepared, RateLimit, Receipt, Transient, Unknown
from outreach.app import App
from outreach.dispatch import Dispatcher, DispatchPolicy, DispatchReport, Outcome
from outreach.proof import (
    NewEvent,
    all_chains,
    append_events,
    event_body,
    event_hash,
    format_at,
    record_event,
    verify_chain,
)
from outreach.ratelimit import earliest_allowed
from outreach.retry import Backoff, db_retryable
from outreach.store import Attempt, Case, ContactPoint, Event, Merchant, Notice, Party


class Scripted:
    """A channel whose sends follow a script of outcomes; records every payload it got."""

    adapter: ClassVar[str] = "scripted"
    kinds: ClassVar[frozenset[str]] = frozenset({"email", "sms"})

    def __init__(self, name: str, script: list[Any]) -> None:
        self.name = name
        self.script = list(script)
        self.sent: list[Prepared] = []

    def prepare(self, msg: Outgoing) -> Prepared:
        payload = json.dumps(
            {"to": msg.recipient, "key": msg.idempotency_key, "body": msg.body}, ensure_ascii=False
        ).encode()
        return Prepared(msg, payload, "application/json", f"<{msg.idempotency_key}@test>")

    async def send(self, prepared: Prepared) -> Receipt:
        self.sent.append(prepared)
        step = self.script.pop(0) if self.script else "ok"
        if isinstance(step, Exception):
            raise step
        return Receipt(
            accepted=True,
            provider_id=f"id-{len(self.sent)}",
            response=b"250 ok",
            transcript={"n": len(self.sent)},
        )

    async def aclose(self) -> None:
        return None


@pytest.fixture
def app(example_config: Path) -> Iterator[App]:
    a = App.open(example_config)
    a.sync()
    a.discover()
    a.plan()
    yield a
    a.close()


def _dispatcher(
    app: App, script: list[Any], *, now: Any = None, limits: Any = None, **policy: Any
) -> tuple[Dispatcher, Scripted]:
    channel = Scripted("outbox", script)
    pol = DispatchPolicy(backoff=Backoff(base=0.0, jitter=0.0), **policy)
    slept: list[float] = []

    async def sleep(s: float) -> None:
        slept.append(s)

    d = Dispatcher(
        app.sessions,
        {"outbox": channel},
        pol,
        limits=limits,
        concurrency={"outbox": 1},  # one send at a time: the script is consumed in claim order
        sleep=sleep,
        **({"now": now} if now else {}),
    )
    d.slept = slept  # type: ignore[attr-defined]
    return d, channel


def _events(app: App, kind: str | None = None) -> list[dict[str, Any]]:
    with app.sessions() as s:
        rows = s.scalars(sa.select(Event).order_by(Event.id)).all()
    out = [json.loads(e.body) for e in rows]
    return [e for e in out if kind is None or e["kind"] == kind]


def _attempts(app: App) -> list[Attempt]:
    with app.sessions() as s:
        return list(s.scalars(sa.select(Attempt).order_by(Attempt.id)))


async def test_success_chains_payload_before_and_outcome_after(app: App) -> None:
    d, channel = _dispatcher(app, ["ok", "ok"])
    report = await d.run_once()
    assert report.sent == 2
    started = _events(app, "try_started")
    sent = _events(app, "sent")
    assert len(started) == 2 and len(sent) == 2
    for prepared in channel.sent:
        import hashlib

        digest = hashlib.sha256(prepared.payload).hexdigest()
        assert any(e["data"]["payload_sha256"] == digest for e in started)
    kinds = [e["kind"] for e in _events(app) if e["chain"].startswith("case:")]
    assert kinds.index("try_started") < kinds.index("sent")
    assert {a.state for a in _attempts(app)} == {"sent"}


async def test_transient_errors_retry_in_place_and_each_try_is_chained(app: App) -> None:
    d, channel = _dispatcher(
        app, [Transient("451 busy", code="451", retry_after=7.0), "ok", "ok"], max_tries=3
    )
    report = await d.run_once()
    assert report.sent == 2
    assert len(channel.sent) == 3
    assert channel.sent[0].payload == channel.sent[1].payload  # the same bytes again
    assert d.slept == [7.0]  # type: ignore[attr-defined]  # Retry-After honoured
    failed = _events(app, "try_failed")
    assert len(failed) == 1 and failed[0]["data"]["code"] == "451"
    tries = sorted(a.tries for a in _attempts(app))
    assert tries == [1, 2]


async def test_transient_beyond_max_tries_reschedules(app: App) -> None:
    boom = Transient("421 down", code="421")
    d, _ = _dispatcher(app, [boom, boom, "ok"], max_tries=2, reschedule_after=600)
    report = await d.run_once()
    assert report.rescheduled == 1 and report.sent == 1
    retry = [a for a in _attempts(app) if a.state == "retry"]
    assert len(retry) == 1 and retry[0].next_try_at > datetime.now(UTC) + timedelta(seconds=500)


async def test_permanent_marks_contact_bad(app: App) -> None:
    d, _ = _dispatcher(app, [Permanent("550 5.1.1 no such user", code="550"), "ok"])
    report = await d.run_once()
    assert report.failed == 1 and report.sent == 1
    with app.sessions() as s:
        bad = s.scalars(sa.select(ContactPoint).where(ContactPoint.status == "bad")).all()
    assert len(bad) == 1
    assert _events(app, "contact_bad")[0]["data"]["reason"] == "550 5.1.1 no such user"


async def test_permanent_config_error_leaves_contact_alone(app: App) -> None:
    d, _ = _dispatcher(app, [Permanent("template not approved", bad_recipient=False), "ok"])
    await d.run_once()
    with app.sessions() as s:
        assert s.scalar(sa.select(sa.func.count()).where(ContactPoint.status == "bad")) == 0


async def test_unknown_resends_same_bytes_with_same_key(app: App) -> None:
    clock = [datetime.now(UTC)]
    d, channel = _dispatcher(
        app,
        [Unknown("disconnected after DATA"), "ok", "ok"],
        now=lambda: clock[0],
        reschedule_after=60,
    )
    first = await d.run_once()
    assert first.unknown == 1 and first.sent == 1
    clock[0] += timedelta(seconds=61)
    second = await d.run_once()
    assert second.sent == 1
    assert channel.sent[0].payload == channel.sent[2].payload
    assert channel.sent[0].message_id == channel.sent[2].message_id
    # the duplicate follows an `unknown` in the chain
    kinds = [e["kind"] for e in _events(app) if e["data"].get("attempt") == _attempts(app)[0].id]
    assert kinds[-3:] == ["unknown", "try_started", "sent"]


async def test_crash_mid_send_is_recovered_as_unknown_and_resent(app: App) -> None:
    t0 = datetime.now(UTC)
    d, channel = _dispatcher(app, [], now=lambda: t0, lease_seconds=30)
    jobs = d.claim(DispatchReport())  # the worker claims and records try_started... then dies
    assert len(jobs) == 2 and not channel.sent
    later = t0 + timedelta(seconds=31)
    d2, channel2 = _dispatcher(app, [], now=lambda: later)
    result = await d2.run_once()
    assert result.recovered == 2 and result.sent == 2
    unknown = _events(app, "unknown")
    assert len(unknown) == 2 and "interrupted" in unknown[0]["data"]["reason"]
    assert {a.state for a in _attempts(app)} == {"sent"}
    assert {p.outgoing.idempotency_key for p in channel2.sent} == {
        j.prepared.outgoing.idempotency_key for j in jobs
    }


async def test_stop_releases_what_was_not_sent(app: App) -> None:
    d, channel = _dispatcher(app, [])
    d.request_stop()
    jobs = d.claim(DispatchReport())
    import asyncio

    q: asyncio.Queue[Any] = asyncio.Queue()
    for job in jobs:
        await d._send(job, q)
    report = DispatchReport()
    d._write_outcomes([q.get_nowait() for _ in jobs], report)
    assert report.released == 2 and not channel.sent
    assert {a.state for a in _attempts(app)} == {"queued"}
    assert len(_events(app, "released")) == 2


async def test_per_recipient_rate_limit_defers(app: App) -> None:
    d, channel = _dispatcher(app, [], limits={"outbox": [RateLimit(1, 3600)]})
    await d.run_once()
    assert len(channel.sent) == 2
    # re-queue both: a second send to the same recipients within the hour must wait
    with app.sessions.begin() as s:
        s.execute(sa.update(Attempt).values(state="queued"))
    d2, channel2 = _dispatcher(app, [], limits={"outbox": [RateLimit(1, 3600)]})
    report = await d2.run_once()
    assert report.deferred == 2 and not channel2.sent
    assert len(_events(app, "deferred")) == 2


async def test_chains_verify_after_a_busy_dispatch(app: App) -> None:
    d, _ = _dispatcher(app, [Transient("x"), Unknown("y"), "ok"], max_tries=2)
    await d.run_once()
    with app.sessions() as s:
        chains = s.scalars(sa.select(Event.chain).distinct()).all()
        assert all(verify_chain(s, c).problem is None for c in chains)


# ---------------------------------------------------------------------- a bigger queue


def seed(app: App, recipients: list[str], *, channel: str = "gw", kind: str = "sms") -> None:
    """One case, notice and queued attempt per entry of ``recipients``, in that order (no
    ladder: these tests are about what happens after planning)."""
    now = datetime.now(UTC)
    with app.sessions.begin() as s:
        merchant = Merchant(key="m", name="深圳市福田区张三便利店", merchant_no="822584053990001")
        party = Party(key="agent", role="agent", name="深圳某某支付服务有限公司")
        s.add_all([merchant, party])
        s.flush()
        contacts = {}
        for value in sorted(set(recipients)):
            cp = ContactPoint(party_id=party.id, kind=kind, value=value, status="unknown")
            s.add(cp)
            contacts[value] = cp
        s.flush()
        for i, value in enumerate(recipients):
            case = Case(
                key=f"c{i}",
                reference=f"OUT-2026-{i + 1:06d}",
                merchant_id=merchant.id,
                goal="cancel_terminal",
                plan="p",
                opened_on=now.date(),
            )
            s.add(case)
            s.flush()
            notice = Notice(
                case_id=case.id,
                step=0,
                party_id=party.id,
                template="cancellation_request",
                language="zh-CN",
                subject=f"终端注销申请 {case.reference}",
                body=f"【商户】关于终端 12345678 的注销申请，案号 {case.reference}，请答复。",
                html=None,
                sms_params={"reference": case.reference},
                sha256="0" * 64,
                deadline=date(2026, 12, 7),
            )
            s.add(notice)
            s.flush()
            s.add(
                Attempt(
                    notice_id=notice.id,
                    contact_point_id=contacts[value].id,
                    channel=channel,
                    kind=kind,
                    recipient=value,
                    state="queued",
                    next_try_at=now,
                    idempotency_key=secrets.token_hex(8),
                    created_at=now,
                    updated_at=now,
                )
            )


@pytest.fixture
def bare(tmp_path: Path) -> Iterator[App]:
    """An installation with a schema and nothing else: tests seed their own queue."""
    cfg = tmp_path / "outreach.toml"
    cfg.write_text(
        f'[database]\nurl = "sqlite:///{tmp_path / "o.db"}"\n[sender]\nname = "张三"\n',
        encoding="utf-8",
    )
    a = App.open(cfg)
    yield a
    a.close()


class Gauge(Scripted):
    """Counts sends in flight at once; each send takes ``seconds``."""

    def __init__(self, name: str, seconds: float = 0.01) -> None:
        super().__init__(name, [])
        self.seconds = seconds
        self.in_flight = 0
        self.peak = 0

    async def send(self, prepared: Prepared) -> Receipt:
        self.in_flight += 1
        self.peak = max(self.peak, self.in_flight)
        try:
            await asyncio.sleep(self.seconds)
            return await super().send(prepared)
        finally:
            self.in_flight -= 1


def _kinds_by_attempt(app: App) -> dict[int, list[str]]:
    out: dict[int, list[str]] = {}
    for e in _events(app):
        if "attempt" in e["data"]:
            out.setdefault(e["data"]["attempt"], []).append(e["kind"])
    return out


def _verify_all(app: App) -> None:
    with app.sessions() as s:
        assert all(verify_chain(s, c).problem is None for c in all_chains(s))


async def test_pipelined_batches_respect_channel_concurrency(bare: App) -> None:
    seed(bare, [f"+86139{i:08d}" for i in range(40)])
    gauge = Gauge("gw")
    d = Dispatcher(bare.sessions, {"gw": gauge}, DispatchPolicy(batch=7), concurrency={"gw": 3})
    report = await d.run_once()
    assert report.sent == 40 and gauge.peak == 3
    assert {a.state for a in _attempts(bare)} == {"sent"}
    assert all(k == ["try_started", "sent"] for k in _kinds_by_attempt(bare).values())
    _verify_all(bare)


async def test_stop_mid_run_finishes_in_flight_and_releases_the_rest(bare: App) -> None:
    seed(bare, [f"+86139{i:08d}" for i in range(20)])
    gauge = Gauge("gw", seconds=0.05)
    d = Dispatcher(bare.sessions, {"gw": gauge}, DispatchPolicy(batch=20), concurrency={"gw": 2})

    async def stop_soon() -> None:
        while len(gauge.sent) < 3:
            await asyncio.sleep(0.005)
        d.request_stop()

    stopper = asyncio.create_task(stop_soon())
    report = await d.run_once()
    await stopper
    sent = len(gauge.sent)
    assert report.sent == sent and report.released == 20 - sent
    states = Counter(a.state for a in _attempts(bare))
    assert states == {"sent": sent, "queued": 20 - sent}
    for kinds in _kinds_by_attempt(bare).values():
        assert kinds in (["try_started", "sent"], ["try_started", "released"])
    _verify_all(bare)


async def test_caps_count_sends_within_one_batch(bare: App) -> None:
    # three attempts to one number in one claim, cap 2 per hour: the third waits
    seed(bare, ["+8613900000001"] * 3 + ["+8613900000002"])
    channel = Scripted("gw", [])
    d = Dispatcher(
        bare.sessions,
        {"gw": channel},
        DispatchPolicy(batch=10),
        limits={"gw": [RateLimit(2, 3600)]},
    )
    report = await d.run_once()
    assert report.sent == 3 and report.deferred == 1
    deferred = _events(bare, "deferred")
    assert len(deferred) == 1
    until = datetime.fromisoformat(deferred[0]["data"]["until"])
    assert timedelta(minutes=59) < until - datetime.now(UTC) <= timedelta(hours=1)


def test_sliding_window_caps() -> None:
    now = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
    minute, hour = RateLimit(1, 60), RateLimit(5, 3600)
    assert earliest_allowed([], [minute, hour], now) is None
    # one send 30 s ago: the per-minute cap waits until it is a minute old
    assert earliest_allowed([now - timedelta(seconds=30)], [minute], now) == now + timedelta(
        seconds=30
    )
    # five sends this hour, the oldest 50 min ago: wait until it leaves the hour
    five = [now - timedelta(minutes=m) for m in (50, 40, 30, 20, 10)]
    assert earliest_allowed(five, [minute, hour], now) == now + timedelta(minutes=10)
    # seven in the window (older caps were lifted meanwhile): the 3rd most recent leaves first
    seven = [now - timedelta(minutes=m) for m in (55, 50, 40, 30, 20, 10, 5)]
    assert earliest_allowed(seven, [hour], now) == now + timedelta(minutes=20)
    # a send exactly one period ago no longer counts
    assert earliest_allowed([now - timedelta(seconds=60)], [minute], now) is None
    # channel-scope caps are not the recipient's business
    assert earliest_allowed(five, [RateLimit(1, 3600, scope="channel")], now) is None


def test_bulk_chaining_is_record_event_byte_for_byte(bare: App) -> None:
    at = datetime(2026, 11, 23, 4, 5, 6, 789, tzinfo=UTC)
    with bare.sessions.begin() as s:
        record_event(s, "case:X", "first", {"n": 1}, at=at)
    with bare.sessions.begin() as s:
        append_events(
            s,
            [
                NewEvent("case:X", "second", {"n": 2, "t": "中文"}, None, None, at),
                NewEvent("case:Y", "new chain", {"n": 1}, None, None, at),
                NewEvent("case:X", "third", {"n": 3}, None, None, at),
            ],
            at,
        )
    with bare.sessions.begin() as s:
        record_event(s, "case:X", "fourth", {"n": 4}, at=at)
    with bare.sessions() as s:
        rows = s.scalars(sa.select(Event).where(Event.chain == "case:X").order_by(Event.seq))
        prev = "0" * 64
        kinds = ["first", "second", "third", "fourth"]
        for seq, (e, kind) in enumerate(zip(rows, kinds, strict=True), 1):
            data = json.loads(e.body)["data"]
            body = event_body("case:X", seq, format_at(at), kind, data)
            assert e.body.encode() == body and e.prev_hash == prev
            assert e.hash == event_hash(prev, body)
            prev = e.hash
        assert all(verify_chain(s, c).problem is None for c in all_chains(s))


async def test_a_long_send_keeps_its_lease(bare: App) -> None:
    seed(bare, ["+8613900000001"])
    slow = Gauge("gw", seconds=1.0)
    d = Dispatcher(bare.sessions, {"gw": slow}, DispatchPolicy(lease_seconds=0.45))
    other = Dispatcher(bare.sessions, {"gw": Scripted("gw", [])}, owner="another-worker")
    run = asyncio.create_task(d.run_once())
    await asyncio.sleep(0.7)  # well past the first lease: only renewals keep it
    assert other.recover() == 0
    report = await run
    assert report.sent == 1 and not _events(bare, "unknown")


async def test_an_outcome_after_the_lease_was_lost_is_chained_as_late(bare: App) -> None:
    seed(bare, ["+8613900000001"])
    t0 = datetime.now(UTC)
    first = Dispatcher(
        bare.sessions, {"gw": Scripted("gw", [])}, DispatchPolicy(lease_seconds=30), now=lambda: t0
    )
    [job] = first.claim(DispatchReport())
    later = t0 + timedelta(seconds=31)
    second = Dispatcher(
        bare.sessions, {"gw": Scripted("gw", [])}, owner="another-worker", now=lambda: later
    )
    assert second.recover() == 1  # `first` looks dead: its try becomes unknown
    # ... but it was only slow, and now reports that the relay took the message
    receipt = Receipt(accepted=True, provider_id="q1", response=b"250 ok")
    report = DispatchReport()
    first._write_outcomes([Outcome(job, "sent", receipt=receipt, at=later)], report)
    assert report.sent == 1
    [a] = _attempts(bare)
    assert a.state == "unknown"  # recovery's decision stands: the next claim re-sends
    late = _events(bare, "sent")[-1]["data"]
    assert "late" in late and late["provider_id"] == "q1"
    assert _kinds_by_attempt(bare)[a.id] == ["try_started", "unknown", "sent"]


class Broken(Scripted):
    def prepare(self, msg: Outgoing) -> Prepared:
        raise RuntimeError("template bug")


async def test_an_adapter_bug_in_prepare_reschedules_instead_of_failing(bare: App) -> None:
    seed(bare, ["+8613900000001"])
    clock = [datetime.now(UTC)]
    d = Dispatcher(
        bare.sessions,
        {"gw": Broken("gw", [])},
        DispatchPolicy(max_claims=2, reschedule_after=60),
        now=lambda: clock[0],
    )
    first = await d.run_once()
    assert first.rescheduled == 1 and first.failed == 0
    assert _attempts(bare)[0].state == "retry"
    clock[0] += timedelta(seconds=61)
    second = await d.run_once()
    assert second.failed == 1 and _attempts(bare)[0].state == "failed"
    data = _events(bare, "failed")[-1]["data"]
    assert data["stage"] == "prepare" and "template bug" in data["error"]


async def test_unrecordable_outcomes_stop_the_run_and_recovery_takes_over(bare: App) -> None:
    seed(bare, [f"+86139{i:08d}" for i in range(24)])
    t0 = datetime.now(UTC)
    gauge = Gauge("gw", seconds=0.05)
    d = Dispatcher(
        bare.sessions,
        {"gw": gauge},
        DispatchPolicy(batch=4, linger_seconds=0),
        concurrency={"gw": 4},
        now=lambda: t0,
    )

    def database_gone(batch: list[Outcome]) -> DispatchReport:
        raise sa.exc.OperationalError("INSERT", {}, Exception("disk I/O error"))

    d.record_outcomes = database_gone  # type: ignore[method-assign]
    report = await d.run_once()
    # nothing counted as sent, since nothing was recorded; claiming stopped after the failure
    assert report.sent == 0 and report.errors
    # what was claimed stays `sending` (its try_started is chained); the rest was never claimed
    stuck = [a for a in _attempts(bare) if a.state == "sending"]
    assert 0 < len(gauge.sent) <= len(stuck) <= 12  # at most two batches waiting + one in flight
    assert sum(a.state == "queued" for a in _attempts(bare)) == 24 - len(stuck)
    later = t0 + timedelta(seconds=DispatchPolicy().lease_seconds + 1)
    again = Dispatcher(bare.sessions, {"gw": Scripted("gw", [])}, now=lambda: later)
    result = await again.run_once()
    assert result.recovered == len(stuck) and result.sent == 24
    _verify_all(bare)


def test_deadlocks_run_the_transaction_again(bare: App) -> None:
    class Deadlock(Exception):
        sqlstate = "40P01"

    d = Dispatcher(bare.sessions, {})
    runs: list[int] = []

    def work(s: Any) -> str:
        runs.append(1)
        if len(runs) < 3:
            raise sa.exc.OperationalError("SELECT", {}, Deadlock("deadlock detected"))
        return "done"

    assert d._transaction(work) == "done" and len(runs) == 3
    assert not db_retryable(sa.exc.IntegrityError("INSERT", {}, Exception("unique")))


def test_a_ladder_pass_that_deadlocks_is_run_again(
    bare: App, monkeypatch: pytest.MonkeyPatch
) -> None:
    """App.plan goes through the same retry as the dispatcher (PostgreSQL workers planning
    at once can deadlock); the first, rolled-back run leaves nothing behind."""

    class Deadlock(Exception):
        sqlstate = "40P01"

    import outreach.app as app_module

    real = app_module.plan_due
    runs: list[int] = []

    def flaky(s: Any, *args: Any, **kw: Any) -> Any:
        runs.append(1)
        if len(runs) == 1:
            s.execute(
                sa.text(
                    "INSERT INTO chains (name, head_seq, head_hash, updated_at) "
                    "VALUES ('leftover', 0, '', '2026-01-01')"
                )
            )
            raise sa.exc.OperationalError("UPDATE", {}, Deadlock("deadlock detected"))
        return real(s, *args, **kw)

    monkeypatch.setattr(app_module, "plan_due", flaky)
    bare.plan()
    assert len(runs) == 2
    with bare.sessions() as s:
        assert s.scalar(sa.text("SELECT count(*) FROM chains WHERE name = 'leftover'")) == 0


async def test_changed_bytes_under_the_same_key_are_flagged(bare: App) -> None:
    seed(bare, ["+8613900000001"])
    clock = [datetime.now(UTC)]
    d = Dispatcher(
        bare.sessions,
        {"gw": Scripted("gw", [Unknown("timeout after the request was written")])},
        DispatchPolicy(reschedule_after=60),
        now=lambda: clock[0],
    )
    assert (await d.run_once()).unknown == 1

    class Reworded(Scripted):
        def prepare(self, msg: Outgoing) -> Prepared:
            p = super().prepare(msg)
            return Prepared(msg, p.payload + b" ", p.media_type, p.message_id)

    clock[0] += timedelta(seconds=61)
    d2 = Dispatcher(bare.sessions, {"gw": Reworded("gw", [])}, now=lambda: clock[0])
    assert (await d2.run_once()).sent == 1
    first, second = _events(bare, "try_started")
    assert second["data"]["payload_differs_from"] == first["data"]["payload_sha256"]


async def test_a_case_answered_after_planning_sends_nothing_more(app: App) -> None:
    from outreach.store import Case

    with app.sessions.begin() as s:
        s.execute(sa.update(Case).values(state="replied"))
    d, channel = _dispatcher(app, [])
    report = await d.run_once()
    assert report.sent == 0 and not channel.sent
    assert {a.state for a in _attempts(app)} == {"queued"}


async def test_send_gets_the_payload_not_the_notice_text(app: App) -> None:
    """What leaves is what was recorded: ``send`` sees identifiers, not text to re-render."""
    d, channel = _dispatcher(app, ["ok", "ok"])
    await d.run_once()
    assert len(channel.sent) == 2
    for prepared in channel.sent:
        assert prepared.outgoing.body == "" and prepared.outgoing.html is None
        assert prepared.outgoing.recipient and prepared.outgoing.idempotency_key
        assert json.loads(prepared.payload)["body"]  # the text is in the payload
