"""Incoming mail as typed records: pure functions from the exact bytes, no I/O, no database.

What the engine needs to know about a message in the answers mailbox is (a) what it is — a
person's answer, an auto-reply, a delivery status notification (RFC 3464), a disposition
notification (RFC 8098), or a bounce some mail system wrote in prose — and (b) every clue that
ties it to one of our notices: our Message-IDs in ``In-Reply-To``/``References`` (they carry
the case reference: ``<key.OUT-2026-000001@domain>``, see :mod:`channels.mime`), the
``X-Outreach-Reference`` header (bounces return our headers), and the reference quoted in the
subject or the body. Which clue wins, and what a match changes, is :mod:`outreach.inbound`'s
business; keeping this side pure lets it be tested on fixture files alone (the way froide and
genro-mail-proxy split parsing from polling).

Mail from Chinese clients is the normal case, not the edge case: Foxmail and others label GBK
text ``gb2312``, webmail labels UTF-8 ``gb2312``, and a few put raw 8-bit GBK in the Subject.
Every decode therefore goes through :func:`decode_bytes`: valid UTF-8 first, then the label
(the GB family read as GB 18030, their superset), then GB 18030. Nothing here ever raises on a
malformed message — a message we cannot read is still a message we must keep.
"""

from __future__ import annotations

import email
import email.header
import email.policy
import html
import re
import unicodedata
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.message import Message
from email.parser import HeaderParser
from email.utils import getaddresses, parseaddr, parsedate_to_datetime
from typing import Literal

Kind = Literal["message", "auto_reply", "dsn", "mdn", "bounce"]
ClueSource = Literal[
    "in_reply_to", "references", "original_message_id", "x_outreach_reference", "subject", "body"
]

# Labels mail clients put on GB text, read as GB 18030 (a superset of GB 2312 and GBK) so a
# character outside GB 2312 in a part labelled "gb2312" (镕, 喆, 堃 ...) still decodes.
_CHARSET_ALIASES = {
    "gb2312": "gb18030",
    "gb_2312-80": "gb18030",
    "euc-cn": "gb18030",
    "x-euc-cn": "gb18030",
    "gbk": "gb18030",
    "x-gbk": "gb18030",
    "cp936": "gb18030",
    "ms936": "gb18030",
    "windows-936": "gb18030",
    "big5": "big5hkscs",
    "ks_c_5601-1987": "cp949",
    "iso-8859-1": "cp1252",  # what "latin-1" mail really is, per WHATWG
    "us-ascii": "ascii",
}
_TEXT_LIMIT = 1_000_000  # characters of body text searched for a reference

_MSGID = re.compile(r"<[^<>\s]+>")
# channels.mime.message_id(): <idempotency_key.reference@domain>
_OUR_MSGID = re.compile(r"^<([0-9a-f]{8,64})\.([A-Z]{2,8}-\d{4}-\d{6})@[^<>\s]+>$", re.IGNORECASE)
_STATUS = re.compile(r"\b([245])\.(\d{1,3})\.(\d{1,3})\b")
_XTEXT = re.compile(r"\+([0-9A-F]{2})")

_AUTO_SUBJECT = re.compile(
    r"^\s*[\[【(（]?\s*(?:"
    r"auto(?:matic)?[ _-]?(?:reply|response|answer)|autoreply|auto:|"
    r"out of (?:the )?office|abwesenheitsnotiz|réponse automatique|"
    r"自动回复|自動回覆|自动答复|自动应答|自動回復|休假|外出"
    r")",
    re.IGNORECASE,
)
_BOUNCE_SUBJECT = re.compile(
    r"undeliver|returned mail|mail delivery (?:failed|failure|subsystem)|delivery (?:status "
    r"notification|failure|has failed)|failure notice|non[- ]?delivery|could not be delivered|"
    r"退信|退回|无法投递|投递失败|未能送达|发送失败|系统退信",
    re.IGNORECASE,
)
_BOUNCE_SENDERS = ("mailer-daemon", "postmaster", "mail-daemon", "mailerdaemon")


@dataclass(frozen=True, slots=True)
class OurMessageId:
    """One of our own Message-IDs, and what it names: the attempt's key and the case."""

    message_id: str
    key: str
    reference: str


@dataclass(frozen=True, slots=True)
class Clue:
    """A case reference found in the message, and where: the engine trusts headers first."""

    reference: str
    source: ClueSource


