"""SMS delivery receipts: read each provider's report, find the attempt it is about, chain it.

A gateway's "accepted" (``sent``) only says the provider took the message; whether the phone
got it arrives later, as a delivery report, pushed to us (``outreach receipts serve``) or
pulled (``outreach receipts poll``). This module has three layers, kept apart as froide keeps
its bounce parsing apart from its mailbox polling:

* **Parsers** (pure, bytes in, :class:`DeliveryReport` out), one per documented format:
  Aliyun ``SmsReport`` HTTP push and ``QuerySendDetails``; Tencent's status callback and
  ``PullSmsSendStatus``; Twilio's status callback form.
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

import asyncio
import hashlib
import json
import logging
from collections.abc import Awaitable, Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any, Literal

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from channels.base import ChannelError
from outreach import clock, registry
from outreach.config import ENGINE_CHANNEL_KEYS, Config
from outreach.models_receipts import DeliveryReceipt
from outreach.proof import format_at, record_event, store_blob
from outreach.store import Attempt, Case, ContactPoint, Notice, Party, Send

log = logging.getLogger("outreach.receipts")

Provider = Literal["aliyun", "tencent", "twilio"]
Outcome = Literal["delivered", "undelivered", "progress"]

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

#: Carrier status codes that say the *number* cannot receive: it does not exist, is no longer
#: in service, or its owner blocked us (unsubscribed, complained). From Tencent Cloud's table of
#: receipt status codes; the China Mobile codes are the carrier's own and reach Aliyun's reports
#: unchanged. Deliberately narrow: most codes lump "invalid number" with "powered off"
#: (``UNDELIV``, ``MN:0001``, ``MI:0000``), and a phone that is merely off must not be marked
#: ``bad`` - the ladder's fallback abandons ``bad`` contact points.
PERMANENT_CARRIER_CODES = frozenset(
    {
        "MK:0000",  # invalid number
        "MK:0001",  # not found by the HLR: the number does not exist
        "MK00001",
        "MK:0012",  # invalid number
        "MK:0013",  # invalid number
        "MI:0010",  # the number has expired
        "XL:169",  # the number is invalid or does not exist
        "TA:169",  # invalid number
        "MX:0012",  # the recipient unsubscribed (replied TD)
        "DB:0141",  # complaint blacklist, cannot be removed
        "DB:0144",  # global blacklist
        "DB00144",
    }
)

#: Twilio callback ``ErrorCode`` values that blame the number (reference/providers.md §3.2):
#: unknown destination handset, landline or unreachable carrier, unsubscribed (STOP), not
#: SMS-capable. 30003 (unreachable, e.g. switched off) and 30007 (carrier filtering, i.e. our
#: content) are not the number's fault.
PERMANENT_TWILIO_CODES = frozenset({"30005", "30006", "21610", "21614"})

_TWILIO_DELIVERED = frozenset({"delivered", "read"})
_TWILIO_UNDELIVERED = frozenset({"undelivered", "failed", "canceled"})

#: Aliyun lets QuerySendDetails look back 30 days; a day's margin for the date boundary.
ALIYUN_QUERY_DAYS = 29
#: Attempt states that still wait for a receipt.
AWAITING_STATES = ("sent", "unknown")


class ReceiptFormatError(ValueError):
    """A body that is not the provider's documented format. Stored anyway, as unreadable."""


