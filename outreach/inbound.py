"""Answers: poll the IMAP mailbox, tie each message to a case, and chain what it changes.

The ladder stops the moment someone answers, so this module decides, for every message in the
``[inbound]`` mailbox, which case it belongs to and what it proves:

=================  ==========================================================================
message            effect (events on the case's chain, in the same transaction)
=================  ==========================================================================
a person's answer  ``replied``; the case leaves ``open`` (state ``replied``) so the ladder
                   plans nothing more; the contact points that demonstrably work (the one our
                   notice went to, and the sender's if it is a known contact of the case's
                   parties) become ``good`` (``contact_good``)
auto-reply         ``auto_reply`` only: an out-of-office proves nothing was read, the ladder
                   goes on, and "this mailbox is not monitored" is an auto-reply too, so the
                   contact is not marked good either
DSN failed         the attempt becomes ``bounced`` (``bounced``); when the report blames the
                   address (a 5.x.x other than size, content or policy, exactly as
                   ``channels.smtp.classify`` judges a refusal at send time) its contact point
                   becomes ``bad`` (``contact_bad``) and the ladder's fallback takes the next one
DSN delayed        ``delivery_delayed`` only
DSN delivered      ``delivered``; the attempt ``delivered``, its contact ``good``
MDN displayed      ``read_receipt`` (other dispositions: ``mdn``); contact ``good``
prose bounce       held: without an RFC 3464 report nothing can be concluded automatically
=================  ==========================================================================

Matching trusts headers before text: one of our Message-IDs in ``In-Reply-To``, in a report's
returned headers or ``Original-Message-ID``, or in ``References`` (it names the exact attempt,
see :mod:`channels.mime`); a DSN's ``Original-Envelope-Id`` (our ENVID is the attempt's key);
``X-Outreach-Reference``; then the case reference quoted in the subject, then in the body.
A subject or body citing two cases is ambiguous. Whatever matches nothing is *held* in
``inbound_messages`` for ``outreach inbox`` and chained as ``mail_held`` on the ``inbox``
chain — never dropped; a person then assigns it to a case (same effects as a match) or
dismisses it with a note.

Idempotence: a message is keyed by the SHA-256 of its exact bytes (unique in the database, so
two pollers racing on one message record it once) and a second copy with a Message-ID already
recorded is kept but changes nothing. The IMAP side only flags ``\\Seen`` (or moves the message
to ``processed_mailbox``) after the database has committed, so a crash in between means the
message is fetched again next time and found already recorded. With ``processed_mailbox`` set,
every message left in the mailbox is unprocessed by construction, so the poll takes them all
(a person reading the mailbox in a mail client cannot hide one by opening it); without it, the
poll takes the ``UNSEEN`` ones.

IMAP is stdlib :mod:`imaplib` run in a worker thread (:func:`asyncio.to_thread`): one short
session per poll needs no asyncio IMAP client, and imaplib is maintained with CPython. TLS is
implicit (993) or STARTTLS (143, refused when the server does not offer it — never a silent
downgrade); plain text only to a loopback host. Login uses SASL PLAIN (UTF-8 passwords) when
offered, else LOGIN. The password is read from the variable named by ``password_env`` at poll
time and scrubbed from every error text; it never reaches a log, the database or an event.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import imaplib
import logging
import re
import ssl
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import suppress
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from channels.base import is_loopback
from outreach import clock
from outreach.config import Config, InboundConfig
from outreach.mailparse import (
    DsnRecipient,
    ParsedMail,
    message_ids,
    our_message_id,
    parse_mail,
)
from outreach.models_inbound import InboundMessage
from outreach.proof import record_event, store_blob
from outreach.store import Attempt, Blob, Case, ContactPoint, Notice, Party, no_case
from outreach.store import find_case as store_find_case

log = logging.getLogger("outreach.inbound")

INBOX_CHAIN = "inbox"  # held, assigned and dismissed mail: evidence of receipt before a case
FETCH_CHUNK = 25  # messages per UID FETCH: one round trip each, bounded memory
MAX_PER_POLL = 500  # the rest waits for the next poll (reported as ``remaining``)
IMAP_TIMEOUT = 60.0
_DEFAULT_PORTS = {"tls": 993, "starttls": 143, "none": 143}
_STOPPING_STATES = ("open", "paused")  # states a reply moves to "replied"

# Event kind recorded -> PollReport counter.
_COUNTERS = {
    "replied": "replies",
    "auto_reply": "auto_replies",
    "bounced": "bounces",
    "delivery_delayed": "delays",
    "delivered": "delivered",
    "read_receipt": "read_receipts",
}


class InboundError(Exception):
    """The poll could not run (connection, TLS, login, mailbox). Never carries a secret."""


class InboundConfigError(InboundError):
    """``[inbound]`` cannot be used as configured (missing password variable, plain text to a
    remote host, unreadable CA file)."""


class InboxError(Exception):
    """A usage error in ``inbox assign``/``dismiss``: no such message or case, wrong status."""


@dataclass
class PollReport:
    configured: bool = True
    mailbox: str = ""
    fetched: int = 0  # messages read from the server this poll
    recorded: int = 0  # new rows in inbound_messages
    already: int = 0  # bytes seen before: nothing recorded
    replies: int = 0
    auto_replies: int = 0
    bounces: int = 0
    delays: int = 0
    delivered: int = 0
    read_receipts: int = 0
    held: int = 0
    skipped: int = 0
    remaining: int = 0  # left in the mailbox for the next poll

    def summary(self) -> str:
        if not self.configured:
            return "inbound: no [inbound] section in the config; nothing polled"
        parts = [
            f"{n} {one if n == 1 else many}"
            for n, one, many in (
                (self.replies, "reply", "replies"),
                (self.auto_replies, "auto-reply", "auto-replies"),
                (self.bounces, "bounce", "bounces"),
                (self.delays, "delay", "delays"),
                (self.delivered, "delivered", "delivered"),
                (self.read_receipts, "read receipt", "read receipts"),
                (self.held, "held for review", "held for review"),
                (self.skipped, "skipped", "skipped"),
            )
            if n
        ]
        line = f"inbound {self.mailbox}: fetched {self.fetched}, recorded {self.recorded}"
        line += f" ({', '.join(parts)})" if parts else ""
        line += f", {self.already} already recorded"
        if self.remaining:
            line += f", {self.remaining} left for the next poll"
        return line


@dataclass(frozen=True)
class Recorded:
    """What became of one message: its row and the events it caused."""

    message: int
    status: str  # matched | held | skipped | assigned | already
    effects: tuple[str, ...] = ()
    case: str | None = None


@dataclass
class Match:
    """Where a message belongs: its case, the attempt when the message names one, the clue
    that decided (``by``), or why nothing matched (``problem``)."""

    case: Case | None = None
    attempt: Attempt | None = None
    by: str | None = None
    problem: str | None = None


# --------------------------------------------------------------------------- polling


async def poll(
    sessions: sessionmaker[Session],
    config: Config,
    *,
    env: Mapping[str, str],
    now: Callable[[], datetime] = clock.now,
) -> PollReport:
    """Fetch the answers mailbox once and record every new message. Returns counts.

    Raises :class:`InboundConfigError` when ``[inbound]`` cannot be used and
    :class:`InboundError` when the server cannot be reached or refuses us; what was recorded
    before a failure stays recorded, and the rest is fetched again next time.
    """
    inbound = config.inbound
    if inbound is None:
        return PollReport(configured=False)
    password = env.get(inbound.password_env)
    if not password:
        raise InboundConfigError(
            f"inbound.password_env: environment variable {inbound.password_env} is not set"
        )
    if inbound.security == "none" and not is_loopback(inbound.imap_host):
        raise InboundConfigError(
            'inbound.security: plain-text IMAP would expose the password; use "tls" or '
            '"starttls" ("none" is only for a server on this machine)'
        )
    context = _tls_context(config, inbound) if inbound.security != "none" else None
    return await asyncio.to_thread(
        _poll_blocking, sessions, config, inbound, password, context, now
    )


def _poll_blocking(
    sessions: sessionmaker[Session],
    config: Config,
    inbound: InboundConfig,
    password: str,
    context: ssl.SSLContext | None,
    now: Callable[[], datetime],
) -> PollReport:
    report = PollReport(mailbox=inbound.mailbox)
    prefix = config.sender.reference_prefix
    with _ImapSession(inbound, password, context) as imap:
        uidvalidity = imap.select(inbound.mailbox)
        # Moved-away mail leaves only unprocessed mail behind: take all of it. Otherwise rely
        # on \Seen, which is what we set after recording.
        criteria = "UNDELETED" if inbound.processed_mailbox else "UNSEEN"
        uids = imap.search(criteria)
        todo = uids[:MAX_PER_POLL]
        report.remaining = len(uids) - len(todo)
        if todo and inbound.processed_mailbox:
            imap.ensure_mailbox(inbound.processed_mailbox)
        for start in range(0, len(todo), FETCH_CHUNK):
            done: list[int] = []
            for uid, raw, mailbox_date in imap.fetch(todo[start : start + FETCH_CHUNK]):
                report.fetched += 1
                outcome = _record_fetched(
                    sessions,
                    raw,
                    reference_prefix=prefix,
                    mailbox=inbound.mailbox,
                    uidvalidity=uidvalidity,
                    uid=uid,
                    mailbox_date=mailbox_date,
                    at=now(),
                )
                _count(report, outcome)
                done.append(uid)
            if done:
                imap.mark_processed(done, inbound.processed_mailbox)
    log.info("%s", report.summary())
    return report


def _record_fetched(sessions: sessionmaker[Session], raw: bytes, **kwargs: Any) -> Recorded | None:
    """One message in its own transaction; None when another poller recorded it first."""
    try:
        with sessions.begin() as s:
            return record_message(s, raw, **kwargs)
    except IntegrityError:
        # A concurrent poll of the same mailbox committed these bytes between our check and
        # our insert (unique sha256 / blob). Anything else is a real error: the message must
        # not be flagged as processed, so re-raise it.
        digest = hashlib.sha256(raw).hexdigest()
        with sessions() as s:
            if s.scalar(select(InboundMessage.id).where(InboundMessage.sha256 == digest)) is None:
                raise
        return None


def _count(report: PollReport, outcome: Recorded | None) -> None:
    if outcome is None or outcome.status == "already":
        report.already += 1
        return
    report.recorded += 1
    if outcome.status == "held":
        report.held += 1
    elif outcome.status == "skipped":
        report.skipped += 1
    for effect in outcome.effects:
        counter = _COUNTERS.get(effect)
        if counter:
            setattr(report, counter, getattr(report, counter) + 1)


# --------------------------------------------------------------------------- recording


def record_message(
    session: Session,
    raw: bytes,
    *,
    reference_prefix: str | None = None,
    mailbox: str = "INBOX",
    uidvalidity: int | None = None,
    uid: int | None = None,
    mailbox_date: datetime | None = None,
    at: datetime | None = None,
) -> Recorded:
    """Record one message's exact bytes and apply what it proves, in the caller's transaction.

    A message whose bytes are already recorded changes nothing (``status="already"``).
    """
    now = at or clock.now()
    sha = hashlib.sha256(raw).hexdigest()
    existing = session.scalars(
        select(InboundMessage).where(InboundMessage.sha256 == sha)
    ).one_or_none()
    if existing is not None:
        return Recorded(existing.id, "already")
    parsed = parse_mail(raw, reference_prefix=reference_prefix)
    store_blob(session, raw, "message/rfc822")
    row = InboundMessage(
        sha256=sha,
        message_id=parsed.message_id[:400] if parsed.message_id else None,
        mailbox=mailbox,
        uidvalidity=uidvalidity,
        uid=uid,
        mailbox_date=mailbox_date,
        received_at=now,
        sent_at=parsed.date,
        from_address=(parsed.from_address or "")[:400] or None,
        from_name=parsed.from_name[:400],
        subject=parsed.subject,
        kind=parsed.kind,
        status="held",
        details=_details(parsed),
        updated_at=now,
    )
    session.add(row)
    session.flush()  # the unique sha256 index: a concurrent poller of this message waits here

    skip = _skip_reason(session, row, parsed)
    if skip is not None:
        row.status = "skipped"
        row.note = skip
        return Recorded(row.id, "skipped")

    match = find_match(session, parsed)
    if match.case is None or parsed.kind == "bounce":
        reason = match.problem or ""
        if parsed.kind == "bounce":
            reason = (
                "a bounce without a machine-readable (RFC 3464) report: read it, then assign "
                "it to its case or dismiss it"
            )
            row.case_id = match.case.id if match.case is not None else None
        _hold(session, row, parsed, reason, now)
        return Recorded(row.id, "held")
    effects = apply_effects(session, row, parsed, match, now)
    return Recorded(row.id, "matched", tuple(effects), match.case.reference)


def _details(parsed: ParsedMail) -> dict[str, Any]:
    """What a reviewer needs in ``inbox`` without opening the blob (plain JSON, no floats)."""
    out: dict[str, Any] = {
        "to": list(parsed.to),
        "in_reply_to": list(parsed.in_reply_to),
        "references": list(parsed.references[-10:]),
        "clues": [{"reference": c.reference, "source": c.source} for c in parsed.clues],
    }
    if parsed.auto_reply_reason:
        out["auto_reply_reason"] = parsed.auto_reply_reason
    if parsed.dsn is not None:
        out["dsn"] = [
            {
                "recipient": r.final_recipient,
                "action": r.action,
                "status": r.status,
                "diagnostic": r.diagnostic_code,
            }
            for r in parsed.dsn.recipients
        ]
    if parsed.mdn is not None:
        out["mdn"] = {"disposition": parsed.mdn.disposition}
    if parsed.defects:
        out["defects"] = list(parsed.defects)
    return out


def _skip_reason(session: Session, row: InboundMessage, parsed: ParsedMail) -> str | None:
    """Our own notice (a copy that reached this mailbox), or another copy of a message whose
    Message-ID is already recorded (delivered twice with different trace headers)."""
    if not parsed.message_id:
        return None
    own = session.scalars(select(Attempt.id).where(Attempt.message_id == parsed.message_id)).first()
    if own is not None:
        return f"a copy of our own notice (attempt {own})"
    earlier = session.scalars(
        select(InboundMessage.id)
        .where(InboundMessage.message_id == row.message_id, InboundMessage.id != row.id)
        .order_by(InboundMessage.id)
    ).first()
    if earlier is not None:
        return f"another copy of message {earlier} (same Message-ID, different bytes)"
    return None


def _hold(
    session: Session, row: InboundMessage, parsed: ParsedMail, reason: str, now: datetime
) -> None:
    row.status = "held"
    row.note = reason
    row.updated_at = now
    record_event(
        session,
        INBOX_CHAIN,
        "mail_held",
        {
            "inbound": row.id,
            "sha256": row.sha256,
            "message_id": parsed.message_id,
            "kind": parsed.kind,
            "from": parsed.from_address,
            "subject": parsed.subject,
            "date": parsed.date.isoformat() if parsed.date else None,
            "mailbox_date": row.mailbox_date.isoformat() if row.mailbox_date else None,
            "reason": reason,
        },
        at=now,
    )


# --------------------------------------------------------------------------- matching


def _case_of(session: Session, attempt: Attempt) -> Case:
    notice = session.get(Notice, attempt.notice_id)
    assert notice is not None
    case = session.get(Case, notice.case_id)
    assert case is not None
    return case


def _attempt_by_message_id(session: Session, mid: str) -> Attempt | None:
    found = session.scalars(select(Attempt).where(Attempt.message_id == mid)).first()
    if found is not None:
        return found
    ours = our_message_id(mid)
    if ours is None:
        return None
    # The domain part may have been re-cased in transit; the key alone is unique.
    return session.scalars(select(Attempt).where(Attempt.idempotency_key == ours.key)).one_or_none()


def _case_by_reference(session: Session, reference: str) -> Case | None:
    return session.scalars(select(Case).where(Case.reference == reference)).one_or_none()


def find_match(session: Session, parsed: ParsedMail) -> Match:
    """The case (and, when the message names it, the attempt) this message belongs to."""
    for mid, source in parsed.pointed_message_ids():
        attempt = _attempt_by_message_id(session, mid)
        if attempt is not None:
            return Match(_case_of(session, attempt), attempt, source)
    if parsed.dsn is not None and parsed.dsn.envelope_id:
        attempt = session.scalars(
            select(Attempt).where(Attempt.idempotency_key == parsed.dsn.envelope_id)
        ).one_or_none()
        if attempt is not None:
            return Match(_case_of(session, attempt), attempt, "envelope_id")
    unknown: list[str] = []
    for clue in parsed.clues:
        if clue.source in ("subject", "body"):
            continue
        case = _case_by_reference(session, clue.reference)
        if case is not None:
            return Match(case, None, clue.source)
        unknown.append(clue.reference)
    for source in ("subject", "body"):
        refs = list(dict.fromkeys(c.reference for c in parsed.clues if c.source == source))
        cases = [c for c in (_case_by_reference(session, r) for r in refs) if c is not None]
        unknown += [r for r in refs if r not in {c.reference for c in cases}]
        if len(cases) == 1:
            return Match(cases[0], None, source)
        if len(cases) > 1:
            listed = ", ".join(c.reference for c in cases)
            return Match(problem=f"the {source} cites several cases ({listed}): which one?")
    if unknown:
        listed = ", ".join(dict.fromkeys(unknown))
        return Match(problem=f"cites {listed}, which matches no case")
    return Match(
        problem="answers none of our messages and cites no case reference (subject, body, headers)"
    )


def _attempt_for_recipient(
    session: Session, case: Case, addresses: Sequence[str]
) -> Attempt | None:
    """The case's latest e-mail attempt to one of ``addresses`` (a report naming no message)."""
    wanted = [a.lower() for a in addresses if a]
    if not wanted:
        return None
    return session.scalars(
        select(Attempt)
        .join(Notice, Attempt.notice_id == Notice.id)
        .where(Notice.case_id == case.id, Attempt.kind == "email", Attempt.recipient.in_(wanted))
        .order_by(Attempt.id.desc())
    ).first()