@dataclass(frozen=True, slots=True)
class OriginalHeaders:
    """The headers of our message as a bounce or receipt returns them."""

    message_id: str | None
    reference: str | None  # X-Outreach-Reference
    subject: str | None
    to: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class DsnRecipient:
    """One per-recipient block of an RFC 3464 report."""

    final_recipient: str | None  # the address, lower-cased, without "rfc822;"
    original_recipient: str | None
    action: str  # failed | delayed | delivered | relayed | expanded ("" when missing)
    status: str | None  # RFC 3463 "5.1.1"
    diagnostic_code: str | None  # "smtp; 550 5.1.1 <...>: Recipient address rejected"
    remote_mta: str | None
    last_attempt_date: str | None
    will_retry_until: str | None

    @property
    def permanent(self) -> bool:
        return self.action == "failed" and (self.status or "5").startswith("5")

    @property
    def blames_recipient(self) -> bool:
        """Whether the address itself is at fault, as :func:`channels.smtp.classify` decides
        for a refusal at RCPT or after DATA: a permanent failure, except size (5.3.x), content
        (5.6.x) and policy (5.7.x) refusals, where the mailbox is fine and we are not."""
        if not self.permanent:
            return False
        m = _STATUS.search(self.status or "")
        return m is None or m[2] not in ("3", "6", "7")

    def addresses(self) -> tuple[str, ...]:
        return tuple(a for a in (self.original_recipient, self.final_recipient) if a)


@dataclass(frozen=True, slots=True)
class Dsn:
    """An RFC 3464 delivery status notification: per-message fields and per-recipient blocks."""

    reporting_mta: str | None
    envelope_id: str | None  # our ENVID (the attempt's idempotency key), xtext-decoded
    arrival_date: str | None
    recipients: tuple[DsnRecipient, ...]
    original: OriginalHeaders | None


@dataclass(frozen=True, slots=True)
class Mdn:
    """An RFC 8098 message disposition notification (a read receipt, or its refusal)."""

    reporting_ua: str | None
    final_recipient: str | None
    original_recipient: str | None
    original_message_id: str | None
    disposition: str  # the whole field: "manual-action/MDN-sent-manually; displayed"
    disposition_type: str  # displayed | deleted | dispatched | processed | ""
    original: OriginalHeaders | None


@dataclass(frozen=True)
class ParsedMail:
    kind: Kind
    message_id: str | None
    from_name: str
    from_address: str | None  # lower-cased
    to: tuple[str, ...]
    subject: str
    date: datetime | None  # the Date header, aware UTC; None when missing or unreadable
    in_reply_to: tuple[str, ...]
    references: tuple[str, ...]
    x_outreach_reference: str | None
    text: str  # the main body as text (HTML reduced to text), for reading and searching
    clues: tuple[Clue, ...]  # case references, strongest first
    auto_reply_reason: str | None = None
    dsn: Dsn | None = None
    mdn: Mdn | None = None
    defects: tuple[str, ...] = field(default_factory=tuple)

    def our_message_ids(self) -> list[tuple[OurMessageId, ClueSource]]:
        """Our Message-IDs this message points at, strongest first (In-Reply-To, then the
        report's original message, then References newest first)."""
        seen: set[str] = set()
        out: list[tuple[OurMessageId, ClueSource]] = []
        for mid, source in self.pointed_message_ids():
            ours = our_message_id(mid)
            if ours is not None and ours.message_id not in seen:
                seen.add(ours.message_id)
                out.append((ours, source))
        return out

    def pointed_message_ids(self) -> list[tuple[str, ClueSource]]:
        """Every Message-ID this message answers or reports on, strongest first."""
        out: list[tuple[str, ClueSource]] = [(m, "in_reply_to") for m in self.in_reply_to]
        original = self.original
        if original is not None and original.message_id:
            out.append((original.message_id, "original_message_id"))
        if self.mdn is not None and self.mdn.original_message_id:
            out.append((self.mdn.original_message_id, "original_message_id"))
        out += [(m, "references") for m in reversed(self.references)]
        return out

    @property
    def original(self) -> OriginalHeaders | None:
        if self.dsn is not None:
            return self.dsn.original
        if self.mdn is not None:
            return self.mdn.original
        return None


# --------------------------------------------------------------------------- decoding


