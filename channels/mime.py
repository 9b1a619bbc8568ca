"""RFC 5322 messages built once, deterministically, as the exact bytes that get sent.

The same :class:`Outgoing` always gives the same bytes: the Date comes from the attempt's
creation time, the Message-ID and the MIME boundary from its idempotency key. That is what lets
the engine hash and store the message before sending, and lets a re-send after a crash carry the
same Message-ID so the recipient (and a court) can see it is the same notice, not a new one.
"""

from __future__ import annotations

import hashlib
from email.headerregistry import Address
from email.message import EmailMessage
from email.policy import SMTP
from email.utils import format_datetime
from zoneinfo import ZoneInfo

from channels.base import Outgoing

_CST = ZoneInfo("Asia/Shanghai")
# Subject and names are UTF-8 encoded-words; long lines are folded at 78 by the policy.
_POLICY = SMTP.clone(max_line_length=78)


def message_id(msg: Outgoing, domain: str) -> str:
    """``<key.reference@domain>``: the case reference survives in every reply's In-Reply-To."""
    return f"<{msg.idempotency_key}.{msg.reference}@{domain}>"


def _address(display: str | None, addr: str) -> Address:
    local, _, domain = addr.rpartition("@")
    return Address(display_name=display or "", username=local, domain=domain)


def build_email(
    msg: Outgoing,
    *,
    from_address: str,
    from_name: str | None = None,
    reply_to: str | None = None,
    disposition_notification_to: str | None = None,
    extra_headers: dict[str, str] | None = None,
) -> tuple[bytes, str]:
    """Return (exact RFC 5322 bytes with CRLF line ends, Message-ID)."""
    domain = from_address.rpartition("@")[2]
    mid = message_id(msg, domain)
    em = EmailMessage(policy=_POLICY)
    em["From"] = _address(from_name or msg.sender_name, from_address)
    em["To"] = _address(msg.recipient_name, msg.recipient)
    if reply_to:
        em["Reply-To"] = _address(from_name or msg.sender_name, reply_to)
    em["Subject"] = msg.subject or msg.reference
    em["Date"] = format_datetime(msg.created_at.astimezone(_CST))
    em["Message-ID"] = mid
    if msg.in_reply_to:
        em["In-Reply-To"] = msg.in_reply_to[-1]
        em["References"] = " ".join(msg.in_reply_to)
    if disposition_notification_to:
        em["Disposition-Notification-To"] = disposition_notification_to
    em["X-Outreach-Reference"] = msg.reference
    em["Auto-Submitted"] = "no"  # a formal notice written on the merchant's behalf, not a bot reply
    for name, value in (extra_headers or {}).items():
        em[name] = value
    em.set_content(msg.body, subtype="plain", charset="utf-8", cte="base64")
    if msg.html is not None:
        em.add_alternative(msg.html, subtype="html", charset="utf-8", cte="base64")
        boundary = "=_outreach_" + hashlib.sha256(msg.idempotency_key.encode()).hexdigest()[:24]
        em.set_boundary(boundary)
    return em.as_bytes(policy=_POLICY), mid
