"""RFC 5322 messages built once, deterministically, as the exact bytes that get sent.

The same :class:`Outgoing` always gives the same bytes: the Date comes from the attempt's
creation time, the Message-ID and the MIME boundary from its idempotency key. That is what lets
the engine hash and store the message before sending, and lets a re-send after a crash carry the
same Message-ID so the recipient (and a court) can see it is the same notice, not a new one.

Why not :mod:`email.message`: the standard library's header folding costs 2-5 ms of CPU per
notice with Chinese names and subjects (more than sending the message over a pooled
connection), and for some subjects it writes text that decodes to something other than what was
given (runs of spaces and words next to encoded-words change; see ``tests/test_mime.py``).
The proof records the subject the engine rendered; the bytes must say exactly that. This writer
has one rule per header and is tested against the standard library's *parser*, which is the
side that has to understand it:

- A phrase or unstructured text that is plain printable ASCII words separated by single spaces
  (and has no ``=?``) is written as is, folded at those spaces (RFC 5322 §2.2.3: unfolding gives
  back the same text).
- Anything else is written as RFC 2047 ``B`` encoded-words of UTF-8, each at most 42 bytes of
  text (14 Chinese characters) so every line stays within 78 characters, split only between
  characters; the whitespace between encoded-words is not part of the text when decoded.
- Whitespace in a display name is written as single spaces: readers treat it as folding
  white space anyway, so that is the name they show.
- Addresses themselves are never encoded: a non-ASCII address is written as UTF-8 (RFC 6532),
  and the SMTP channel refuses to send it to a relay without SMTPUTF8.
- Bodies are base64 of UTF-8 in 76-character lines; all line ends are CRLF.

A header value containing CR or LF is refused (``ValueError``): it could only be written by
injecting headers.
"""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import Iterable
from email.utils import format_datetime
from zoneinfo import ZoneInfo

from channels.base import Outgoing

_CST = ZoneInfo("Asia/Shanghai")
_MAX_LINE = 78
_WORD_BYTES = 42  # text bytes per encoded-word: "=?utf-8?b?" + 56 base64 + "?=" is 68 characters
_PLAIN_WORD = re.compile(r"[!-~]+")  # printable ASCII without spaces
_ATOM = re.compile(r"[A-Za-z0-9!#$%&'*+\-/=?^_`{|}~]+")  # RFC 5322 atext
_FIELD_NAME = re.compile(r"[!-9;-~]+")  # RFC 5322 ftext: printable ASCII except ':'
_QUOTABLE = re.compile(r"[ -~]{1,60}")  # printable ASCII short enough for one quoted-string


def message_id(msg: Outgoing, domain: str) -> str:
    """``<key.reference@domain>``: the case reference survives in every reply's In-Reply-To."""
    return f"<{msg.idempotency_key}.{msg.reference}@{domain}>"


def _no_breaks(name: str, value: str) -> str:
    if "\r" in value or "\n" in value:
        raise ValueError(f"the {name} header value contains a line break")
    return value


def _encoded_words(text: str) -> list[str]:
    """UTF-8 ``B`` encoded-words of at most ``_WORD_BYTES`` bytes, split between characters."""
    raw = text.encode()
    words: list[str] = []
    start, size = 0, len(raw)
    while start < size:
        end = min(start + _WORD_BYTES, size)
        while end < size and raw[end] & 0xC0 == 0x80:  # a continuation byte: not a boundary
            end -= 1
        words.append(f"=?utf-8?b?{base64.b64encode(raw[start:end]).decode('ascii')}?=")
        start = end
    return words


def _plain_words(text: str) -> list[str] | None:
    """The words of ``text`` if it can be written as is and unfolded back to itself."""
    if not text or "=?" in text:
        return None
    words = text.split(" ")
    for word in words:
        # An empty word means a leading, trailing or doubled space: folding could lose it.
        if not word or len(word) > _MAX_LINE - 1 or not _PLAIN_WORD.fullmatch(word):
            return None
    return words