def decode_bytes(data: bytes, charset: str | None) -> str:
    """Text from bytes whose declared charset may be missing or wrong. Never raises.

    Bytes that are valid UTF-8 are read as UTF-8 whatever the label says (webmail that labels
    its UTF-8 "gb2312" exists; GBK text long enough to matter is practically never valid
    UTF-8), except under a UTF-16/32 label, whose bytes can be valid UTF-8 by accident."""
    names: list[str] = []
    label = charset.strip().strip('"').lower() if charset else ""
    if not label.startswith(("utf-16", "utf-32", "utf16", "utf32")):
        names.append("utf-8")
    if label:
        names.append(_CHARSET_ALIASES.get(label, label))
    names += ["utf-8", "gb18030"]
    for name in names:
        try:
            return data.decode(name)
        except (LookupError, UnicodeDecodeError):
            continue
    return data.decode("utf-8", "replace")  # unreachable in practice: gb18030 maps any byte run


def _unsurrogate(text: str) -> str:
    """Raw 8-bit header bytes survive parsing as surrogate escapes; decode them for real."""
    if not any("\udc80" <= ch <= "\udcff" for ch in text):
        return text
    return decode_bytes(text.encode("utf-8", "surrogateescape"), None)


def decode_header_value(value: str) -> str:
    """An unfolded, decoded header: RFC 2047 encoded-words (with the GB charset fix-ups) and
    raw 8-bit text alike."""
    value = re.sub(r"\r?\n(?=[ \t])", "", value)
    try:
        parts = email.header.decode_header(value)
    except (ValueError, LookupError, AssertionError):
        return _unsurrogate(value).strip()
    out: list[str] = []
    for chunk, charset in parts:
        if isinstance(chunk, str):
            out.append(_unsurrogate(chunk))
        elif charset:
            out.append(decode_bytes(chunk, charset))
        else:
            out.append(_unsurrogate(chunk.decode("raw-unicode-escape")))
    return "".join(out).strip()


def _raw_headers(msg: Message, name: str) -> list[str]:
    wanted = name.lower()
    return [str(v) for k, v in msg.raw_items() if k.lower() == wanted]


def _header(msg: Message, name: str) -> str | None:
    values = _raw_headers(msg, name)
    return decode_header_value(values[0]) if values else None


def message_ids(value: str | None) -> tuple[str, ...]:
    """The ``<id>`` tokens of a Message-ID, In-Reply-To or References header, in order.
    A bare ``id@host`` (some clients drop the brackets) is bracketed."""
    if not value:
        return ()
    found = _MSGID.findall(value)
    if not found:
        bare = value.strip().split()
        found = [f"<{b}>" for b in bare if "@" in b and "<" not in b and ">" not in b]
    return tuple(dict.fromkeys(found))


def our_message_id(mid: str) -> OurMessageId | None:
    """``<key.OUT-2026-000001@domain>`` → its key and reference; anything else → None."""
    m = _OUR_MSGID.match(mid.strip())
    if m is None:
        return None
    return OurMessageId(mid.strip(), m[1].lower(), m[2].upper())


def reference_pattern(prefix: str | None = None) -> re.Pattern[str]:
    """Case references (``OUT-2026-000001``); ``prefix`` is ``[sender] reference_prefix``."""
    head = re.escape(prefix) if prefix else "[A-Z]{2,8}"
    return re.compile(rf"(?<![A-Za-z0-9]){head}-\d{{4}}-\d{{6}}(?!\d)", re.IGNORECASE)


def find_references(text: str, pattern: re.Pattern[str]) -> tuple[str, ...]:
    """Distinct references in ``text`` in order of appearance. NFKC first, so a reference
    typed with full-width characters (ＯＵＴ－２０２６－０００００１, common from Chinese IMEs)
    is still found."""
    norm = unicodedata.normalize("NFKC", text[:_TEXT_LIMIT])
    return tuple(dict.fromkeys(m.upper() for m in pattern.findall(norm)))


def _xtext_decode(value: str) -> str:
    return _XTEXT.sub(lambda m: chr(int(m[1], 16)), value)


def _address_field(value: str | None) -> str | None:
    """``rfc822; user@example.org`` → ``user@example.org`` (lower-cased, brackets dropped)."""
    if not value:
        return None
    _type, _, addr = value.partition(";")
    addr = (addr or _type).strip().strip("<>").strip()
    return _xtext_decode(addr).lower() or None


