"""Delivery reports as each SMS provider words them, read into one :class:`DeliveryReport`.

Pure: bytes (or a form) in, reports out, no database and no network, one parser per
documented format - Aliyun ``SmsReport`` HTTP push and ``QuerySendDetails``; Tencent's status
callback and ``PullSmsSendStatus``; Twilio's status callback. Which codes blame the *number*
(and so may mark a contact point bad) is decided here too, narrowly: a phone that is merely
switched off must not lose its place on the ladder. Matching and recording the reports is
:mod:`outreach.receipts`.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

Provider = Literal["aliyun", "tencent", "twilio"]
Outcome = Literal["delivered", "undelivered", "progress"]

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
