"""Dispatch: claim due attempts, record ``try_started``, send outside the transaction, record
the outcome. The heart of the proof.

Order of operations, and why:

1. **Claim** (one short transaction per batch): due attempts are leased to this worker
   (PostgreSQL: ``FOR UPDATE SKIP LOCKED``; SQLite: the single writer lock), the payload is
   prepared, stored as a blob and a ``try_started`` event chained, and all of it committed
   *before* anything leaves.
2. **Send** outside any transaction, under per-channel concurrency; transient errors retry
   in place with tenacity (jittered back-off, Retry-After honoured), each retry chained and
   committed before the next try goes out.
3. **Record** outcomes through one writer task that commits whatever has finished as one
   transaction (group commit): durable proof without a commit per message. A send is counted
   in the :class:`DispatchReport` only after its outcome is committed.

A crash between 2 and 3 leaves a ``try_started`` with no outcome and, once nobody renews it,
an expired lease; :meth:`Dispatcher.recover` chains ``unknown`` for it and re-queues it, and the
re-send uses the same idempotency key (Message-ID, OutId), so a duplicate on the far side is
visible and attributable to that ``unknown``. A stop (SIGINT/SIGTERM through
:meth:`Dispatcher.request_stop`) lets in-flight sends finish and releases what was claimed but
not sent, each with a ``released`` event.

How it stays fast without weakening that order:

- **Pipelined.** The next batch is claimed while the previous ones are still sending, so a
  gateway's connections never wait for the database; all database work runs on one thread of
  its own, so the event loop keeps serving sockets while a transaction waits on the disk or on
  PostgreSQL - or, with ``[dispatch] db_process``, in a helper process (outreach.db_helper),
  so that it also stops competing with the event loop for the GIL. The first try of a send goes straight to the channel; tenacity takes over from
  the first transient failure (its machinery costs more than a small gateway request).
- **Set-wise SQL.** A claim is one joined SELECT for the whole batch, one INSERT per table
  (executemany) and one UPDATE per kind of change; no ORM objects, no query per attempt. Events
  are chained in bulk by :func:`append_events`, which produces exactly what
  :func:`outreach.proof.record_event` would (same body, same hash), one lock statement and one
  insert per batch instead of a lock, an insert and an update per event.
- **Checks only where they apply.** Per-recipient caps cost a query only for channels that
  have caps.

Locks are always taken in one order - attempt rows, then per-recipient advisory locks (sorted),
then blob rows (sorted), then chain heads (sorted), then contact points - so two workers (or a
worker and its own writer) can wait for each other but never in a cycle. Blobs are inserted
with ON CONFLICT DO NOTHING: two workers storing the same gateway reply must not collide.

A worker whose lease passed to another worker's recovery (it stalled longer than
``lease_seconds``; leases of in-flight sends are renewed every third of that) still chains
what it saw, marked ``late``, but leaves the attempt's state to its new owner.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, TypeVar

from sqlalchemy import Select, bindparam, or_, select, update
from sqlalchemy.orm import Session, sessionmaker
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type, stop_after_attempt

from channels.base import (
    Channel,
    Outgoing,
    Permanent,
    RateLimit,
    Receipt,
    Transient,
    Unknown,
)
from outreach import clock
from outreach.bulk import executemany, in_chunks, table_of
from outreach.dispatch_data import (
    CURRENT,
    CURRENT_PG,
    DUE_COLUMNS,
    SEND_INSERT,
    CurrentRow,
    DispatchPolicy,
    DispatchReport,
    DueRow,
    Job,
    Outcome,
    Writes,
    case_chain,
    for_sending,
    is_pg,
    update_attempts,
    worker_id,
)
from outreach.proof import jsonable
from outreach.ratelimit import ClaimGate, limited_channels
from outreach.retry import in_transaction
from outreach.store import (
    Attempt,
    Case,
    ContactPoint,
    Notice,
    Party,
)

log = logging.getLogger("outreach.dispatch")

if TYPE_CHECKING:
    from outreach.db_helper import DbHelper

__all__ = [
    "DB_OPERATIONS",
    "DUE_STATES",
    "DispatchPolicy",
    "DispatchReport",
    "Dispatcher",
    "Job",
    "Outcome",
    "case_chain",
    "worker_id",
]

_DEFAULT_POLICY = DispatchPolicy()

DUE_STATES = ("queued", "retry", "unknown")
#: The dispatcher's database operations: all its database work goes through these, by name, so
#: that it can run in a helper process (outreach.db_helper) as well as in a thread.
DB_OPERATIONS = frozenset(
    {
        "recover",
        "claim_batch",
        "record_outcomes",
        "record_retry",
        "record_try_start",
        "renew_leases",
    }
)

T = TypeVar("T")


# ---------------------------------------------------------------------- the dispatcher


class Dispatcher:
    def __init__(
        self,
        sessions: sessionmaker[Session],
        channels: Mapping[str, Channel],
        policy: DispatchPolicy = _DEFAULT_POLICY,
        *,
        owner: str | None = None,
        limits: Mapping[str, Sequence[RateLimit]] | None = None,
        concurrency: Mapping[str, int] | None = None,
        sender: Mapping[str, str | None] | None = None,
        now: Callable[[], datetime] = clock.now,
        sleep: Callable[[float], Any] = asyncio.sleep,
        helper: DbHelper | None = None,
    ) -> None:
        self.sessions = sessions
        # Where the database work runs: None, this process's own thread; or a helper process
        # that holds an identical dispatcher (same config, same owner) - see outreach.db_helper
        self.helper = helper
        self.channels = channels
        self.policy = policy
        self.owner = owner or worker_id()
        self.limits = {name: list(caps) for name, caps in (limits or {}).items() if caps}
        self._limited = limited_channels(self.limits)
        # [sender] as Outgoing fields: name, organisation, address, phone, email
        self.sender = {f"sender_{k}": v for k, v in (sender or {}).items()}
        self.now = now
        self.sleep = sleep
        self._concurrency = {name: (concurrency or {}).get(name, 20) for name in channels}
        self._stopping = False
        self._broken = False  # outcomes could not be recorded: stop claiming more
        self._pool: ThreadPoolExecutor | None = None  # records, renewals, recovery
        self._claims: ThreadPoolExecutor | None = None  # claims, when they may run alongside
        self._live: dict[int, Job] = {}  # claimed and not yet recorded: their leases are renewed
        self._statements: dict[tuple[Any, ...], Any] = {}

    def request_stop(self) -> None:
        """Stop claiming; in-flight sends finish, claimed-but-unsent attempts are released."""
        self._stopping = True

    @property
    def stopping(self) -> bool:
        return self._stopping

    # ------------------------------------------------------------------ plumbing

    def _transaction(self, work: Callable[[Session], T]) -> T:
        return in_transaction(self.sessions, work)

    async def _db(self, method: str, *args: Any) -> Any:
        """Run one of the dispatcher's database operations (the methods named in
        :data:`DB_OPERATIONS`) where database work runs while :meth:`run_once` runs: the
        dispatcher's own thread, or the helper process (:mod:`outreach.db_helper`), which gets
        the caller's clock reading so both sides agree on "now"."""
        if self.helper is not None:
            return await self.helper.call(method, self.now(), args)
        fn = getattr(self, method)
        # Claims get a thread of their own on PostgreSQL, so a claim waiting on the server does
        # not wait behind outcome records too; SQLite has one writer, so one thread.
        pool = (self._claims or self._pool) if method == "claim_batch" else self._pool
        if pool is None:
            return fn(*args)
        return await asyncio.get_running_loop().run_in_executor(pool, fn, *args)

    def _ours(self, row: Any, job: Job) -> bool:
        return bool(
            row is not None
            and row.state == "sending"
            and row.lease_owner == self.owner
            and row.claims == job.claims
        )

    # ------------------------------------------------------------------ recovery

    def recover(self) -> int:
        """Chain ``unknown`` for every try whose worker died mid-send, and re-queue it."""
        total = 0
        while True:
            count = self._transaction(self._recover_some)
            total += count
            if count < self.policy.batch:
                return total

    def _recover_some(self, s: Session) -> int:
        now = self.now()
        stmt = (
            select(
                Attempt.id,
                Attempt.tries,
                Attempt.lease_owner,
                Attempt.idempotency_key,
                Attempt.message_id,
                Notice.case_id,
                Case.reference,
            )
            .join(Notice, Notice.id == Attempt.notice_id)
            .join(Case, Case.id == Notice.case_id)
            .where(Attempt.state == "sending", Attempt.lease_expires_at < now)
            .order_by(Attempt.id)
            .limit(self.policy.batch)
        )
        if is_pg(s):
            stmt = stmt.with_for_update(of=Attempt, skip_locked=True)
        rows = s.execute(stmt).all()
        if not rows:
            return 0
        writes = Writes(now)
        for r in rows:
            writes.event(
                case_chain(r.reference),
                "unknown",
                {
                    "attempt": r.id,
                    "try": r.tries,
                    "reason": "interrupted: the try started but no outcome was recorded (worker stopped or crashed)",
                    "lease_owner": r.lease_owner,
                    "idempotency_key": r.idempotency_key,
                    "message_id": r.message_id,
                },
                case_id=r.case_id,
                attempt_id=r.id,
            )
        writes.flush(s)
        update_attempts(
            s,
            [
                {
                    "id": r.id,
                    "state": "unknown",
                    "lease_owner": None,
                    "lease_expires_at": None,
                    "next_try_at": now,
                    "updated_at": now,
                }
                for r in rows
            ],
        )
        return len(rows)

    # ------------------------------------------------------------------ claim

    def _due_rows(self, s: Session, now: datetime, pg: bool) -> list[DueRow]:
        """The next batch of due attempts, oldest ``next_try_at`` first.

        One query per due state, not one ``state IN (...)``: with an equality on ``state`` the
        ``(state, next_try_at)`` index hands rows over already in order and the LIMIT stops the
        scan, where the IN form made both engines collect and sort *every* due row on each
        claim (10 ms per claim with 5,000 queued, growing with the queue: quadratic over a
        run). Each query may lock up to a batch (PostgreSQL); rows beyond the merged batch are
        not touched and their locks end with this short transaction.
        """
        conn = s.connection()
        rows: list[DueRow] = []
        make = DueRow._make
        for state in DUE_STATES:
            stmt = self._due(pg, state)
            rows.extend(make(r) for r in conn.execute(stmt, {"now": now}))
        rows.sort(key=lambda r: (r.next_try_at, r.id))
        return rows[: self.policy.batch]

    def _due(self, pg: bool, state: str) -> Select[Any]:
        """Built once per dispatcher, engine and state: building and keying a statement of this
        size cost more than running it."""
        stmt = self._statements.get(("due", pg, state))
        if stmt is None:
            a, n, c, p = (table_of(m) for m in (Attempt, Notice, Case, Party))
            now = bindparam("now", type_=a.c.next_try_at.type)
            stmt = (
                select(*(DUE_COLUMNS[name] for name in DueRow._fields))
                .select_from(
                    a.join(n, n.c.id == a.c.notice_id)
                    .join(c, c.c.id == n.c.case_id)
                    .join(p, p.c.id == n.c.party_id)
                )
                .where(
                    a.c.state == state,
                    a.c.next_try_at <= now,
                    a.c.channel.in_(sorted(self.channels)),
                    # An answer, a pause or a resolution stops sending at once, not at the
                    # next ladder pass (which then cancels these attempts with an event).
                    c.c.state.not_in(("replied", "resolved", "paused", "stopped")),
                    or_(a.c.lease_expires_at.is_(None), a.c.lease_expires_at < now),
                )
                .order_by(a.c.next_try_at, a.c.id)
                .limit(self.policy.batch)
            )
            if pg:
                stmt = stmt.with_for_update(of=a, skip_locked=True)
            self._statements[("due", pg, state)] = stmt
        return stmt

    @staticmethod
    def _earlier_message_ids(
        s: Session, rows: Sequence[Any]
    ) -> dict[tuple[int, int], list[tuple[int, str]]]:
        """Message-IDs of earlier steps' e-mails per (case, party), for In-Reply-To/References:
        one query for the batch, and none when every e-mail in it is a first step."""
        cases = sorted({r.case_id for r in rows if r.kind == "email" and r.step > 0})
        found: dict[tuple[int, int], list[tuple[int, str]]] = {}
        for chunk in in_chunks(cases):
            q = (
                select(Notice.case_id, Notice.party_id, Notice.step, Attempt.message_id)
                .join(Notice, Attempt.notice_id == Notice.id)
                .where(
                    Notice.case_id.in_(chunk),
                    Attempt.kind == "email",
                    Attempt.message_id.is_not(None),
                )
                .order_by(Attempt.id)
            )
            for case_id, party_id, step, mid in s.execute(q):
                if mid:
                    found.setdefault((case_id, party_id), []).append((step, mid))
        return found

    def claim(self, report: DispatchReport) -> list[Job]:
        """Lease a batch of due attempts and chain ``try_started`` for each, in one transaction."""
        jobs, _, counts = self.claim_batch()
        report.add(counts)
        return jobs

    def claim_batch(self) -> tuple[list[Job], int, DispatchReport]:
        """(jobs, rows examined, counts) of one committed claim."""
        return self._transaction(self._claim_in)

    def _claim_in(self, s: Session) -> tuple[list[Job], int, DispatchReport]:
        counts = DispatchReport()
        now = self.now()
        lease_until = now + timedelta(seconds=self.policy.lease_seconds)
        pg = is_pg(s)
        rows = self._due_rows(s, now, pg)
        if not rows:
            return [], 0, counts
        gate: ClaimGate | None = None
        limited = [r for r in rows if r.channel in self._limited]
        if limited:
            gate = ClaimGate(self.limits, now)
            gate.load(s, limited)
        earlier = self._earlier_message_ids(s, rows)
        writes = Writes(now)
        changes: list[dict[str, Any]] = []
        sends: list[dict[str, Any]] = []
        jobs: list[Job] = []
        for r in rows:
            chain = case_chain(r.reference)
            if gate is not None and r.channel in self._limited:
                until = gate.wait_until(r.channel, r.recipient)
                if until is not None:
                    changes.append({"id": r.id, "next_try_at": until, "updated_at": now})
                    writes.event(
                        chain,
                        "deferred",
                        {
                            "attempt": r.id,
                            "reason": "per-recipient rate limit",
                            "until": until.isoformat(),
                        },
                        case_id=r.case_id,
                        attempt_id=r.id,
                    )
                    counts.deferred += 1
                    continue
            out = Outgoing(
                channel=r.channel,
                kind=r.kind,
                recipient=r.recipient,
                recipient_name=r.legal_name or r.party_name,
                subject=r.subject,
                body=r.body,
                reference=r.reference,
                idempotency_key=r.idempotency_key,
                notice_kind=r.template,
                language=r.language,
                created_at=r.created_at,
                html=r.html,
                params=dict(r.sms_params or {}),
                in_reply_to=tuple(
                    mid for step, mid in earlier.get((r.case_id, r.party_id), ()) if step < r.step
                ),
                **self.sender,
            )
            try:
                prepared = self.channels[r.channel].prepare(out)
            except Permanent as exc:
                changes.append(
                    {"id": r.id, "state": "failed", "last_error": exc.detail, "updated_at": now}
                )
                writes.event(
                    chain,
                    "failed",
                    {"attempt": r.id, "stage": "prepare", "error": exc.detail, "code": exc.code},
                    case_id=r.case_id,
                    attempt_id=r.id,
                )
                counts.failed += 1
                continue
            except Exception as exc:
                # A bug in an adapter says nothing about the notice: try again later, and give
                # up only after as many claims as any other failure.
                log.exception("channel %s could not prepare attempt %s", r.channel, r.id)
                detail = f"{type(exc).__name__}: {exc}"
                claims = r.claims + 1
                gave_up = claims >= self.policy.max_claims
                retry_at = now + timedelta(seconds=self.policy.reschedule_after)
                changes.append(
                    {
                        "id": r.id,
                        "state": "failed" if gave_up else "retry",
                        "claims": claims,
                        "next_try_at": retry_at,
                        "last_error": detail,
                        "updated_at": now,
                    }
                )
                data: dict[str, Any] = {"attempt": r.id, "stage": "prepare", "error": detail}
                if gave_up:
                    data["gave_up"] = f"could not prepare on {claims} claims"
                else:
                    data["next_try_at"] = retry_at.isoformat()
                writes.event(
                    chain,
                    "failed" if gave_up else "rescheduled",
                    data,
                    case_id=r.case_id,
                    attempt_id=r.id,
                )
                if gave_up:
                    counts.failed += 1
                else:
                    counts.rescheduled += 1
                continue
            if gate is not None and r.channel in self._limited:
                gate.admit(r.channel, r.recipient)
            payload_sha = writes.blob(prepared.payload, prepared.media_type)
            tries, claims = r.tries + 1, r.claims + 1
            changes.append(
                {
                    "id": r.id,
                    "state": "sending",
                    "lease_owner": self.owner,
                    "lease_expires_at": lease_until,
                    "claims": claims,
                    "tries": tries,
                    "payload_sha256": payload_sha,
                    "message_id": prepared.message_id,
                    "updated_at": now,
                }
            )
            sends.append(
                {"channel": r.channel, "recipient": r.recipient, "at": now, "attempt_id": r.id}
            )
            started: dict[str, Any] = {
                "attempt": r.id,
                "try": tries,
                "claim": claims,
                "channel": r.channel,
                "kind": r.kind,
                "recipient": r.recipient,
                "payload_sha256": payload_sha,
                "media_type": prepared.media_type,
                "message_id": prepared.message_id,
                "idempotency_key": r.idempotency_key,
                "worker": self.owner,
            }
            if r.payload_sha256 and r.payload_sha256 != payload_sha:
                # The same key, different bytes (the adapter changed between two claims): say
                # so where a reader of the chain will see it.
                started["payload_differs_from"] = r.payload_sha256
            writes.event(chain, "try_started", started, case_id=r.case_id, attempt_id=r.id)
            jobs.append(
                Job(
                    r.id,
                    r.case_id,
                    chain,
                    r.channel,
                    r.contact_point_id,
                    for_sending(prepared),
                    tries,
                    claims,
                    lease_until,
                )
            )
        writes.flush(s)
        update_attempts(s, changes)
        if sends:
            executemany(s, SEND_INSERT, sends)
        return jobs, len(rows), counts

    # ------------------------------------------------------------------ send

    def record_retry(self, job: Job, exc: Transient, delay: float) -> None:
        """Chain the failed try; renew the lease over the back-off."""
        now = self.now()
        until = now + timedelta(seconds=self.policy.lease_seconds + delay)

        def work(s: Session) -> None:
            row = self._current(s, [job.attempt_id]).get(job.attempt_id)
            writes = Writes(now)
            data: dict[str, Any] = {
                "attempt": job.attempt_id,
                "try": job.try_number,
                "error": exc.detail,
                "code": exc.code,
                "transcript": jsonable(exc.transcript),
                "retry_in_seconds": f"{delay:.1f}",
            }
            if exc.response:
                data["response_sha256"] = writes.blob(exc.response, "text/plain")
            writes.event(
                job.chain, "try_failed", data, case_id=job.case_id, attempt_id=job.attempt_id
            )
            writes.flush(s)
            if self._ours(row, job):
                update_attempts(
                    s,
                    [
                        {
                            "id": job.attempt_id,
                            "last_error": exc.detail,
                            "lease_expires_at": until,
                            "updated_at": now,
                        }
                    ],
                )

        self._transaction(work)
        job.lease_until = until

    def record_try_start(self, job: Job) -> int | None:
        """Chain the next try of a claimed attempt before it is sent: its try number, or None
        if the attempt is no longer this worker's (its lease passed to recovery meanwhile)."""
        now = self.now()

        def work(s: Session) -> int | None:
            row = self._current(s, [job.attempt_id]).get(job.attempt_id)
            if row is None or not self._ours(row, job):
                return None
            tries = row.tries + 1
            writes = Writes(now)
            writes.event(
                job.chain,
                "try_started",
                {
                    "attempt": job.attempt_id,
                    "try": tries,
                    "claim": job.claims,
                    "channel": job.channel,
                    "kind": job.prepared.outgoing.kind,
                    "recipient": job.prepared.outgoing.recipient,
                    "payload_sha256": hashlib.sha256(job.prepared.payload).hexdigest(),
                    "media_type": job.prepared.media_type,
                    "message_id": job.prepared.message_id,
                    "idempotency_key": job.prepared.outgoing.idempotency_key,
                    "worker": self.owner,
                },
                case_id=job.case_id,
                attempt_id=job.attempt_id,
            )
            writes.flush(s)
            update_attempts(s, [{"id": job.attempt_id, "tries": tries, "updated_at": now}])
            s.execute(
                SEND_INSERT,
                [
                    {
                        "channel": job.channel,
                        "recipient": job.prepared.outgoing.recipient,
                        "at": now,
                        "attempt_id": job.attempt_id,
                    }
                ],
            )
            # (a helper process keeps its own copy of the job: both must know the try)
            job.try_number = tries
            return tries

        return self._transaction(work)

    async def _send(self, job: Job, outcomes: asyncio.Queue[Outcome | None]) -> None:
        """Send one claimed job (retries included) and queue its outcome for recording."""
        channel = self.channels[job.channel]
        if self._stopping or self._broken:
            await outcomes.put(
                Outcome(
                    job,
                    "released",
                    at=self.now(),
                    reason="worker stopping: released before sending",
                )
            )
            return
        if job.lease_until is not None and self.now() >= job.lease_until:
            await outcomes.put(
                Outcome(job, "released", at=self.now(), reason="the lease ran out before sending")
            )
            return
        try:
            receipt = await self._tries(job, channel)
            state = "pending" if receipt.pending else ("sent" if receipt.accepted else "unknown")
            outcome = Outcome(job, state, receipt=receipt, at=self.now(), tries=job.tries)
        except _Stopped as exc:
            outcome = Outcome(
                job, "retry", error=Transient(str(exc)), at=self.now(), tries=job.tries
            )
        except Transient as exc:
            outcome = Outcome(job, "retry", error=exc, at=self.now(), tries=job.tries)
        except Permanent as exc:
            outcome = Outcome(job, "failed", error=exc, at=self.now(), tries=job.tries)
        except Unknown as exc:
            outcome = Outcome(job, "unknown", error=exc, at=self.now(), tries=job.tries)
        except Exception as exc:
            log.exception("channel %s raised an unexpected error", job.channel)
            outcome = Outcome(job, "unknown", error=exc, at=self.now(), tries=job.tries)
        await outcomes.put(outcome)

    async def _tries(self, job: Job, channel: Channel) -> Receipt:
        """Send, retrying transient failures within this claim.

        The first try goes straight out: nearly every send succeeds at once, and tenacity's
        machinery costs more than a small gateway request. From the first transient failure on,
        tenacity runs the remaining tries, with the same back-off schedule (try n waits
        ``backoff.delay(n)``) and Retry-After honoured. Every retry is chained (``try_failed``,
        then ``try_started``) and committed before it goes out.
        """
        job.tries = 1
        try:
            return await channel.send(job.prepared)
        except Transient as exc:
            first = exc
        if self.policy.max_tries <= 1:
            raise first
        backoff = self.policy.backoff
        delay = backoff.delay(1, first.retry_after)
        await self._db("record_retry", job, first, delay)
        await self.sleep(delay)

        def wait(state: RetryCallState) -> float:
            exc = state.outcome.exception() if state.outcome else None
            retry_after = exc.retry_after if isinstance(exc, Transient) else None
            return backoff.delay(state.attempt_number + 1, retry_after)

        async def before_sleep(state: RetryCallState) -> None:
            exc = state.outcome.exception() if state.outcome else None
            if isinstance(exc, Transient):
                await self._db("record_retry", job, exc, state.upcoming_sleep)

        retrying = AsyncRetrying(
            retry=retry_if_exception_type(Transient),
            stop=stop_after_attempt(self.policy.max_tries - 1),
            wait=wait,
            sleep=self.sleep,
            before_sleep=before_sleep,
            reraise=True,
        )
        async for attempt in retrying:
            with attempt:
                if self._stopping:
                    raise _Stopped("stopped before the next try")
                tries = await self._db("record_try_start", job)
                if tries is None:
                    raise _Stopped("the lease passed to recovery before the next try")
                job.try_number = tries
                job.tries += 1
                receipt = await channel.send(job.prepared)
        return receipt

    # ------------------------------------------------------------------ record

    def _current(self, s: Session, ids: Sequence[int]) -> dict[int, CurrentRow]:
        """The rows of these attempts, locked (PostgreSQL) in id order."""
        pg = is_pg(s)
        stmt = CURRENT_PG if pg else CURRENT
        conn = s.connection()
        found: dict[int, CurrentRow] = {}
        make = CurrentRow._make
        for chunk in in_chunks(sorted(set(ids))):
            for row in conn.execute(stmt, {"ids": chunk}):
                found[row[0]] = make(row)
        return found

    def _write_outcomes(self, batch: list[Outcome], report: DispatchReport) -> None:
        """Record finished sends in one transaction; counted in ``report`` once committed."""
        report.add(self.record_outcomes(batch))

    def record_outcomes(self, batch: list[Outcome]) -> DispatchReport:
        """Record finished sends in one transaction: the counts of what was recorded."""
        return self._transaction(lambda s: self._write_in(s, batch))

    def _write_in(self, s: Session, batch: list[Outcome]) -> DispatchReport:
        counts = DispatchReport()
        now = self.now()
        current = self._current(s, [o.job.attempt_id for o in batch])
        writes = Writes(now)
        changes: list[dict[str, Any]] = []
        bad: dict[int, tuple[Outcome, str | None]] = {}
        for o in batch:
            if o.state == "failed" and isinstance(o.error, Permanent) and o.error.bad_recipient:
                bad.setdefault(o.job.contact_id, (o, o.error.detail))
        contacts = self._contacts(s, list(bad)) if bad else {}
        marked: list[dict[str, Any]] = []
        for o in batch:
            job = o.job
            row = current.get(job.attempt_id)
            ours = self._ours(row, job)
            tries = row.tries if row is not None else job.try_number
            if o.state == "released":
                counts.released += 1
                if ours:
                    changes.append(
                        {
                            "id": job.attempt_id,
                            "state": "queued",
                            "lease_owner": None,
                            "lease_expires_at": None,
                            "updated_at": o.at,
                        }
                    )
                    writes.event(
                        job.chain,
                        "released",
                        {
                            "attempt": job.attempt_id,
                            "try": tries,
                            "channel": job.channel,
                            "recipient": job.prepared.outgoing.recipient,
                            "reason": o.reason or "released before sending",
                        },
                        case_id=job.case_id,
                        attempt_id=job.attempt_id,
                        at=o.at,
                    )
                continue
            data: dict[str, Any] = {
                "attempt": job.attempt_id,
                "try": tries,
                "channel": job.channel,
                "recipient": job.prepared.outgoing.recipient,
            }
            change: dict[str, Any] = {
                "id": job.attempt_id,
                "lease_owner": None,
                "lease_expires_at": None,
                "updated_at": o.at,
            }
            if o.receipt is not None:
                r = o.receipt
                data["response_sha256"] = writes.blob(r.response, r.response_type)
                data["provider_id"] = r.provider_id
                data["transcript"] = jsonable(r.transcript)
                change["provider_id"] = r.provider_id
            err = o.error
            if err is not None:
                detail = getattr(err, "detail", None) or f"{type(err).__name__}: {err}"
                data["error"] = detail
                change["last_error"] = detail
                code = getattr(err, "code", None)
                if code is not None:
                    data["code"] = str(code)
                response = getattr(err, "response", None)
                if response:
                    data["response_sha256"] = writes.blob(response, "text/plain")
                transcript = getattr(err, "transcript", None)
                if transcript:
                    data["transcript"] = jsonable(transcript)
            kind = o.state
            claims = row.claims if row is not None else job.claims
            if o.state in ("sent", "pending"):
                change["state"] = o.state
                if o.state == "sent":
                    counts.sent += 1
                else:
                    counts.pending += 1
            elif o.state == "failed":
                change["state"] = "failed"
                counts.failed += 1
                if job.contact_id in bad and bad[job.contact_id][0] is o:
                    contact = contacts.get(job.contact_id)
                    if contact is not None and contact.status != "bad":
                        marked.append({"id": job.contact_id, "reason": data.get("error")})
                        writes.event(
                            job.chain,
                            "contact_bad",
                            {
                                "party": contact.key,
                                "kind": contact.kind,
                                "value": contact.value,
                                "reason": data.get("error"),
                            },
                            case_id=job.case_id,
                            attempt_id=job.attempt_id,
                            at=o.at,
                        )
            elif o.state == "unknown":
                change["state"] = "unknown"
                change["next_try_at"] = o.at + timedelta(seconds=self.policy.reschedule_after)
                counts.unknown += 1
                if claims >= self.policy.max_claims:
                    change["state"] = "failed"
                    data["gave_up"] = f"still unknown after {claims} claims"
            else:  # retry: transient failures exhausted this claim
                kind = "rescheduled"
                retry_after = getattr(err, "retry_after", None)
                wait = max(self.policy.reschedule_after, float(retry_after or 0))
                change["next_try_at"] = o.at + timedelta(seconds=wait)
                change["state"] = "retry"
                data["next_try_at"] = change["next_try_at"].isoformat()
                if claims >= self.policy.max_claims:
                    change["state"] = "failed"
                    kind = "failed"
                    data["gave_up"] = f"transient failures on {claims} claims"
                    counts.failed += 1
                else:
                    counts.rescheduled += 1
            if ours:
                changes.append(change)
            else:
                data["late"] = (
                    "the attempt's state changed before this outcome was recorded (recovery "
                    "took the lease, or a delivery receipt arrived first); it is left as it is"
                )
            writes.event(
                job.chain, kind, data, case_id=job.case_id, attempt_id=job.attempt_id, at=o.at
            )
        writes.flush(s)
        update_attempts(s, changes)
        if marked:
            table = table_of(ContactPoint)
            s.execute(
                update(table)
                .where(table.c.id == bindparam("b_id"))
                .values(status="bad", status_reason=bindparam("b_reason")),
                [{"b_id": m["id"], "b_reason": m["reason"]} for m in marked],
            )
        return counts

    @staticmethod
    def _contacts(s: Session, ids: Sequence[int]) -> dict[int, Any]:
        found: dict[int, Any] = {}
        for chunk in in_chunks(sorted(ids)):
            q = (
                select(
                    ContactPoint.id,
                    ContactPoint.kind,
                    ContactPoint.value,
                    ContactPoint.status,
                    Party.key,
                )
                .join(Party, Party.id == ContactPoint.party_id)
                .where(ContactPoint.id.in_(chunk))
            )
            for row in s.execute(q):
                found[row.id] = row
        return found

    async def _writer(
        self, outcomes: asyncio.Queue[Outcome | None], report: DispatchReport
    ) -> None:
        done = False
        while not done:
            first = await outcomes.get()
            batch: list[Outcome] = []
            if first is None:
                done = True
            else:
                batch.append(first)
                if self.policy.linger_seconds > 0:
                    await asyncio.sleep(self.policy.linger_seconds)
            while not outcomes.empty():
                item = outcomes.get_nowait()
                if item is None:
                    done = True
                else:
                    batch.append(item)
            if not batch:
                continue
            try:
                report.add(await self._db("record_outcomes", batch))
            except Exception as exc:
                # Nothing of this batch is recorded: its attempts stay `sending` with their
                # try_started chained, and recovery will chain `unknown` for each. Claiming more
                # would only add to that, so stop.
                log.exception("recording %d outcomes failed", len(batch))
                report.errors.append(f"recording outcomes failed: {type(exc).__name__}: {exc}")
                self._broken = True
            else:
                for o in batch:
                    self._live.pop(o.job.attempt_id, None)

    async def _heartbeat(self) -> None:
        """Renew the leases of everything claimed and not yet recorded, every third of a lease,
        so a long send (a relay that takes minutes after DATA) is not recovered as crashed."""
        period = max(0.2, self.policy.lease_seconds / 3)
        while True:
            await asyncio.sleep(period)
            jobs = list(self._live.values())
            if jobs:
                try:
                    until = await self._db("renew_leases", [j.attempt_id for j in jobs])
                    for job in jobs:
                        if job.lease_until is None or job.lease_until < until:
                            job.lease_until = until
                except Exception:
                    log.exception("renewing leases failed")

    def renew_leases(self, attempt_ids: Sequence[int]) -> datetime:
        """Extend this worker's leases on these attempts: the new expiry."""
        until = self.now() + timedelta(seconds=self.policy.lease_seconds)

        def work(s: Session) -> None:
            for chunk in in_chunks(sorted(attempt_ids)):
                s.execute(
                    update(Attempt)
                    .where(
                        Attempt.id.in_(chunk),
                        Attempt.lease_owner == self.owner,
                        Attempt.state == "sending",
                    )
                    .values(lease_expires_at=until)
                    .execution_options(synchronize_session=False)
                )

        self._transaction(work)
        return until

    # ------------------------------------------------------------------ loop

    async def run_once(self) -> DispatchReport:
        """Recover, then send everything due now, batch after batch, until nothing is due.

        The next batch is claimed as soon as fewer than two batches of claimed attempts are
        waiting or in flight, so channels stay busy while the database claims (a claim of a
        few hundred attempts takes a good fraction of a second on a busy machine). What waits
        keeps its lease through the heartbeat; with a slow channel, a smaller ``batch`` keeps
        that wait short.
        """
        report = DispatchReport()
        self._broken = False
        if self.helper is None:
            self._pool = ThreadPoolExecutor(1, thread_name_prefix="outreach-db")
            bind = self.sessions.kw.get("bind")
            if bind is not None and bind.dialect.name == "postgresql":
                self._claims = ThreadPoolExecutor(1, thread_name_prefix="outreach-claims")
        outcomes: asyncio.Queue[Outcome | None] = asyncio.Queue()
        # Each channel has a lane of claimed jobs and as many senders as its concurrency, each
        # taking the next job when its last send is done: no task per job, and nothing waits
        # on a semaphore (a claimed batch arriving used to make hundreds of both at once).
        lanes: dict[str, tuple[deque[Job], asyncio.Event]] = {}
        senders: list[asyncio.Task[None]] = []
        pending = 0  # claimed and not yet finished: waiting in a lane or being sent
        claiming = True
        freed = asyncio.Event()  # a send finished: there may be room for the next batch

        async def sender(lane: deque[Job], ready: asyncio.Event) -> None:
            nonlocal pending
            while lane or claiming:
                if not lane:
                    ready.clear()
                    await ready.wait()
                    continue
                try:
                    await self._send(lane.popleft(), outcomes)
                finally:
                    pending -= 1
                    freed.set()

        def enqueue(job: Job) -> None:
            nonlocal pending
            entry = lanes.get(job.channel)
            if entry is None:
                entry = lanes[job.channel] = (deque(), asyncio.Event())
                for _ in range(self._concurrency.get(job.channel, 20)):
                    senders.append(asyncio.create_task(sender(*entry)))
            entry[0].append(job)
            entry[1].set()
            pending += 1

        async def drained() -> None:
            while pending:
                freed.clear()
                await freed.wait()

        writer: asyncio.Task[None] | None = None
        heartbeat: asyncio.Task[None] | None = None
        try:
            report.recovered = await self._db("recover")
            writer = asyncio.create_task(self._writer(outcomes, report))
            heartbeat = asyncio.create_task(self._heartbeat())
            while not (self._stopping or self._broken):
                if pending >= 2 * self.policy.batch:
                    freed.clear()
                    await freed.wait()
                    continue
                jobs, examined, counts = await self._db("claim_batch")
                report.add(counts)
                for job in jobs:
                    self._live[job.attempt_id] = job
                    enqueue(job)
                if examined < self.policy.batch:
                    # Drained for now: let what is in flight finish, then look once more
                    # (a partial batch may have left nothing behind, or an outcome made an
                    # attempt due again); stop when a look finds nothing.
                    await drained()
                    if examined == 0:
                        break
        finally:
            # What is still in a lane is sent, or released if the run is stopping or broken.
            claiming = False
            for _lane, ready in lanes.values():
                ready.set()
            if senders:
                await asyncio.gather(*senders, return_exceptions=True)
            await outcomes.put(None)
            if writer is not None:
                await writer
            if heartbeat is not None:
                heartbeat.cancel()
                await asyncio.gather(heartbeat, return_exceptions=True)
            pool, self._pool = self._pool, None
            if pool is not None:
                pool.shutdown(wait=True)
            if self._claims is not None:
                claims, self._claims = self._claims, None
                claims.shutdown(wait=True)
        return report

    async def aclose(self) -> None:
        for channel in self.channels.values():
            try:
                await channel.aclose()
            except Exception:
                log.exception("closing channel %s", channel.name)


class _Stopped(Exception):
    pass