def _parse_date(value: str | None) -> datetime | None:
    if not value:
        return None
    try:
        moment = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if moment.tzinfo is None:  # "-0000": the time is UTC, the zone unknown (RFC 5322 3.3)
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)


# --------------------------------------------------------------------------- parts


def _walk(msg: Message, *, into_messages: bool = True) -> Iterator[Message]:
    """Every MIME part, without descending into the fields of a report part (the stdlib
    exposes those as pseudo-messages), nor, with ``into_messages=False``, into an attached
    message (the original a bounce returns is not the bounce's own text)."""
    yield msg
    ctype = msg.get_content_type()
    if ctype in _REPORT_TYPES or (not into_messages and ctype.startswith("message/")):
        return
    payload = msg.get_payload()
    if isinstance(payload, list):
        for sub in payload:
            if isinstance(sub, Message):
                yield from _walk(sub, into_messages=into_messages)


_REPORT_TYPES = frozenset(
    {
        "message/delivery-status",
        "message/global-delivery-status",
        "message/disposition-notification",
        "message/global-disposition-notification",
    }
)


def _part_text(part: Message) -> str:
    payload = part.get_payload(decode=True)
    if isinstance(payload, bytes):
        text = decode_bytes(payload, part.get_content_charset())
    else:
        raw = part.get_payload()
        text = _unsurrogate(raw) if isinstance(raw, str) else ""
    return text.replace("\r\n", "\n")


def _html_to_text(markup: str) -> str:
    markup = re.sub(r"(?is)<(script|style|head)\b.*?</\1\s*>", " ", markup)
    markup = re.sub(r"(?i)<br\s*/?>|</p\s*>|</div\s*>|</tr\s*>", "\n", markup)
    text = html.unescape(re.sub(r"(?s)<[^>]*>", " ", markup))
    return re.sub(r"[ \t\r\f\v]+", " ", text).strip()


def _main_text(msg: Message) -> str:
    """The message's own words: the first inline text/plain part, else the first inline HTML
    part as text (what ``EmailMessage.get_body`` picks, without its slow header objects)."""
    plain: Message | None = None
    markup: Message | None = None
    for part in _walk(msg, into_messages=False):
        if part.is_multipart() or part.get_content_maintype() != "text":
            continue
        if part is not msg and "attachment" in (part.get("Content-Disposition") or "").lower():
            continue
        subtype = part.get_content_subtype()
        if subtype == "plain" and plain is None:
            plain = part
        elif subtype == "html" and markup is None:
            markup = part
    if plain is not None:
        return _part_text(plain)
    return _html_to_text(_part_text(markup)) if markup is not None else ""


def _field_blocks(part: Message) -> list[list[tuple[str, str]]]:
    """The header-like blocks of a report part: [per-message, per-recipient, ...]."""
    payload = part.get_payload()
    blocks: list[list[tuple[str, str]]] = []
    if isinstance(payload, list):
        for sub in payload:
            if isinstance(sub, Message):
                blocks.append([(k, decode_header_value(str(v))) for k, v in sub.raw_items()])
        return blocks
    text = _part_text(part)
    for chunk in re.split(r"\r?\n[ \t]*\r?\n", text.strip()):
        parsed = HeaderParser(policy=email.policy.compat32).parsestr(chunk + "\n")
        blocks.append([(k, decode_header_value(str(v))) for k, v in parsed.items()])
    return [b for b in blocks if b]


def _get(block: Iterable[tuple[str, str]], name: str) -> str | None:
    wanted = name.lower()
    for k, v in block:
        if k.lower() == wanted:
            return " ".join(v.split()) or None
    return None


def _original_headers(msg: Message) -> OriginalHeaders | None:
    """Our headers as returned inside a report (text/rfc822-headers or message/rfc822)."""
    for part in _walk(msg):
        ctype = part.get_content_type()
        headers: Message | None = None
        if ctype in ("text/rfc822-headers", "message/global-headers"):
            headers = HeaderParser(policy=email.policy.compat32).parsestr(_part_text(part).lstrip())
        elif ctype in ("message/rfc822", "message/global") and part is not msg:
            payload = part.get_payload()
            if isinstance(payload, list) and payload and isinstance(payload[0], Message):
                headers = payload[0]
        if headers is None:
            continue
        mids = message_ids(_header(headers, "Message-ID"))
        ref = _header(headers, "X-Outreach-Reference")
        to = tuple(a.lower() for _n, a in getaddresses([_header(headers, "To") or ""]) if a)
        return OriginalHeaders(
            message_id=mids[0] if mids else None,
            reference=ref.upper() if ref else None,
            subject=_header(headers, "Subject"),
            to=to,
        )
    return None