def _case_party_ids(session: Session, case: Case) -> set[int]:
    """Parties the case has written to, and the agents and acquirers of its terminals."""
    ids = set(session.scalars(select(Notice.party_id).where(Notice.case_id == case.id)))
    for t in case.terminals:
        ids.add(t.acquirer_id)
        if t.agent_id is not None:
            ids.add(t.agent_id)
    return ids


def _sender_contact(session: Session, case: Case, address: str | None) -> ContactPoint | None:
    """The sender, when it is a known e-mail contact point of one of the case's parties."""
    if not address:
        return None
    parties = _case_party_ids(session, case)
    if not parties:
        return None
    return session.scalars(
        select(ContactPoint).where(
            ContactPoint.kind == "email",
            ContactPoint.value == address.lower(),
            ContactPoint.party_id.in_(parties),
        )
    ).first()


# --------------------------------------------------------------------------- effects


def apply_effects(
    session: Session, row: InboundMessage, parsed: ParsedMail, match: Match, now: datetime
) -> list[str]:
    """Chain what the message proves on its case and update attempts, contacts and the case."""
    case = match.case
    assert case is not None
    row.case_id = case.id
    row.attempt_id = match.attempt.id if match.attempt is not None else None
    row.matched_by = match.by
    row.status = "assigned" if match.by == "assigned" else "matched"
    row.updated_at = now
    base: dict[str, Any] = {
        "inbound": row.id,
        "sha256": row.sha256,
        "message_id": parsed.message_id,
        "from": parsed.from_address,
        "from_name": parsed.from_name,
        "subject": parsed.subject,
        "date": parsed.date.isoformat() if parsed.date else None,
        "mailbox_date": row.mailbox_date.isoformat() if row.mailbox_date else None,
        "matched_by": match.by,
    }
    if parsed.kind == "dsn":
        return _apply_dsn(session, row, case, match.attempt, parsed, base, now)
    if parsed.kind == "mdn":
        return _apply_mdn(session, row, case, match.attempt, parsed, base, now)
    if parsed.kind == "bounce":  # only through ``inbox assign``: evidence, no conclusion
        record_event(
            session,
            case.chain,
            "bounce_unparsed",
            base,
            case_id=case.id,
            attempt_id=row.attempt_id,
            at=now,
        )
        return ["bounce_unparsed"]
    attempt = match.attempt
    if parsed.kind == "auto_reply":
        record_event(
            session,
            case.chain,
            "auto_reply",
            {
                **base,
                "attempt": attempt.id if attempt else None,
                "reason": parsed.auto_reply_reason,
            },
            case_id=case.id,
            attempt_id=row.attempt_id,
            at=now,
        )
        return ["auto_reply"]
    return _apply_reply(session, case, attempt, parsed, base, now)


