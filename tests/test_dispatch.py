"""The dispatcher's promises: payload chained before sending, retries counted and chained,
permanent failures mark the contact bad, unknown outcomes re-send the same bytes with the same
key, a crash mid-send is recovered as ``unknown``, a stop releases what was not sent."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, ClassVar

import pytest
import sqlalchemy as sa

from channels.base import Outgoing, Permanent, Prepared, RateLimit, Receipt, Transient, Unknown
from outreach.app import App
from outreach.dispatch import Dispatcher, DispatchPolicy
from outreach.proof import verify_chain
from outreach.retry import Backoff
from outreach.store import Attempt, ContactPoint, Event


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
    report = type("R", (), {"deferred": 0, "failed": 0})()
    jobs = d.claim(report)  # the worker claims and records try_started... then dies
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
    jobs = d.claim(type("R", (), {"deferred": 0, "failed": 0})())
    import asyncio

    q: asyncio.Queue[Any] = asyncio.Queue()
    for job in jobs:
        await d._send(job, q)
    from outreach.dispatch import DispatchReport

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