class ProviderAnswerError(Exception):
    """A status query the provider refused (``Code`` not ``OK``, ``Response.Error``, HTTP 4xx)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}" if message else code)
        self.code = code
        self.message = message


@dataclass(frozen=True, slots=True)
class DeliveryReport:
    """One delivery report, whatever its provider: what happened to which send.

    ``stage`` is the provider's own status word where it has several non-final ones (Twilio's
    ``queued``/``sent``...); ``reported_at`` is the provider's timestamp text, kept as sent;
    ``permanent`` says the number itself cannot receive.
    """

    provider: str
    outcome: str  # delivered | undelivered | progress
    provider_id: str | None
    out_id: str | None
    recipient: str | None
    code: str | None
    message: str | None = None
    reported_at: str | None = None
    permanent: bool = False
    stage: str = ""
    item: int = 0
    account: str | None = None  # Twilio AccountSid: which auth token signs it


def dedupe_key(report: DeliveryReport) -> str:
    """What makes two reports the same report: provider, send, outcome, stage and code.

    Timestamps are left out on purpose: the push and the poll of one Aliyun report spell
    their times differently, and must still count once.
    """
    identity = report.provider_id or report.out_id
    if not identity:
        identity = f"{report.recipient or ''}@{report.reported_at or ''}#{report.item}"
    parts = [report.provider, identity, report.outcome, report.stage, report.code or ""]
    return hashlib.sha256("\x1f".join(parts).encode("utf-8")).hexdigest()


# --------------------------------------------------------------------------- parsers (pure)


def _json(body: bytes) -> Any:
    try:
        return json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise ReceiptFormatError(f"not UTF-8 JSON: {exc}") from None


def _text(value: Any) -> str | None:
    """A field as text, or None when absent or empty (providers send "" for "none")."""
    if value is None or isinstance(value, dict | list):
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    text = str(value).strip()
    return text or None


def _array_of_objects(data: Any, what: str) -> list[dict[str, Any]]:
    if not isinstance(data, list):
        raise ReceiptFormatError(f"{what}: expected a JSON array, got {type(data).__name__}")
    if not all(isinstance(item, dict) for item in data):
        raise ReceiptFormatError(f"{what}: every element must be a JSON object")
    return data


def _carrier_permanent(outcome: str, code: str | None) -> bool:
    return outcome == "undelivered" and code is not None and code in PERMANENT_CARRIER_CODES


def parse_aliyun_push(body: bytes) -> list[DeliveryReport]:
    """Aliyun ``SmsReport`` HTTP batch push: a JSON array of reports (providers.md §1.5).

    Each element: ``phone_number``, ``send_time``, ``report_time``, ``success`` (bool),
    ``err_code`` (``DELIVERED`` on success), ``err_msg``, ``sms_size``, ``biz_id``, ``out_id``.
    """
    items = _array_of_objects(_json(body), "Aliyun SmsReport")
    reports = []
    for i, item in enumerate(items):
        success = item.get("success")
        if isinstance(success, str) and success.lower() in ("true", "false"):
            success = success.lower() == "true"
        if not isinstance(success, bool):
            raise ReceiptFormatError(f"Aliyun SmsReport[{i}].success: expected true or false")
        biz_id, out_id = _text(item.get("biz_id")), _text(item.get("out_id"))
        if biz_id is None and out_id is None:
            raise ReceiptFormatError(f"Aliyun SmsReport[{i}]: neither biz_id nor out_id")
        outcome = "delivered" if success else "undelivered"
        code = _text(item.get("err_code"))
        reports.append(
            DeliveryReport(
                provider="aliyun",
                outcome=outcome,
                provider_id=biz_id,
                out_id=out_id,
                recipient=_text(item.get("phone_number")),
                code=code,
                message=_text(item.get("err_msg")),
                reported_at=_text(item.get("report_time")),
                permanent=_carrier_permanent(outcome, code),
                item=i,
            )
        )
    return reports


@dataclass(frozen=True, slots=True)
class AliyunQueryPage:
    reports: list[DeliveryReport]
    total: int


_ALIYUN_SEND_STATUS: Mapping[str, str] = {"1": "progress", "2": "undelivered", "3": "delivered"}


def parse_aliyun_query(body: bytes, *, biz_id: str | None = None) -> AliyunQueryPage:
    """Aliyun ``QuerySendDetails`` answer: ``SmsSendDetailDTOs.SmsSendDetailDTO[]``.

    ``SendStatus`` 1 waiting for the carrier, 2 failed, 3 delivered; ``ErrCode``, ``OutId``,
    ``PhoneNum``, ``SendDate``, ``ReceiveDate``. The DTO does not repeat the ``BizId``: pass
    the one that was asked about, so the report dedupes against its push twin.
    """
    data = _json(body)
    if not isinstance(data, dict):
        raise ReceiptFormatError("QuerySendDetails: expected a JSON object")
    code = _text(data.get("Code")) or ""
    if code != "OK":
        raise ProviderAnswerError(code or "no Code", _text(data.get("Message")) or "")
    dtos = data.get("SmsSendDetailDTOs")
    if dtos is None:
        entries: list[dict[str, Any]] = []
    elif isinstance(dtos, dict):
        entries = _array_of_objects(dtos.get("SmsSendDetailDTO", []), "SmsSendDetailDTO")
    else:
        raise ReceiptFormatError("QuerySendDetails: SmsSendDetailDTOs is not an object")
    reports = []
    for i, dto in enumerate(entries):
        outcome = _ALIYUN_SEND_STATUS.get(_text(dto.get("SendStatus")) or "")
        if outcome is None:
            raise ReceiptFormatError(f"SmsSendDetailDTO[{i}].SendStatus: expected 1, 2 or 3")
        err = _text(dto.get("ErrCode"))
        reports.append(
            DeliveryReport(
                provider="aliyun",
                outcome=outcome,
                provider_id=biz_id,
                out_id=_text(dto.get("OutId")),
                recipient=_text(dto.get("PhoneNum")),
                code=err if outcome != "progress" else None,
                reported_at=_text(dto.get("ReceiveDate")) or _text(dto.get("SendDate")),
                permanent=_carrier_permanent(outcome, err),
                item=i,
            )
        )
    total = data.get("TotalCount")
    return AliyunQueryPage(reports, int(total) if isinstance(total, int | str) else len(reports))


def _tencent_outcome(status: str | None, where: str) -> str:
    if status == "SUCCESS":
        return "delivered"
    if status == "FAIL":
        return "undelivered"
    raise ReceiptFormatError(f"{where}: expected SUCCESS or FAIL, got {status!r}")


def parse_tencent_push(body: bytes) -> list[DeliveryReport]:
    """Tencent status callback: a JSON array of ``{user_receive_time, nationcode, mobile,
    report_status: SUCCESS|FAIL, errmsg, description, sid}``; ``sid`` is the ``SerialNo``."""
    items = _array_of_objects(_json(body), "Tencent status callback")
    reports = []
    for i, item in enumerate(items):
        sid = _text(item.get("sid"))
        if sid is None:
            raise ReceiptFormatError(f"Tencent status callback[{i}]: no sid")
        outcome = _tencent_outcome(
            _text(item.get("report_status")), f"Tencent status callback[{i}].report_status"
        )
        nation, mobile = _text(item.get("nationcode")), _text(item.get("mobile"))
        code = _text(item.get("errmsg"))
        reports.append(
            DeliveryReport(
                provider="tencent",
                outcome=outcome,
                provider_id=sid,
                out_id=None,
                recipient=f"+{nation}{mobile}" if nation and mobile else mobile,
                code=code,
                message=_text(item.get("description")),
                reported_at=_text(item.get("user_receive_time")),
                permanent=_carrier_permanent(outcome, code),
                item=i,
            )
        )
    return reports


def parse_tencent_pull(body: bytes) -> list[DeliveryReport]:
    """Tencent ``PullSmsSendStatus`` (2021-01-11) answer: ``Response.PullSmsSendStatusSet[]``
    of ``{UserReceiveTime (unix s), CountryCode, SubscriberNumber, PhoneNumber, SerialNo,
    ReportStatus, Description, SessionContext}``."""
    data = _json(body)
    inner = data.get("Response") if isinstance(data, dict) else None
    if not isinstance(inner, dict):
        raise ReceiptFormatError("PullSmsSendStatus: no Response object")
    error = inner.get("Error")
    if isinstance(error, dict):
        raise ProviderAnswerError(
            _text(error.get("Code")) or "Error", _text(error.get("Message")) or ""
        )
    items = _array_of_objects(inner.get("PullSmsSendStatusSet") or [], "PullSmsSendStatusSet")
    reports = []
    for i, item in enumerate(items):
        serial = _text(item.get("SerialNo"))
        if serial is None:
            raise ReceiptFormatError(f"PullSmsSendStatusSet[{i}]: no SerialNo")
        outcome = _tencent_outcome(
            _text(item.get("ReportStatus")), f"PullSmsSendStatusSet[{i}].ReportStatus"
        )
        received = item.get("UserReceiveTime")
        when = (
            datetime.fromtimestamp(received, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
            if isinstance(received, int) and not isinstance(received, bool)
            else _text(received)
        )
        code = _text(item.get("Description"))
        reports.append(
            DeliveryReport(
                provider="tencent",
                outcome=outcome,
                provider_id=serial,
                out_id=_text(item.get("SessionContext")),
                recipient=_text(item.get("PhoneNumber")),
                code=code,
                reported_at=when,
                permanent=_carrier_permanent(outcome, code),
                item=i,
            )
        )
    return reports


def parse_twilio_status(form: Iterable[tuple[str, str]]) -> DeliveryReport:
    """Twilio status callback form: ``MessageSid``, ``MessageStatus``, ``ErrorCode``, ``To``,
    ``AccountSid`` and the standard webhook fields (providers.md §3.1). ``SmsSid``/``SmsStatus``
    are the older spellings of the first two."""
    fields: dict[str, str] = {}
    for name, value in form:
        fields.setdefault(name, value)
    sid = _text(fields.get("MessageSid")) or _text(fields.get("SmsSid"))
    status = (_text(fields.get("MessageStatus")) or _text(fields.get("SmsStatus")) or "").lower()
    if sid is None or not status:
        raise ReceiptFormatError("Twilio status callback: MessageSid and MessageStatus required")
    if status in _TWILIO_DELIVERED:
        outcome = "delivered"
    elif status in _TWILIO_UNDELIVERED:
        outcome = "undelivered"
    else:
        outcome = "progress"
    code = _text(fields.get("ErrorCode"))
    if code == "0":
        code = None
    return DeliveryReport(
        provider="twilio",
        outcome=outcome,
        provider_id=sid,
        out_id=None,
        recipient=_text(fields.get("To")),
        code=code,
        message=_text(fields.get("ErrorMessage")),
        permanent=outcome == "undelivered" and code in PERMANENT_TWILIO_CODES,
        stage=status,
        account=_text(fields.get("AccountSid")),
    )


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


# --------------------------------------------------------------------------- polling


def build_status_channels(config: Config, env: Mapping[str, str]) -> dict[str, Any]:
    """Instantiate only the channels that can be asked for status (Aliyun, Tencent), so that
    polling needs only their credentials. ``ValueError`` names a missing setting."""
    adapters = registry.channel_adapters()
    built: dict[str, Any] = {}
    for name, settings in config.channels.items():
        adapter = str(settings.get("adapter"))
        if adapter not in (ADAPTERS["aliyun"], ADAPTERS["tencent"]):
            continue
        rest = {k: v for k, v in settings.items() if k not in ENGINE_CHANNEL_KEYS}
        try:
            built[name] = adapters[adapter](name, rest, env)
        except ValueError as exc:
            raise ValueError(f"channels.{name}.{exc}") from None
    return built


@dataclass
class ChannelPoll:
    channel: str
    adapter: str
    queries: int = 0
    ingest: IngestReport = field(default_factory=IngestReport)
    errors: list[str] = field(default_factory=list)

    def row(self) -> dict[str, Any]:
        return {
            "channel": self.channel,
            "adapter": self.adapter,
            "queries": self.queries,
            "reports": self.ingest.reports,
            "recorded": self.ingest.recorded,
            "duplicates": self.ingest.duplicates,
            "unmatched": self.ingest.unmatched,
            "errors": "; ".join(self.errors),
        }


@dataclass
class PollReport:
    channels: list[ChannelPoll] = field(default_factory=list)
    rematched: int = 0

    @property
    def errors(self) -> list[str]:
        return [f"{c.channel}: {e}" for c in self.channels for e in c.errors]

    def describe(self) -> str:
        total = IngestReport()
        for c in self.channels:
            total.add(c.ingest)
        return (
            f"polled {len(self.channels)} channels, {sum(c.queries for c in self.channels)} "
            f"queries: {total.describe()}; {self.rematched} earlier receipts matched now; "
            f"{len(self.errors)} errors"
        )


def _awaiting_aliyun(
    session: Session, channel: str, now: datetime
) -> list[tuple[int, str, str | None, datetime]]:
    """(attempt id, recipient, BizId, last send) for attempts still waiting for a receipt."""
    last_send = (
        select(Send.attempt_id, func.max(Send.at).label("at")).group_by(Send.attempt_id).subquery()
    )
    rows = session.execute(
        select(Attempt.id, Attempt.recipient, Attempt.provider_id, last_send.c.at)
        .join(last_send, last_send.c.attempt_id == Attempt.id)
        .where(
            Attempt.channel == channel,
            Attempt.kind == "sms",
            Attempt.state.in_(AWAITING_STATES),
            last_send.c.at >= now - timedelta(days=ALIYUN_QUERY_DAYS),
        )
        .order_by(Attempt.id)
    ).all()
    out = []
    for attempt_id, recipient, provider_id, at in rows:
        moment = at if at.tzinfo else at.replace(tzinfo=UTC)
        out.append((attempt_id, recipient, provider_id, moment))
    return out


def _poll_writer(
    reports: Sequence[DeliveryReport], body: bytes, channel: str
) -> Callable[[Session], IngestReport]:
    def write(session: Session) -> IngestReport:
        return record_reports(
            session, reports, body, "application/json", via="poll", channel=channel
        )

    return write


def _beijing_date(moment: datetime) -> date:
    return moment.astimezone(clock.CST).date()


async def _poll_aliyun(
    sessions: sessionmaker[Session],
    name: str,
    channel: Any,
    poll: ChannelPoll,
    now: datetime,
    *,
    concurrency: int,
    max_pages: int,
) -> None:
    with sessions() as s:
        todo = _awaiting_aliyun(s, name, now)
    gate = asyncio.Semaphore(concurrency)
    stop = asyncio.Event()

    async def one(recipient: str, biz_id: str | None, sent_at: datetime) -> None:
        page = 1
        while not stop.is_set():
            async with gate:
                try:
                    answer = await channel.query_send_details(
                        recipient,
                        _beijing_date(sent_at),
                        biz_id=biz_id,
                        page=page,
                        page_size=10 if biz_id else 50,
                    )
                except ChannelError as exc:  # Transient: this number fails, the rest go on
                    poll.errors.append(f"QuerySendDetails: {exc.detail}")
                    return
                poll.queries += 1
            try:
                parsed = parse_aliyun_query(answer.body, biz_id=biz_id)
            except ProviderAnswerError as exc:
                poll.errors.append(f"QuerySendDetails refused: {exc}")
                stop.set()  # throttled or misconfigured: asking again now only repeats it
                return
            except ReceiptFormatError as exc:
                poll.errors.append(f"QuerySendDetails HTTP {answer.status}: {exc}")
                return
            body = answer.body
            result = await asyncio.to_thread(
                ingest, sessions, _poll_writer(parsed.reports, body, name)
            )
            poll.ingest.add(result)
            if biz_id or page >= max_pages or page * 50 >= parsed.total:
                return
            page += 1

    await asyncio.gather(*(one(r, b, t) for _id, r, b, t in todo))


async def _poll_tencent(
    sessions: sessionmaker[Session], name: str, channel: Any, poll: ChannelPoll, *, max_rounds: int
) -> None:
    limit = 100
    for _ in range(max_rounds):
        try:
            answer = await channel.pull_send_status(limit)
        except ChannelError as exc:  # Transient, or Unknown: reports may be lost
            poll.errors.append(f"PullSmsSendStatus: {exc.detail}")
            return
        poll.queries += 1
        try:
            reports = parse_tencent_pull(answer.body)
        except ProviderAnswerError as exc:
            poll.errors.append(f"PullSmsSendStatus refused: {exc}")
            return
        except ReceiptFormatError as exc:
            poll.errors.append(f"PullSmsSendStatus HTTP {answer.status}: {exc}")
            return
        body = answer.body
        # Tencent hands each report out once: keep the bytes even if nothing in them matches.
        result = await asyncio.to_thread(ingest, sessions, _poll_writer(reports, body, name))
        poll.ingest.add(result)
        if len(reports) < limit:
            return


async def poll_receipts(
    sessions: sessionmaker[Session],
    config: Config,
    channels: Mapping[str, Any],
    *,
    now: Callable[[], datetime] = clock.now,
    progress: Callable[[str], None] | None = None,
    concurrency: int = 10,
    max_pages: int = 10,
    max_rounds: int = 50,
) -> PollReport:
    """Ask every Aliyun and Tencent channel what became of our sends, and record the answers.

    Aliyun: one ``QuerySendDetails`` per attempt still ``sent``/``unknown`` from the last 29
    days - by ``BizId`` when we have it, else every send to that number that Beijing day, found
    again by its ``OutId``. Tencent: ``PullSmsSendStatus`` until its queue is empty. Unmatched
    receipts from earlier are matched again first.
    """
    by_provider = channels_by_provider(config)
    report = PollReport()
    report.rematched = await asyncio.to_thread(ingest_rematch, sessions, by_provider, now())
    jobs: list[Awaitable[None]] = []
    for name, channel in channels.items():
        adapter = str(config.channels[name].get("adapter"))
        poll = ChannelPoll(name, adapter)
        report.channels.append(poll)
        if progress is not None:
            progress(f"polling {name} ({adapter})")
        if adapter == ADAPTERS["aliyun"]:
            jobs.append(
                _poll_aliyun(
                    sessions,
                    name,
                    channel,
                    poll,
                    now(),
                    concurrency=concurrency,
                    max_pages=max_pages,
                )
            )
        elif adapter == ADAPTERS["tencent"]:
            jobs.append(_poll_tencent(sessions, name, channel, poll, max_rounds=max_rounds))
    await asyncio.gather(*jobs)
    return report


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