def _apply_reply(
    session: Session,
    case: Case,
    attempt: Attempt | None,
    parsed: ParsedMail,
    base: dict[str, Any],
    now: datetime,
) -> list[str]:
    before = case.state
    if case.state in _STOPPING_STATES:
        case.state = "replied"
        case.updated_at = now
    sender = _sender_contact(session, case, parsed.from_address)
    record_event(
        session,
        case.chain,
        "replied",
        {
            **base,
            "attempt": attempt.id if attempt else None,
            "sender_contact": _contact_ref(session, sender),
            "state_before": before,
            "state": case.state,
        },
        case_id=case.id,
        attempt_id=attempt.id if attempt else None,
        at=now,
    )
    effects = ["replied"]
    reason = f"answered (inbound message {base['inbound']})"
    for cp in dict.fromkeys(c for c in (attempt.contact if attempt else None, sender) if c):
        if _mark_contact(session, case, cp, "good", reason, base, now, attempt):
            effects.append("contact_good")
    return effects


def _apply_dsn(
    session: Session,
    row: InboundMessage,
    case: Case,
    attempt: Attempt | None,
    parsed: ParsedMail,
    base: dict[str, Any],
    now: datetime,
) -> list[str]:
    dsn = parsed.dsn
    assert dsn is not None
    effects: list[str] = []
    for rec in dsn.recipients:
        target = _dsn_attempt(session, case, attempt, rec, len(dsn.recipients))
        if target is not None and row.attempt_id is None:
            row.attempt_id = target.id  # found by its recipient: the report named no message
        data = {
            **base,
            "attempt": target.id if target else None,
            "recipient": target.recipient if target else None,
            "final_recipient": rec.final_recipient,
            "original_recipient": rec.original_recipient,
            "action": rec.action,
            "status": rec.status,
            "diagnostic_code": rec.diagnostic_code,
            "remote_mta": rec.remote_mta,
            "reporting_mta": dsn.reporting_mta,
            "envelope_id": dsn.envelope_id,
        }
        if target is None:
            data["note"] = "no e-mail attempt of this case went to this recipient"
        attempt_id = target.id if target else None
        if rec.action == "failed":
            data["contact_blamed"] = rec.blames_recipient
            if target is not None and target.state != "bounced":
                target.state = "bounced"
                target.last_error = rec.diagnostic_code or f"bounced: {rec.status}"
                target.updated_at = now
            record_event(
                session, case.chain, "bounced", data, case_id=case.id, attempt_id=attempt_id, at=now
            )
            effects.append("bounced")
            if target is not None and rec.blames_recipient:
                reason = f"bounced {rec.status}: {rec.diagnostic_code or rec.action}"
                if _mark_contact(session, case, target.contact, "bad", reason, base, now, target):
                    effects.append("contact_bad")
        elif rec.action == "delayed":
            data["will_retry_until"] = rec.will_retry_until
            record_event(
                session,
                case.chain,
                "delivery_delayed",
                data,
                case_id=case.id,
                attempt_id=attempt_id,
                at=now,
            )
            effects.append("delivery_delayed")
        elif rec.action == "delivered":
            if target is not None and target.state in ("sent", "pending", "unknown"):
                target.state = "delivered"
                target.updated_at = now
            record_event(
                session,
                case.chain,
                "delivered",
                data,
                case_id=case.id,
                attempt_id=attempt_id,
                at=now,
            )
            effects.append("delivered")
            if target is not None:
                reason = f"delivery reported by {dsn.reporting_mta or 'the relay'}"
                if _mark_contact(session, case, target.contact, "good", reason, base, now, target):
                    effects.append("contact_good")
        else:  # relayed, expanded: handed on, nothing proven about the mailbox
            record_event(
                session,
                case.chain,
                "delivery_reported",
                data,
                case_id=case.id,
                attempt_id=attempt_id,
                at=now,
            )
            effects.append("delivery_reported")
    return effects


