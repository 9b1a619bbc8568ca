"""Normalisation of contact values, shared by every source and by config validation.

Two sources reporting "400-820-2819" and "4008202819" must land on the same contact point,
and the dispatcher must be able to hand the value straight to a gateway. So phones become
E.164 (``+864008202819``), China's service short numbers keep their digits behind the
country code (``+8695534``: not dialable from abroad, but unambiguous and mergeable), an
extension is kept RFC 3966 style (``+862138585566;ext=807755``), and e-mail addresses are
validated and lower-cased.
"""

from __future__ import annotations

import re

import phonenumbers
from email_validator import EmailNotValidError, validate_email
from phonenumbers import shortnumberinfo

_EXT = re.compile(r"\s*(?:转|分机|ext\.?|x|-)\s*(\d{1,6})\s*$", re.IGNORECASE)
# 95xxx / 96xxx service numbers and 123xx government hotlines are 5 digits; 1010xxxx exist too.
_SHORT = re.compile(r"^(?:9[56]\d{3,6}|12[0-9]{3}|1010\d{4})$")
_DIGITS = re.compile(r"\D+")


class InvalidContact(ValueError):
    """A value that cannot be normalised; the message says what was expected."""


def normalize_phone(raw: str, region: str = "CN") -> str:
    """Return ``raw`` as E.164 (with ``;ext=`` when present) or raise :class:`InvalidContact`."""
    text = raw.strip().replace("\u3000", " ")
    text = text.replace("（", "(").replace("）", ")").replace("－", "-").replace("—", "-")
    digits = _DIGITS.sub("", text)
    if text.startswith("+86") and _SHORT.match(digits[2:]):
        digits = digits[2:]  # our own output for a short number normalises to itself
    if _SHORT.match(digits) and (not text.startswith("+") or text.startswith("+86")):
        number = phonenumbers.parse(digits, region)
        if shortnumberinfo.is_valid_short_number_for_region(number, region):
            return f"+{number.country_code}{number.national_number}"
    ext: str | None = None
    main = text
    m = _EXT.search(text)
    if m:
        candidate = text[: m.start()]
        try:
            parsed = phonenumbers.parse(candidate, region)
        except phonenumbers.NumberParseException:
            parsed = None
        if parsed is not None and phonenumbers.is_valid_number(parsed):
            main, ext = candidate, m.group(1)
    try:
        number = phonenumbers.parse(main, region)
    except phonenumbers.NumberParseException as exc:
        raise InvalidContact(f"{raw!r} is not a phone number") from exc
    if not phonenumbers.is_valid_number(number):
        raise InvalidContact(
            f"{raw!r} is not a valid phone number (expected e.g. 13800138000, 400-820-2819, "
            "010-66001918, 95534 or +14155552671)"
        )
    e164 = phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)
    return f"{e164};ext={ext}" if ext else e164


def is_mobile(e164: str) -> bool:
    """True when the number can receive SMS (mobile, or fixed-or-mobile where ambiguous)."""
    if ";" in e164:
        return False
    try:
        number = phonenumbers.parse(e164, None)
    except phonenumbers.NumberParseException:
        return False
    kind = phonenumbers.number_type(number)
    return kind in (
        phonenumbers.PhoneNumberType.MOBILE,
        phonenumbers.PhoneNumberType.FIXED_LINE_OR_MOBILE,
    )


def normalize_email(raw: str) -> str:
    """Return a validated, lower-cased address or raise :class:`InvalidContact`.

    No DNS lookup: discovery runs offline in tests and a registry page may name a domain whose
    MX is briefly down; a dead address shows up as a bounce, which the ladder handles.
    """
    try:
        result = validate_email(raw.strip(), check_deliverability=False)
    except EmailNotValidError as exc:
        raise InvalidContact(f"{raw!r} is not an e-mail address: {exc}") from exc
    return result.normalized.lower()


def normalize_address(raw: str) -> str:
    """Collapse a postal address onto one line with single spaces."""
    text = " ".join(raw.replace("\u3000", " ").split())
    if len(text) < 4:
        raise InvalidContact(f"{raw!r} is too short to be a postal address")
    return text


_LICENCE = re.compile(r"^Z\d{13}$")
_USCC = re.compile(r"^[0-9A-HJ-NPQRTUWXY]{2}\d{6}[0-9A-HJ-NPQRTUWXY]{10}$")


def normalize_licence(raw: str) -> str:
    """PBOC payment licence number: ``Z`` + 13 digits (registries.md §1.4)."""
    text = raw.strip().upper()
    if not _LICENCE.match(text):
        raise InvalidContact(f"{raw!r} is not a PBOC licence number (expected Z + 13 digits)")
    return text


_USCC_ALPHABET = "0123456789ABCDEFGHJKLMNPQRTUWXY"
_USCC_WEIGHTS = (1, 3, 9, 27, 19, 26, 16, 17, 20, 29, 25, 13, 8, 24, 10, 30, 28)


def normalize_uscc(raw: str) -> str:
    """统一社会信用代码 (GB 32100-2015): 18 characters with a mod-31 check character."""
    text = raw.strip().upper()
    if not _USCC.match(text):
        raise InvalidContact(f"{raw!r} is not a unified social credit code (18 characters)")
    total = sum(_USCC_ALPHABET.index(c) * w for c, w in zip(text[:17], _USCC_WEIGHTS, strict=True))
    check = _USCC_ALPHABET[(31 - total % 31) % 31]
    if text[17] != check:
        raise InvalidContact(f"{raw!r} fails the GB 32100 check character (expected {check})")
    return text


def normalize(kind: str, raw: str) -> str:
    """Normalise a value of any contact kind."""
    if kind in ("phone", "sms"):
        return normalize_phone(raw)
    if kind == "email":
        return normalize_email(raw)
    if kind == "postal":
        return normalize_address(raw)
    if kind == "licence":
        return normalize_licence(raw)
    if kind in ("web_form", "webhook", "website"):
        text = raw.strip()
        if not re.match(r"^https?://[^\s/]+", text):
            raise InvalidContact(f"{raw!r} is not an http(s) URL")
        return text
    raise InvalidContact(f"unknown contact kind {kind!r}")