def _text_tokens(text: str) -> list[str]:
    """Unstructured text (Subject, extra headers) as tokens joined by single spaces."""
    return _plain_words(text) or _encoded_words(text)


def _phrase_tokens(display: str) -> list[str]:
    """A display name: atoms as is, short printable ASCII quoted, anything else encoded."""
    words = _plain_words(display)
    if words is not None and all(_ATOM.fullmatch(w) for w in words):
        return words
    if _QUOTABLE.fullmatch(display):
        return ['"' + display.replace("\\", "\\\\").replace('"', '\\"') + '"']
    return _encoded_words(display)


def _fold(name: str, tokens: Iterable[str]) -> str:
    """``Name: tok tok`` with CRLF SP inserted between tokens to keep lines within 78."""
    lines: list[str] = []
    line = name + ":"
    fresh = True  # nothing but the field name on this line yet
    for token in tokens:
        if not fresh and len(line) + 1 + len(token) > _MAX_LINE:
            lines.append(line)
            line = " " + token
        else:
            line += " " + token
        fresh = False
    lines.append(line)
    return "\r\n".join(lines) + "\r\n"


def _address(name: str, display: str | None, addr: str) -> str:
    _no_breaks(name, addr)
    # Mail programs read whitespace in a display name as folding white space, so runs of it
    # are written as the single space every reader will show.
    display = " ".join(_no_breaks(name, display or "").split())
    if not display:
        return _fold(name, [addr])
    return _fold(name, [*_phrase_tokens(display), f"<{addr}>"])


def _base64_lines(text: str) -> str:
    return base64.encodebytes(text.encode()).decode("ascii").replace("\n", "\r\n")


def _part_headers(subtype: str) -> str:
    return f'Content-Type: text/{subtype}; charset="utf-8"\r\nContent-Transfer-Encoding: base64\r\n'


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
    mid = _no_breaks("Message-ID", message_id(msg, domain))
    sender = from_name or msg.sender_name
    head = [
        _address("From", sender, from_address),
        _address("To", msg.recipient_name, msg.recipient),
    ]
    if reply_to:
        head.append(_address("Reply-To", sender, reply_to))
    head.append(_fold("Subject", _text_tokens(_no_breaks("Subject", msg.subject or msg.reference))))
    head.append(f"Date: {format_datetime(msg.created_at.astimezone(_CST))}\r\n")
    head.append(f"Message-ID: {mid}\r\n")
    if msg.in_reply_to:
        ids = [_no_breaks("References", i) for i in msg.in_reply_to]
        head.append(f"In-Reply-To: {ids[-1]}\r\n")
        head.append(_fold("References", ids))
    if disposition_notification_to:
        head.append(_address("Disposition-Notification-To", None, disposition_notification_to))
    head.append(f"X-Outreach-Reference: {_no_breaks('X-Outreach-Reference', msg.reference)}\r\n")
    # A formal notice written on the merchant's behalf, not a bot reply (RFC 3834).
    head.append("Auto-Submitted: no\r\n")
    for name, value in (extra_headers or {}).items():
        if not _FIELD_NAME.fullmatch(name):
            raise ValueError(f"{name!r} is not a header field name")
        head.append(_fold(name, _text_tokens(_no_breaks(name, value))))
    head.append("MIME-Version: 1.0\r\n")
    if msg.html is None:
        head.append(_part_headers("plain"))
        body = "\r\n" + _base64_lines(msg.body)
    else:
        boundary = "=_outreach_" + hashlib.sha256(msg.idempotency_key.encode()).hexdigest()[:24]
        head.append(f'Content-Type: multipart/alternative; boundary="{boundary}"\r\n')
        body = (
            f"\r\n--{boundary}\r\n{_part_headers('plain')}\r\n{_base64_lines(msg.body)}"
            f"--{boundary}\r\n{_part_headers('html')}\r\n{_base64_lines(msg.html)}"
            f"--{boundary}--\r\n"
        )
    return ("".join(head) + body).encode(), mid