def _dsn_attempt(
    session: Session, case: Case, attempt: Attempt | None, rec: DsnRecipient, count: int
) -> Attempt | None:
    """Our messages have one recipient each, so a single-recipient report about a message we
    identified is about that attempt even when the far side rewrote the address (an alias)."""
    if attempt is not None and (count == 1 or attempt.recipient.lower() in rec.addresses()):
        return attempt
    return _attempt_for_recipient(session, case, rec.addresses())


def _apply_mdn(
    session: Session,
    row: InboundMessage,
    case: Case,
    attempt: Attempt | None,
    parsed: ParsedMail,
    base: dict[str, Any],
    now: datetime,
) -> list[str]:
    mdn = parsed.mdn
    assert mdn is not None
    target = attempt or _attempt_for_recipient(
        session,
        case,
        [a for a in (mdn.original_recipient, mdn.final_recipient, parsed.from_address) if a],
    )
    if target is not None and row.attempt_id is None:
        row.attempt_id = target.id
    displayed = mdn.disposition_type == "displayed"
    kind = "read_receipt" if displayed else "mdn"
    record_event(
        session,
        case.chain,
        kind,
        {
            **base,
            "attempt": target.id if target else None,
            "disposition": mdn.disposition,
            "reporting_ua": mdn.reporting_ua,
            "final_recipient": mdn.final_recipient,
            "original_message_id": mdn.original_message_id,
        },
        case_id=case.id,
        attempt_id=target.id if target else None,
        at=now,
    )
    effects = [kind]
    if displayed and target is not None:
        reason = f"read receipt (inbound message {base['inbound']})"
        if _mark_contact(session, case, target.contact, "good", reason, base, now, target):
            effects.append("contact_good")
    return effects