def parse_dsn(msg: Message) -> Dsn | None:
    """The RFC 3464 report in ``msg``, or None when it has none."""
    part = next(
        (
            p
            for p in _walk(msg)
            if p.get_content_type() in ("message/delivery-status", "message/global-delivery-status")
        ),
        None,
    )
    if part is None:
        return None
    blocks = _field_blocks(part)
    if not blocks:
        return None
    per_message, rest = blocks[0], blocks[1:]
    if _get(per_message, "Final-Recipient") or _get(per_message, "Action"):
        per_message, rest = [], blocks  # no per-message block (seen from some gateways)
    recipients = []
    for block in rest:
        status = _get(block, "Status")
        status_match = _STATUS.search(status or "")
        action = (_get(block, "Action") or "").split()
        recipients.append(
            DsnRecipient(
                final_recipient=_address_field(_get(block, "Final-Recipient")),
                original_recipient=_address_field(_get(block, "Original-Recipient")),
                action=action[0].lower() if action else "",
                status=status_match[0] if status_match else status,
                diagnostic_code=_get(block, "Diagnostic-Code"),
                remote_mta=_get(block, "Remote-MTA"),
                last_attempt_date=_get(block, "Last-Attempt-Date"),
                will_retry_until=_get(block, "Will-Retry-Until"),
            )
        )
    envid = _get(per_message, "Original-Envelope-Id")
    return Dsn(
        reporting_mta=_get(per_message, "Reporting-MTA"),
        envelope_id=_xtext_decode(envid) if envid else None,
        arrival_date=_get(per_message, "Arrival-Date"),
        recipients=tuple(r for r in recipients if r.final_recipient or r.action),
        original=_original_headers(msg),
    )


def parse_mdn(msg: Message) -> Mdn | None:
    """The RFC 8098 disposition notification in ``msg``, or None when it has none."""
    part = next(
        (
            p
            for p in _walk(msg)
            if p.get_content_type()
            in ("message/disposition-notification", "message/global-disposition-notification")
        ),
        None,
    )
    if part is None:
        return None
    fields = [kv for block in _field_blocks(part) for kv in block]
    disposition = _get(fields, "Disposition") or ""
    dtype = disposition.partition(";")[2].strip().split("/")[0].strip().lower()
    mids = message_ids(_get(fields, "Original-Message-ID"))
    return Mdn(
        reporting_ua=_get(fields, "Reporting-UA"),
        final_recipient=_address_field(_get(fields, "Final-Recipient")),
        original_recipient=_address_field(_get(fields, "Original-Recipient")),
        original_message_id=mids[0] if mids else None,
        disposition=disposition,
        disposition_type=dtype,
        original=_original_headers(msg),
    )


# --------------------------------------------------------------------------- classification


def auto_reply_reason(msg: Message, subject: str) -> str | None:
    """Why this looks machine-written (RFC 3834 and what vacation responders really send),
    or None. A person's answer stops the ladder; an out-of-office must not."""
    auto = _header(msg, "Auto-Submitted")
    if auto and auto.split(";")[0].strip().lower() != "no":
        return f"Auto-Submitted: {auto}"
    for name in ("X-Autoreply", "X-Autorespond", "X-Autoresponse", "X-Auto-Reply"):
        value = _header(msg, name)
        if value is not None and value.strip().lower() not in ("no", "false", "0"):
            return f"{name}: {value}"
    precedence = (_header(msg, "Precedence") or "").strip().lower()
    if precedence in ("auto_reply", "bulk", "junk"):
        return f"Precedence: {precedence}"
    if _AUTO_SUBJECT.search(subject):
        return f"subject: {subject[:80]}"
    return None


def _looks_like_bounce(msg: Message, from_address: str | None, subject: str) -> bool:
    """A non-delivery report written in prose, without an RFC 3464 part."""
    local = (from_address or "").partition("@")[0]
    if local in _BOUNCE_SENDERS:
        return True
    return_path = _header(msg, "Return-Path")
    null_sender = return_path is not None and return_path.strip() == "<>"
    return bool(_BOUNCE_SUBJECT.search(subject)) and (null_sender or not from_address)


