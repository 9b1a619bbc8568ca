"""Dispatch: claim due attempts, record ``try_started``, send outside the transaction, record
the outcome. The heart of the proof.

Order of operations, and why:

1. **Claim** (one short transaction per batch): due attempts are leased to this worker
   (PostgreSQL: ``FOR UPDATE SKIP LOCKED``; SQLite: the single writer lock), the payload is
   prepared, stored as a blob and a ``try_started`` event chained *before* anything leaves.
2. **Send** outside any transaction, under per-channel concurrency; transient errors retry
   in place with tenacity (jittered back-off, Retry-After honoured), each retry chained.
3. **Record** outcomes through one writer task that commits whatever has finished as one
   transaction (group commit): durable proof without a commit per message.

A crash between 2 and 3 leaves a ``try_started`` with no outcome and an expired lease;
:meth:`Dispatcher.recover` chains ``unknown`` for it and re-queues it, and the re-send uses
the same idempotency key (Message-ID, OutId), so a duplicate on the far side is visible and
attributable to that ``unknown``. Nothing is reported as sent before its outcome is committed.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import or_, select
from sqlalchemy.orm import Session, sessionmaker
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type, stop_after_attempt

from channels.base import (
    Channel,
    Outgoing,
    Permanent,
    Prepared,
    RateLimit,
    Receipt,
    Transient,
    Unknown,
)
from outreach import clock
from outreach.proof import record_event, store_blob
from outreach.ratelimit import next_allowed
from outreach.retry import Backoff
from outreach.store import Attempt, Case, ContactPoint, Notice, Party, Send

log = logging.getLogger("outreach.dispatch")

DUE_STATES = ("queued", "retry", "unknown")


@dataclass
class DispatchReport:
    sent: int = 0
    pending: int = 0
    failed: int = 0
    unknown: int = 0
    rescheduled: int = 0
    deferred: int = 0
    recovered: int = 0
    released: int = 0
    errors: list[str] = field(default_factory=list)

    def add(self, other: DispatchReport) -> None:
        for name in (
            "sent",
            "pending",
            "failed",
            "unknown",
            "rescheduled",
            "deferred",
            "recovered",
            "released",
        ):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.errors.extend(other.errors)


@dataclass(frozen=True, slots=True)
class DispatchPolicy:
    max_tries: int = 4
    reschedule_after: float = 1800.0
    max_claims: int = 12
    lease_seconds: float = 120.0
    batch: int = 200
    backoff: Backoff = field(default_factory=Backoff)


@dataclass
class _Job:
    attempt_id: int
    case_id: int
    chain: str
    channel: str
    contact_id: int
    prepared: Prepared
    try_number: int
    claims: int


@dataclass
class _Outcome:
    job: _Job
    state: str  # sent | pending | failed | unknown | retry | released
    receipt: Receipt | None = None
    error: Exception | None = None
    at: datetime = field(default_factory=clock.now)
    tries: int = 1


def worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def _jsonable(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, str | int | bool) or value is None:
        return value
    return str(value)


class Dispatcher:
    def __init__(
        self,
        sessions: sessionmaker[Session],
        channels: Mapping[str, Channel],
        policy: DispatchPolicy = DispatchPolicy(),
        *,
        owner: str | None = None,
        limits: Mapping[str, Sequence[RateLimit]] | None = None,
        concurrency: Mapping[str, int] | None = None,
        sender_name: str | None = None,
        now: Callable[[], datetime] = clock.now,
        sleep: Callable[[float], Any] = asyncio.sleep,
    ) -> None:
        self.sessions = sessions
        self.channels = channels
        self.policy = policy
        self.owner = owner or worker_id()
        self.limits = dict(limits or {})
        self.sender_name = sender_name
        self.now = now
        self.sleep = sleep
        self._sem = {
            name: asyncio.Semaphore((concurrency or {}).get(name, 20)) for name in channels
        }
        self._stopping = False

    def request_stop(self) -> None:
        """Stop claiming; in-flight sends finish, claimed-but-unsent attempts are released."""
        self._stopping = True

    @property
    def stopping(self) -> bool:
        return self._stopping

    # ------------------------------------------------------------------ recovery

    def recover(self) -> int:
        """Chain ``unknown`` for every try whose worker died mid-send, and re-queue it."""
        now = self.now()
        count = 0
        with self.sessions.begin() as s:
            stuck = s.scalars(
                self._lock(
                    select(Attempt).where(
                        Attempt.state == "sending", Attempt.lease_expires_at < now
                    )
                )
            ).all()
            for a in stuck:
                case = self._case_of(s, a)
                record_event(
                    s,
                    case.chain,
                    "unknown",
                    {
                        "attempt": a.id,
                        "try": a.tries,
                        "reason": "interrupted: the try started but no outcome was recorded (worker stopped or crashed)",
                        "lease_owner": a.lease_owner,
                        "idempotency_key": a.idempotency_key,
                        "message_id": a.message_id,
                    },
                    case_id=case.id,
                    attempt_id=a.id,
                    at=now,
                )
                a.state = "unknown"
                a.lease_owner = None
                a.lease_expires_at = None
                a.next_try_at = now
                a.updated_at = now
                count += 1
        return count

    # ------------------------------------------------------------------ claim

    def _lock(self, stmt: Any) -> Any:
        bind = self.sessions.kw.get("bind")
        if bind is not None and bind.dialect.name == "postgresql":
            return stmt.with_for_update(skip_locked=True)
        return stmt

    @staticmethod
    def _case_of(s: Session, a: Attempt) -> Case:
        notice = s.get(Notice, a.notice_id)
        assert notice is not None
        case = s.get(Case, notice.case_id)
        assert case is not None
        return case

    def _outgoing(self, s: Session, a: Attempt) -> tuple[Outgoing, Case]:
        notice = s.get(Notice, a.notice_id)
        assert notice is not None
        case = s.get(Case, notice.case_id)
        party = s.get(Party, notice.party_id)
        assert case is not None and party is not None
        earlier = s.scalars(
            select(Attempt.message_id)
            .join(Notice, Attempt.notice_id == Notice.id)
            .where(
                Notice.case_id == case.id,
                Notice.party_id == party.id,
                Notice.step < notice.step,
                Attempt.kind == "email",
                Attempt.message_id.is_not(None),
            )
            .order_by(Attempt.id)
        ).all()
        out = Outgoing(
            channel=a.channel,
            kind=a.kind,
            recipient=a.recipient,
            recipient_name=party.legal_name or party.name,
            subject=notice.subject,
            body=notice.body,
            reference=case.reference,
            idempotency_key=a.idempotency_key,
            notice_kind=notice.template,
            language=notice.language,
            created_at=a.created_at,
            html=notice.html,
            params=dict(notice.sms_params or {}),
            in_reply_to=tuple(m for m in earlier if m),
            sender_name=self.sender_name,
        )
        return out, case

    def claim(self, report: DispatchReport) -> list[_Job]:
        """Lease a batch of due attempts and chain ``try_started`` for each, in one transaction."""
        now = self.now()
        jobs: list[_Job] = []
        with self.sessions.begin() as s:
            due = s.scalars(
                self._lock(
                    select(Attempt)
                    .where(
                        Attempt.state.in_(DUE_STATES),
                        Attempt.next_try_at <= now,
                        Attempt.channel.in_(list(self.channels)),
                        or_(Attempt.lease_expires_at.is_(None), Attempt.lease_expires_at < now),
                    )
                    .order_by(Attempt.next_try_at, Attempt.id)
                    .limit(self.policy.batch)
                )
            ).all()
            for a in due:
                out, case = self._outgoing(s, a)
                limits = self.limits.get(a.channel, ())
                if limits:
                    allowed = next_allowed(s, a.channel, a.recipient, limits, now)
                    if allowed is not None:
                        a.next_try_at = allowed
                        a.updated_at = now
                        record_event(
                            s,
                            case.chain,
                            "deferred",
                            {
                                "attempt": a.id,
                                "reason": "per-recipient rate limit",
                                "until": allowed.isoformat(),
                            },
                            case_id=case.id,
                            attempt_id=a.id,
                            at=now,
                        )
                        report.deferred += 1
                        continue
                channel = self.channels[a.channel]
                try:
                    prepared = channel.prepare(out)
                except Permanent as exc:
                    a.state = "failed"
                    a.last_error = exc.detail
                    a.updated_at = now
                    record_event(
                        s,
                        case.chain,
                        "failed",
                        {
                            "attempt": a.id,
                            "stage": "prepare",
                            "error": exc.detail,
                            "code": exc.code,
                        },
                        case_id=case.id,
                        attempt_id=a.id,
                        at=now,
                    )
                    report.failed += 1
                    continue
                payload_sha = store_blob(s, prepared.payload, prepared.media_type)
                a.state = "sending"
                a.lease_owner = self.owner
                a.lease_expires_at = now + timedelta(seconds=self.policy.lease_seconds)
                a.claims += 1
                a.tries += 1
                a.payload_sha256 = payload_sha
                a.message_id = prepared.message_id
                a.updated_at = now
                s.add(Send(channel=a.channel, recipient=a.recipient, at=now, attempt_id=a.id))
                record_event(
                    s,
                    case.chain,
                    "try_started",
                    {
                        "attempt": a.id,
                        "try": a.tries,
                        "claim": a.claims,
                        "channel": a.channel,
                        "kind": a.kind,
                        "recipient": a.recipient,
                        "payload_sha256": payload_sha,
                        "media_type": prepared.media_type,
                        "message_id": prepared.message_id,
                        "idempotency_key": a.idempotency_key,
                        "worker": self.owner,
                    },
                    case_id=case.id,
                    attempt_id=a.id,
                    at=now,
                )
                jobs.append(
                    _Job(
                        a.id,
                        case.id,
                        case.chain,
                        a.channel,
                        a.contact_point_id,
                        prepared,
                        a.tries,
                        a.claims,
                    )
                )
        return jobs

    # ------------------------------------------------------------------ send

    def _record_retry(self, job: _Job, exc: Transient, next_try: int, delay: float) -> None:
        """Chain the failed try and the start of the next one; renew the lease meanwhile."""
        now = self.now()
        with self.sessions.begin() as s:
            a = s.get(Attempt, job.attempt_id)
            assert a is not None
            record_event(
                s,
                job.chain,
                "try_failed",
                {
                    "attempt": job.attempt_id,
                    "try": a.tries,
                    "error": exc.detail,
                    "code": exc.code,
                    "transcript": _jsonable(exc.transcript),
                    "retry_in_seconds": f"{delay:.1f}",
                },
                case_id=job.case_id,
                attempt_id=job.attempt_id,
                at=now,
            )
            a.last_error = exc.detail
            a.lease_expires_at = now + timedelta(seconds=self.policy.lease_seconds + delay)
            a.updated_at = now

    def _record_try_start(self, job: _Job) -> None:
        now = self.now()
        with self.sessions.begin() as s:
            a = s.get(Attempt, job.attempt_id)
            assert a is not None
            a.tries += 1
            a.updated_at = now
            s.add(Send(channel=a.channel, recipient=a.recipient, at=now, attempt_id=a.id))
            record_event(
                s,
                job.chain,
                "try_started",
                {
                    "attempt": a.id,
                    "try": a.tries,
                    "claim": a.claims,
                    "channel": a.channel,
                    "kind": a.kind,
                    "recipient": a.recipient,
                    "payload_sha256": a.payload_sha256,
                    "media_type": job.prepared.media_type,
                    "message_id": a.message_id,
                    "idempotency_key": a.idempotency_key,
                    "worker": self.owner,
                },
                case_id=job.case_id,
                attempt_id=a.id,
                at=now,
            )

    async def _send(self, job: _Job, outcomes: asyncio.Queue[_Outcome | None]) -> None:
        channel = self.channels[job.channel]
        async with self._sem[job.channel]:
            if self._stopping:
                await outcomes.put(_Outcome(job, "released", at=self.now()))
                return
            tries = 0

            async def before_sleep(state: RetryCallState) -> None:
                exc = state.outcome.exception() if state.outcome else None
                if isinstance(exc, Transient):
                    self._record_retry(job, exc, state.attempt_number + 1, state.upcoming_sleep)

            retrying = AsyncRetrying(
                retry=retry_if_exception_type(Transient),
                stop=stop_after_attempt(self.policy.max_tries),
                wait=self.policy.backoff,
                sleep=self.sleep,
                before_sleep=before_sleep,
                reraise=True,
            )
            try:
                async for attempt in retrying:
                    with attempt:
                        tries += 1
                        if tries > 1:
                            if self._stopping:
                                raise _Stopped
                            self._record_try_start(job)
                        receipt = await channel.send(job.prepared)
                state = (
                    "pending" if receipt.pending else ("sent" if receipt.accepted else "unknown")
                )
                await outcomes.put(
                    _Outcome(job, state, receipt=receipt, at=self.now(), tries=tries)
                )
            except _Stopped:
                await outcomes.put(
                    _Outcome(
                        job,
                        "retry",
                        error=Transient("stopped before the next try"),
                        at=self.now(),
                        tries=tries,
                    )
                )
            except Transient as exc:
                await outcomes.put(_Outcome(job, "retry", error=exc, at=self.now(), tries=tries))
            except Permanent as exc:
                await outcomes.put(_Outcome(job, "failed", error=exc, at=self.now(), tries=tries))
            except Unknown as exc:
                await outcomes.put(_Outcome(job, "unknown", error=exc, at=self.now(), tries=tries))
            except Exception as exc:
                log.exception("channel %s raised an unexpected error", job.channel)
                await outcomes.put(_Outcome(job, "unknown", error=exc, at=self.now(), tries=tries))

    # ------------------------------------------------------------------ record

    def _write_outcomes(self, batch: list[_Outcome], report: DispatchReport) -> None:
        with self.sessions.begin() as s:
            for o in batch:
                self._write_one(s, o, report)

    def _write_one(self, s: Session, o: _Outcome, report: DispatchReport) -> None:
        job = o.job
        a = s.get(Attempt, job.attempt_id)
        assert a is not None
        a.lease_owner = None
        a.lease_expires_at = None
        a.updated_at = o.at
        data: dict[str, Any] = {
            "attempt": a.id,
            "try": a.tries,
            "channel": a.channel,
            "recipient": a.recipient,
        }
        if o.receipt is not None:
            r = o.receipt
            data["response_sha256"] = store_blob(s, r.response, r.response_type)
            data["provider_id"] = r.provider_id
            data["transcript"] = _jsonable(r.transcript)
            a.provider_id = r.provider_id
        err = o.error
        if err is not None:
            detail = getattr(err, "detail", None) or f"{type(err).__name__}: {err}"
            data["error"] = detail
            a.last_error = detail
            code = getattr(err, "code", None)
            if code is not None:
                data["code"] = str(code)
            response = getattr(err, "response", None)
            if response:
                data["response_sha256"] = store_blob(s, response, "text/plain")
            transcript = getattr(err, "transcript", None)
            if transcript:
                data["transcript"] = _jsonable(transcript)
        kind = o.state
        if o.state == "released":
            a.state = "queued"
            a.tries -= 1
            data["reason"] = "worker stopping: released before sending"
            report.released += 1
        elif o.state in ("sent", "pending"):
            a.state = o.state
            if o.state == "sent":
                report.sent += 1
            else:
                report.pending += 1
        elif o.state == "failed":
            a.state = "failed"
            report.failed += 1
            if isinstance(err, Permanent) and err.bad_recipient:
                cp = s.get(ContactPoint, job.contact_id)
                if cp is not None and cp.status != "bad":
                    cp.status = "bad"
                    cp.status_reason = data.get("error")
                    party = s.get(Party, cp.party_id)
                    record_event(
                        s,
                        job.chain,
                        "contact_bad",
                        {
                            "party": party.key if party else None,
                            "kind": cp.kind,
                            "value": cp.value,
                            "reason": data.get("error"),
                        },
                        case_id=job.case_id,
                        attempt_id=a.id,
                        at=o.at,
                    )
        elif o.state == "unknown":
            a.state = "unknown"
            a.next_try_at = o.at + timedelta(seconds=self.policy.reschedule_after)
            report.unknown += 1
            if a.claims >= self.policy.max_claims:
                a.state = "failed"
                data["gave_up"] = f"still unknown after {a.claims} claims"
        else:  # retry: transient failures exhausted this claim
            kind = "rescheduled"
            retry_after = getattr(err, "retry_after", None)
            wait = max(self.policy.reschedule_after, float(retry_after or 0))
            a.next_try_at = o.at + timedelta(seconds=wait)
            a.state = "retry"
            data["next_try_at"] = a.next_try_at.isoformat()
            if a.claims >= self.policy.max_claims:
                a.state = "failed"
                kind = "failed"
                data["gave_up"] = f"transient failures on {a.claims} claims"
                report.failed += 1
            else:
                report.rescheduled += 1
        record_event(s, job.chain, kind, data, case_id=job.case_id, attempt_id=a.id, at=o.at)

    async def _writer(
        self, outcomes: asyncio.Queue[_Outcome | None], report: DispatchReport
    ) -> None:
        done = False
        while not done:
            first = await outcomes.get()
            batch: list[_Outcome] = []
            if first is None:
                done = True
            else:
                batch.append(first)
            while not outcomes.empty():
                item = outcomes.get_nowait()
                if item is None:
                    done = True
                else:
                    batch.append(item)
            if batch:
                self._write_outcomes(batch, report)

    # ------------------------------------------------------------------ loop

    async def run_once(self) -> DispatchReport:
        """Recover, then send everything due now, batch after batch, until nothing is due."""
        report = DispatchReport()
        report.recovered = self.recover()
        outcomes: asyncio.Queue[_Outcome | None] = asyncio.Queue()
        writer = asyncio.create_task(self._writer(outcomes, report))
        try:
            while not self._stopping:
                jobs = self.claim(report)
                if not jobs:
                    break
                await asyncio.gather(*(self._send(job, outcomes) for job in jobs))
        finally:
            await outcomes.put(None)
            await writer
        return report

    async def aclose(self) -> None:
        for channel in self.channels.values():
            try:
                await channel.aclose()
            except Exception:
                log.exception("closing channel %s", channel.name)


class _Stopped(Exception):
    pass