def _contact_ref(session: Session, cp: ContactPoint | None) -> dict[str, Any] | None:
    if cp is None:
        return None
    party = session.get(Party, cp.party_id)
    return {"party": party.key if party else None, "kind": cp.kind, "value": cp.value}


def _mark_contact(
    session: Session,
    case: Case,
    cp: ContactPoint,
    status: str,
    reason: str,
    base: Mapping[str, Any],
    now: datetime,
    attempt: Attempt | None,
) -> bool:
    """Set a contact point's status and chain ``contact_good``/``contact_bad``; False when it
    already had that status (the first piece of evidence is the one chained)."""
    if cp.status == status:
        return False
    before = cp.status
    cp.status = status
    cp.status_reason = reason
    record_event(
        session,
        case.chain,
        f"contact_{status}",
        {
            **(_contact_ref(session, cp) or {}),
            "status_before": before,
            "reason": reason,
            "inbound": base["inbound"],
            "sha256": base["sha256"],
        },
        case_id=case.id,
        attempt_id=attempt.id if attempt else None,
        at=now,
    )
    return True


# --------------------------------------------------------------------------- review


def find_message(session: Session, ident: str) -> InboundMessage:
    """A message by its ``inbox`` id or its Message-ID (with or without the brackets)."""
    ident = ident.strip()
    row: InboundMessage | None = None
    if ident.isdigit():
        row = session.get(InboundMessage, int(ident))
    else:
        mids = message_ids(ident if ident.startswith("<") else f"<{ident}>")
        if mids:
            row = session.scalars(
                select(InboundMessage)
                .where(InboundMessage.message_id == mids[0])
                .order_by(InboundMessage.id)
            ).first()
    if row is None:
        raise InboxError(f"no message {ident!r} in the inbox (see `outreach inbox --all`)")
    return row