def _clues(
    pattern: re.Pattern[str],
    *,
    in_reply_to: tuple[str, ...],
    references: tuple[str, ...],
    original: OriginalHeaders | None,
    x_ref: str | None,
    subject: str,
    text: str,
) -> tuple[Clue, ...]:
    found: list[Clue] = []
    pointed: list[tuple[ClueSource, tuple[str, ...]]] = [
        ("in_reply_to", in_reply_to),
        ("original_message_id", (original.message_id,) if original and original.message_id else ()),
        ("references", tuple(reversed(references))),
    ]
    for source, mids in pointed:
        for mid in mids:
            ours = our_message_id(mid)
            if ours is not None:
                found.append(Clue(ours.reference, source))
    for ref in (x_ref, original.reference if original else None):
        if ref:
            found += [Clue(r, "x_outreach_reference") for r in find_references(ref, pattern)]
    found += [Clue(r, "subject") for r in find_references(subject, pattern)]
    found += [Clue(r, "body") for r in find_references(text, pattern)]
    return tuple(dict.fromkeys(found))


def parse_mail(raw: bytes, *, reference_prefix: str | None = None) -> ParsedMail:
    """Everything the engine needs from one message's exact bytes. Never raises: a message
    the parser chokes on comes back as an ordinary ``message`` with the defect named."""
    pattern = reference_pattern(reference_prefix)
    try:
        return _parse(raw, pattern)
    except Exception as exc:  # noqa: BLE001 — a malformed message must still be kept and held
        return ParsedMail(
            kind="message",
            message_id=None,
            from_name="",
            from_address=None,
            to=(),
            subject="",
            date=None,
            in_reply_to=(),
            references=(),
            x_outreach_reference=None,
            text="",
            clues=(),
            defects=(f"unparseable: {type(exc).__name__}: {exc}",),
        )


def _parse(raw: bytes, pattern: re.Pattern[str]) -> ParsedMail:
    # compat32: plain string headers, decoded by _header() with the GB fix-ups. The default
    # policy's header objects cost ten times the parse and mis-decode mislabelled GB text.
    msg = email.message_from_bytes(raw, policy=email.policy.compat32)
    subject = _header(msg, "Subject") or ""
    from_name, from_address = parseaddr(_header(msg, "From") or "")
    to = tuple(
        a.lower()
        for _n, a in getaddresses([_header(msg, "To") or "", _header(msg, "Cc") or ""])
        if a
    )
    mids = message_ids(_header(msg, "Message-ID"))
    in_reply_to = message_ids(_header(msg, "In-Reply-To"))
    references = tuple(
        dict.fromkeys(m for v in _raw_headers(msg, "References") for m in message_ids(v))
    )
    x_ref = _header(msg, "X-Outreach-Reference")
    text = _main_text(msg)
    address = from_address.strip().lower() or None
    dsn = parse_dsn(msg)
    mdn = parse_mdn(msg) if dsn is None else None
    kind: Kind
    auto_reason = None
    if dsn is not None and dsn.recipients:
        kind = "dsn"
    elif mdn is not None:
        kind = "mdn"
    elif dsn is not None or _looks_like_bounce(msg, address, subject):
        kind = "bounce"
    else:
        auto_reason = auto_reply_reason(msg, subject)
        kind = "auto_reply" if auto_reason else "message"
    original = dsn.original if dsn is not None else (mdn.original if mdn is not None else None)
    defects = tuple(sorted({type(d).__name__ for p in _walk(msg) for d in p.defects}))
    return ParsedMail(
        kind=kind,
        message_id=mids[0] if mids else None,
        from_name=from_name.strip(),
        from_address=address,
        to=to,
        subject=subject,
        date=_parse_date(_header(msg, "Date")),
        in_reply_to=in_reply_to,
        references=references,
        x_outreach_reference=x_ref.strip().upper() if x_ref else None,
        text=text,
        clues=_clues(
            pattern,
            in_reply_to=in_reply_to,
            references=references,
            original=original,
            x_ref=x_ref,
            subject=subject,
            text=text,
        ),
        auto_reply_reason=auto_reason,
        dsn=dsn,
        mdn=mdn,
        defects=defects,
    )
