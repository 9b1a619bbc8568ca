"""SMS delivery receipts: read each provider's report, find the attempt it is about, chain it.

A gateway's "accepted" (``sent``) only says the provider took the message; whether the phone
got it arrives later, as a delivery report, pushed to us (``outreach receipts serve``) or
pulled (``outreach receipts poll``). Three layers, kept apart as froide keeps its bounce
parsing apart from its mailbox polling: the **parsers** are :mod:`outreach.receipt_formats`
(pure, bytes in, :class:`DeliveryReport` out), the **polling** is :mod:`outreach.receipts_poll`,
and this module does the rest:

* **Matching**: a report names the provider's id for the send (Aliyun ``biz_id``, Tencent
  ``sid``/``SerialNo``, Twilio ``MessageSid``) - :attr:`Attempt.provider_id` - and, where the
  provider echoes it, our idempotency key (Aliyun ``out_id``, Tencent ``SessionContext``).
  The id is tried first; the key catches the duplicate of a re-send after ``unknown``, whose
  provider id the attempt no longer holds, and a send whose answer we never saw at all.
* **Recording**: the exact bytes received become a blob; every report becomes one row of
  :class:`~outreach.models_receipts.DeliveryReceipt`, unique by :func:`dedupe_key`, so a
  report pushed twice, or pushed and then polled, is recorded once (Aliyun warns its pushes
  are not idempotent, and every provider re-pushes what it believes failed). A matched report
  chains ``delivered``, ``undelivered`` or ``delivery_progress`` on its case's chain, moves
  the attempt to ``delivered``/``undelivered``, marks the contact point ``good`` on delivery
  and ``bad`` on a permanent failure (both chained as ``contact_good``/``contact_bad``). A
  report that matches nothing is never dropped: it is chained on ``receipts:unmatched``, kept
  in the table, listed by ``outreach receipts list --unmatched``, and matched later
  (:func:`rematch_unmatched`) if its attempt turns up - a push can overtake the dispatcher's
  own record of the send.

``delivered`` wins: once an attempt is delivered, a later failure report for it is still
chained (it is evidence) but changes neither the attempt nor the contact point.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from outreach import clock
from outreach.config import Config
from outreach.models_receipts import DeliveryReceipt
from outreach.proof import format_at, record_event, store_blob
from outreach.receipt_formats import DeliveryReport, dedupe_key
from outreach.store import Attempt, Case, ContactPoint, Notice, Party

log = logging.getLogger("outreach.receipts")

#: Which channel adapter speaks for which provider.
ADAPTERS: Mapping[str, str] = {
    "aliyun": "aliyun_sms",
    "tencent": "tencent_sms",
    "twilio": "twilio_sms",
}

#: The chain unmatched and unreadable receipts go on: tamper-evident and anchored like the
#: case chains, though they belong to no case (yet).
UNMATCHED_CHAIN = "receipts:unmatched"

#: Event kind per outcome.
EVENT_KINDS: Mapping[str, str] = {
    "delivered": "delivered",
    "undelivered": "undelivered",
    "progress": "delivery_progress",
}

#: Aliyun lets QuerySendDetails look back 30 days; a day's margin for the date boundary.
ALIYUN_QUERY_DAYS = 29
#: Attempt states that still wait for a receipt.
AWAITING_STATES = ("sent", "unknown")


# --------------------------------------------------------------------------- matching


def channels_by_provider(config: Config) -> dict[str, list[str]]:
    """Configured channel names per provider, e.g. ``{"aliyun": ["agent-sms"], ...}``."""
    out: dict[str, list[str]] = {p: [] for p in ADAPTERS}
    for name, settings in config.channels.items():
        for provider, adapter in ADAPTERS.items():
            if settings.get("adapter") == adapter:
                out[provider].append(name)
    return out


def match_attempt(
    session: Session, report: DeliveryReport, channels: Collection[str] = ()
) -> tuple[Attempt, str] | None:
    """The attempt a report is about, and which identifier matched.

    ``channels`` (the provider's configured channels) narrows the provider-id match so that two
    providers' ids can never be confused; the idempotency key is ours and unique everywhere.
    """
    if report.provider_id:
        stmt = select(Attempt).where(Attempt.provider_id == report.provider_id)
        if channels:
            stmt = stmt.where(Attempt.channel.in_(list(channels)))
        found = session.scalars(stmt.order_by(Attempt.id).limit(1)).first()
        if found is not None:
            return found, "provider_id"
    if report.out_id:
        found = session.scalars(
            select(Attempt).where(Attempt.idempotency_key == report.out_id)
        ).first()
        if found is not None:
            return found, "out_id"
    return None


# --------------------------------------------------------------------------- recording


@dataclass
class IngestReport:
    """What one body (a push, or one poll answer) added."""

    reports: int = 0
    recorded: int = 0  # new and matched: chained on a case
    duplicates: int = 0
    unmatched: int = 0
    body_sha256: str | None = None

    def add(self, other: IngestReport) -> None:
        self.reports += other.reports
        self.recorded += other.recorded
        self.duplicates += other.duplicates
        self.unmatched += other.unmatched

    def describe(self) -> str:
        return (
            f"{self.reports} reports: {self.recorded} recorded, {self.duplicates} duplicates, "
            f"{self.unmatched} unmatched"
        )


def _compact(data: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in data.items() if v is not None and v != ""}


def _report_of(row: DeliveryReceipt) -> DeliveryReport:
    return DeliveryReport(
        provider=row.provider,
        outcome=row.outcome,
        provider_id=row.provider_id,
        out_id=row.out_id,
        recipient=row.recipient,
        code=row.code,
        message=row.message,
        reported_at=row.reported_at,
        permanent=row.permanent,
        stage=row.stage,
        item=row.item,
    )


def _receipt_data(row: DeliveryReceipt, verified: str | None) -> dict[str, Any]:
    return _compact(
        {
            "receipt": row.id,
            "provider": row.provider,
            "via": row.via,
            "outcome": row.outcome,
            "stage": row.stage,
            "code": row.code,
            "message": row.message,
            "provider_id": row.provider_id,
            "out_id": row.out_id,
            "reported_at": row.reported_at,
            "permanent": row.permanent,
            "receipt_sha256": row.body_sha256,
            "receipt_item": row.item,
            "verified": verified,
        }
    )


def _set_contact(
    session: Session,
    attempt: Attempt,
    case: Case,
    status: str,
    reason: str,
    at: datetime,
) -> None:
    cp = session.get(ContactPoint, attempt.contact_point_id)
    if cp is None or cp.status == status:
        return
    cp.status = status
    cp.status_reason = reason
    party = session.get(Party, cp.party_id)
    record_event(
        session,
        case.chain,
        f"contact_{status}",
        {
            "party": party.key if party else None,
            "kind": cp.kind,
            "value": cp.value,
            "reason": reason,
        },
        case_id=case.id,
        attempt_id=attempt.id,
        at=at,
    )


def _apply(
    session: Session,
    row: DeliveryReceipt,
    attempt: Attempt,
    matched_by: str,
    at: datetime,
    verified: str | None,
) -> None:
    """Chain one matched receipt on its case and let it move the attempt and the contact."""
    notice = session.get(Notice, attempt.notice_id)
    case = session.get(Case, notice.case_id) if notice is not None else None
    if case is None:  # an attempt always has a notice and a case; the schema says so
        raise LookupError(f"attempt {attempt.id} has no case")
    row.attempt_id = attempt.id
    row.matched_by = matched_by
    row.matched_at = at
    was_delivered = attempt.state == "delivered"
    data = {
        "attempt": attempt.id,
        "channel": attempt.channel,
        "recipient": attempt.recipient,
        "matched_by": matched_by,
        **_receipt_data(row, verified),
    }
    if was_delivered and row.outcome != "delivered":
        data["note"] = "the attempt was already reported delivered; state unchanged"
    record_event(
        session,
        case.chain,
        EVENT_KINDS[row.outcome],
        data,
        case_id=case.id,
        attempt_id=attempt.id,
        at=at,
    )
    detail = " ".join(x for x in (row.code, row.message) if x) or row.outcome
    if row.outcome == "delivered":
        attempt.state = "delivered"
        attempt.updated_at = at
        _set_contact(session, attempt, case, "good", f"delivered ({row.provider}: {detail})", at)
    elif row.outcome == "undelivered" and not was_delivered:
        attempt.state = "undelivered"
        attempt.last_error = f"undelivered: {detail}"
        attempt.updated_at = at
        if row.permanent:
            _set_contact(
                session, attempt, case, "bad", f"undelivered ({row.provider}: {detail})", at
            )


def record_unreadable(
    session: Session,
    provider: str,
    body: bytes,
    media_type: str,
    problem: str,
    *,
    via: str = "push",
    channel: str | None = None,
    at: datetime | None = None,
) -> bool:
    """Keep a body we could not read, once: its bytes and a chained note. True if new."""
    moment = at or clock.now()
    sha = store_blob(session, body, media_type)
    key = hashlib.sha256(f"unreadable\x1f{provider}\x1f{sha}".encode()).hexdigest()
    if session.scalar(select(DeliveryReceipt.id).where(DeliveryReceipt.dedupe_key == key)):
        return False
    row = DeliveryReceipt(
        dedupe_key=key,
        provider=provider,
        via=via,
        channel=channel,
        outcome="unreadable",
        stage="",
        message=problem[:1000],
        permanent=False,
        body_sha256=sha,
        item=0,
        received_at=moment,
    )
    session.add(row)
    session.flush()
    record_event(
        session,
        UNMATCHED_CHAIN,
        "receipt_unreadable",
        {
            "receipt": row.id,
            "provider": provider,
            "via": via,
            "problem": problem[:1000],
            "receipt_sha256": sha,
        },
        at=moment,
    )
    return True


def record_reports(
    session: Session,
    reports: Sequence[DeliveryReport],
    body: bytes,
    media_type: str,
    *,
    via: str,
    channel: str | None = None,
    channels: Collection[str] = (),
    verified: str | None = None,
    at: datetime | None = None,
) -> IngestReport:
    """Record the reports of one body inside the caller's transaction (see the module doc).

    The body is stored even when every report is a duplicate or unmatched: what a provider
    told us is evidence whether or not we can use it yet. Under concurrent writers of the same
    report, the unique ``dedupe_key`` makes one transaction fail with ``IntegrityError``; the
    caller retries it and then sees duplicates (:func:`ingest`).
    """
    moment = at or clock.now()
    out = IngestReport(reports=len(reports))
    out.body_sha256 = store_blob(session, body, media_type)
    seen: set[str] = set()
    for report in reports:
        key = dedupe_key(report)
        if key in seen or session.scalar(
            select(DeliveryReceipt.id).where(DeliveryReceipt.dedupe_key == key)
        ):
            out.duplicates += 1
            continue
        seen.add(key)
        row = DeliveryReceipt(
            dedupe_key=key,
            provider=report.provider,
            via=via,
            channel=channel,
            outcome=report.outcome,
            stage=report.stage,
            provider_id=report.provider_id,
            out_id=report.out_id,
            recipient=report.recipient,
            code=report.code,
            message=report.message,
            reported_at=report.reported_at,
            permanent=report.permanent,
            body_sha256=out.body_sha256,
            item=report.item,
            received_at=moment,
        )
        session.add(row)
        session.flush()
        match = match_attempt(session, report, [channel] if channel else channels)
        if match is None:
            out.unmatched += 1
            record_event(
                session,
                UNMATCHED_CHAIN,
                "receipt_unmatched",
                {**_receipt_data(row, verified), "recipient": report.recipient},
                at=moment,
            )
            continue
        attempt, matched_by = match
        _apply(session, row, attempt, matched_by, moment, verified)
        out.recorded += 1
    return out


def ingest(
    sessions: sessionmaker[Session],
    write: Callable[[Session], IngestReport],
    *,
    tries: int = 3,
) -> IngestReport:
    """Run ``write`` in its own transaction, retrying when a concurrent writer recorded the
    same report first (PostgreSQL reports that as a unique violation at flush)."""
    for attempt in range(tries):
        try:
            with sessions.begin() as s:
                return write(s)
        except IntegrityError:
            if attempt == tries - 1:
                raise
            log.info("a concurrent writer recorded the same receipt; retrying as a duplicate")
    raise AssertionError("unreachable")


def rematch_unmatched(
    session: Session, channels: Mapping[str, Collection[str]], *, at: datetime | None = None
) -> int:
    """Give every unmatched receipt another chance: its attempt may have been recorded since
    (a push can arrive before the dispatcher writes the provider id it carries)."""
    moment = at or clock.now()
    rows = session.scalars(
        select(DeliveryReceipt)
        .where(DeliveryReceipt.attempt_id.is_(None), DeliveryReceipt.outcome != "unreadable")
        .order_by(DeliveryReceipt.id)
    ).all()
    matched = 0
    for row in rows:
        scope = [row.channel] if row.channel else channels.get(row.provider, ())
        match = match_attempt(session, _report_of(row), scope)
        if match is None:
            continue
        attempt, matched_by = match
        _apply(session, row, attempt, matched_by, moment, None)
        matched += 1
    return matched


def ingest_rematch(
    sessions: sessionmaker[Session],
    channels: Mapping[str, Collection[str]],
    at: datetime | None = None,
) -> int:
    """:func:`rematch_unmatched` in its own transaction."""
    with sessions.begin() as s:
        return rematch_unmatched(s, channels, at=at)


def describe_receipt(row: DeliveryReceipt, case_ref: str | None) -> dict[str, Any]:
    """One row of ``outreach receipts list``."""
    return {
        "id": row.id,
        "received": format_at(row.received_at)[:19] + "Z",
        "provider": row.provider,
        "via": row.via,
        "outcome": row.outcome,
        "stage": row.stage or None,
        "code": row.code,
        "provider_id": row.provider_id,
        "out_id": row.out_id,
        "recipient": row.recipient,
        "attempt": row.attempt_id,
        "case": case_ref,
        "matched_by": row.matched_by,
        "body_sha256": row.body_sha256,
    }