def find_case(session: Session, ref: str) -> Case:
    # References are upper case; a lower-case one typed at the prompt still names its case.
    case = store_find_case(session, ref) or store_find_case(session, ref.upper())
    if case is None:
        raise InboxError(no_case(ref))
    return case


def message_bytes(session: Session, row: InboundMessage) -> bytes:
    blob = session.get(Blob, row.sha256)
    assert blob is not None  # a foreign key
    return blob.data


def assign_message(
    session: Session,
    ident: str,
    case_ref: str,
    *,
    note: str | None = None,
    reference_prefix: str | None = None,
    at: datetime | None = None,
) -> Recorded:
    """Attach a held (or dismissed) message to a case: the effects of a match, chained, plus
    ``mail_assigned`` on the inbox chain saying who decided."""
    now = at or clock.now()
    row = find_message(session, ident)
    if row.status not in ("held", "dismissed"):
        current = session.get(Case, row.case_id) if row.case_id is not None else None
        where = f" to case {current.reference}" if current is not None else ""
        raise InboxError(f"message {row.id} is {row.status}{where}; only held mail is assigned")
    case = find_case(session, case_ref)
    parsed = parse_mail(message_bytes(session, row), reference_prefix=reference_prefix)
    attempt: Attempt | None = None
    for mid, _source in parsed.pointed_message_ids():
        found = _attempt_by_message_id(session, mid)
        if found is not None and _case_of(session, found).id == case.id:
            attempt = found
            break
    effects = apply_effects(session, row, parsed, Match(case, attempt, "assigned"), now)
    if note:
        row.note = note
    record_event(
        session,
        INBOX_CHAIN,
        "mail_assigned",
        {"inbound": row.id, "sha256": row.sha256, "case": case.reference, "note": note},
        at=now,
    )
    return Recorded(row.id, "assigned", tuple(effects), case.reference)


def dismiss_message(
    session: Session, ident: str, note: str, *, at: datetime | None = None
) -> Recorded:
    """Mark a held message as reviewed and of no consequence. It is kept, with the note."""
    now = at or clock.now()
    row = find_message(session, ident)
    if row.status != "held":
        raise InboxError(f"message {row.id} is {row.status}; only held mail is dismissed")
    row.status = "dismissed"
    row.note = note
    row.updated_at = now
    record_event(
        session,
        INBOX_CHAIN,
        "mail_dismissed",
        {"inbound": row.id, "sha256": row.sha256, "note": note},
        at=now,
    )
    return Recorded(row.id, "dismissed")


# --------------------------------------------------------------------------- IMAP


def _tls_context(config: Config, inbound: InboundConfig) -> ssl.SSLContext:
    cafile: Path | None = config.resolve_path(inbound.ca_file) if inbound.ca_file else None
    try:
        ctx = ssl.create_default_context(cafile=str(cafile) if cafile else None)
    except (OSError, ssl.SSLError) as exc:
        raise InboundConfigError(f"inbound.ca_file: cannot load {cafile}: {exc}") from None
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx


def imap_utf7(name: str) -> str:
    """RFC 3501 5.1.3 modified UTF-7, how IMAP spells a mailbox name such as ``已处理``."""
    out: list[str] = []
    pending: list[str] = []

    def flush() -> None:
        if pending:
            data = "".join(pending).encode("utf-16-be")
            out.append("&" + base64.b64encode(data).decode().rstrip("=").replace("/", ",") + "-")
            pending.clear()

    for ch in name:
        if 0x20 <= ord(ch) <= 0x7E:
            flush()
            out.append("&-" if ch == "&" else ch)
        else:
            pending.append(ch)
    flush()
    return "".join(out)


def _mailbox_arg(name: str) -> str:
    encoded = imap_utf7(name).replace("\\", "\\\\").replace('"', '\\"')
    return f'"{encoded}"'


_INTERNALDATE = re.compile(rb'INTERNALDATE "([^"]+)"')
_FETCH_UID = re.compile(rb"\bUID (\d+)")


def _internaldate(meta: bytes) -> datetime | None:
    m = _INTERNALDATE.search(meta)
    if m is None:
        return None
    try:
        moment = datetime.strptime(m[1].decode().strip(), "%d-%b-%Y %H:%M:%S %z")
    except ValueError:
        return None
    return moment.astimezone(UTC)


class _ImapSession:
    """One blocking IMAP session for one poll. Every error leaves as :class:`InboundError`
    with the password (and its SASL form) scrubbed from the server's words."""

    def __init__(
        self, inbound: InboundConfig, password: str, context: ssl.SSLContext | None
    ) -> None:
        self.cfg = inbound
        self.port = inbound.imap_port or _DEFAULT_PORTS[inbound.security]
        self._password = password
        self._context = context
        self._imap: imaplib.IMAP4 | None = None
        self.capabilities: frozenset[str] = frozenset()
        plain = b"\0" + inbound.username.encode() + b"\0" + password.encode()
        self._secrets = sorted({password, base64.b64encode(plain).decode()}, key=len, reverse=True)

    # -- errors

    def _scrub(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text

    def _fail(self, what: str, exc: BaseException | str) -> InboundError:
        detail = exc if isinstance(exc, str) else f"{type(exc).__name__}: {exc}"
        where = f"IMAP {self.cfg.imap_host}:{self.port}"
        return InboundError(self._scrub(f"{where}: {what}: {detail}"))

    @property
    def imap(self) -> imaplib.IMAP4:
        assert self._imap is not None
        return self._imap

    def _ok(self, what: str, result: tuple[str, list[Any]]) -> list[Any]:
        typ, data = result
        if typ != "OK":
            text = b" ".join(d for d in data if isinstance(d, bytes)).decode("utf-8", "replace")
            raise self._fail(what, f"{typ} {text}".strip())
        return data

    # -- session

    def __enter__(self) -> _ImapSession:
        try:
            self._step("cannot connect", self._connect)
            self._step("cannot log in", self._login)
        except InboundError:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _step(self, what: str, action: Callable[[], None]) -> None:
        try:
            action()
        except (OSError, imaplib.IMAP4.error) as exc:  # ssl.SSLError is an OSError
            raise self._fail(what, exc) from None

    def _connect(self) -> None:
        host, timeout = self.cfg.imap_host, IMAP_TIMEOUT
        if self.cfg.security == "tls":
            self._imap = imaplib.IMAP4_SSL(
                host, self.port, ssl_context=self._context, timeout=timeout
            )
            return
        self._imap = imaplib.IMAP4(host, self.port, timeout=timeout)
        if self.cfg.security == "starttls":
            # imaplib raises when STARTTLS is not offered: never fall back to plain text.
            self._imap.starttls(ssl_context=self._context)

    def _login(self) -> None:
        imap = self.imap
        if "AUTH=PLAIN" in imap.capabilities:
            payload = b"\0" + self.cfg.username.encode() + b"\0" + self._password.encode()
            imap.authenticate("PLAIN", lambda _challenge: payload)
        else:
            imap.login(self.cfg.username, self._password)
        data = self._ok("CAPABILITY", imap.capability())
        words = b" ".join(d for d in data if isinstance(d, bytes)).decode("ascii", "replace")
        self.capabilities = frozenset(words.upper().split())

    def close(self) -> None:
        imap, self._imap = self._imap, None
        if imap is None:
            return
        with suppress(OSError, imaplib.IMAP4.error, ValueError):
            imap.logout()

    def _run(self, what: str, call: Callable[[], tuple[str, list[Any]]]) -> list[Any]:
        try:
            return self._ok(what, call())
        except InboundError:
            raise
        except (OSError, imaplib.IMAP4.error) as exc:
            raise self._fail(what, exc) from None

    # -- commands

    def select(self, mailbox: str) -> int | None:
        self._run(
            f"cannot open mailbox {mailbox!r}", lambda: self.imap.select(_mailbox_arg(mailbox))
        )
        _name, values = self.imap.response("UIDVALIDITY")
        value = values[0] if values else None
        return int(value) if isinstance(value, bytes) and value.isdigit() else None

    def search(self, criteria: str) -> list[int]:
        data = self._run("UID SEARCH", lambda: self.imap.uid("SEARCH", criteria))
        words = b" ".join(d for d in data if isinstance(d, bytes)).split()
        return sorted(int(w) for w in words if w.isdigit())

    def ensure_mailbox(self, mailbox: str) -> None:
        """Create the processed-mail folder when missing (CREATE on an existing one fails
        harmlessly; a real problem shows up at MOVE with the server's words)."""
        with suppress(OSError, imaplib.IMAP4.error):
            self.imap.create(_mailbox_arg(mailbox))

    def fetch(self, uids: Sequence[int]) -> Iterator[tuple[int, bytes, datetime | None]]:
        """(uid, exact bytes, INTERNALDATE). BODY.PEEK so fetching sets no flag: \\Seen is
        set only after the message is recorded."""
        if not uids:
            return
        data = self._run(
            "UID FETCH",
            lambda: self.imap.uid(
                "FETCH", ",".join(map(str, uids)), "(UID INTERNALDATE BODY.PEEK[])"
            ),
        )
        for i, item in enumerate(data):
            if not isinstance(item, tuple) or len(item) < 2:
                continue
            meta = bytes(item[0])
            after = data[i + 1] if i + 1 < len(data) and isinstance(data[i + 1], bytes) else b""
            found = _FETCH_UID.search(meta) or _FETCH_UID.search(after)
            if found is None:
                continue
            yield int(found[1]), bytes(item[1]), _internaldate(meta + b" " + after)

    def mark_processed(self, uids: Sequence[int], processed_mailbox: str | None) -> None:
        uidset = ",".join(map(str, uids))
        imap = self.imap
        if processed_mailbox is None:
            self._run("UID STORE", lambda: imap.uid("STORE", uidset, "+FLAGS.SILENT", r"(\Seen)"))
            return
        target = _mailbox_arg(processed_mailbox)
        if "MOVE" in self.capabilities:
            self._run(
                f"UID MOVE to {processed_mailbox!r}", lambda: imap.uid("MOVE", uidset, target)
            )
            return
        self._run(f"UID COPY to {processed_mailbox!r}", lambda: imap.uid("COPY", uidset, target))
        self._run(
            "UID STORE", lambda: imap.uid("STORE", uidset, "+FLAGS.SILENT", r"(\Deleted \Seen)")
        )
        if "UIDPLUS" in self.capabilities:
            self._run("UID EXPUNGE", lambda: imap.uid("EXPUNGE", uidset))
