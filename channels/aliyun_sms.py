"""Alibaba Cloud SMS (阿里云短信服务): Dysmsapi 2017-05-25 ``SendSms``, one number per attempt.

What goes out
-------------
Chinese carriers deliver only text from a template the provider approved (短信模板) under an
approved signature (短信签名). The rendered notice body therefore never leaves this machine:
the approved ``TemplateCode`` configured for ``Outgoing.notice_kind`` does, and
``Outgoing.params`` travels as ``TemplateParam`` (a JSON *string*, as the API wants it).
``OutId`` is ``Outgoing.idempotency_key``; Alibaba echoes it as ``out_id`` in delivery
receipts, which is how a duplicate caused by a re-send is told apart and attributed.

:meth:`AliyunSmsChannel.prepare` returns the deterministic request parameters (``Action``,
``Version``, ``PhoneNumbers``, ``SignName``, ``TemplateCode``, ``TemplateParam``, ``OutId``) as
canonical JSON: sorted keys, no whitespace, UTF-8. That is what the engine hashes and chains
before anything leaves. :meth:`AliyunSmsChannel.send` reads those bytes back (never the
``Outgoing``), adds what must differ on every try (timestamp, nonce, signature) and POSTs.
The parameters go in the query string with an empty body, as the official examples do.

Signing (pure functions below, tested against the official worked examples)
---------------------------------------------------------------------------
* ``signature = "v3"`` (default): ``ACS3-HMAC-SHA256`` in the ``Authorization`` header
  (help.aliyun.com/zh/sdk/product-overview/v3-request-structure-and-signature).
* ``signature = "v2"``: the older RPC ``HMAC-SHA1`` with ``Signature`` as a query parameter
  (alibabacloud.com/help/en/sdk/product-overview/rpc-mechanism), kept for accounts or
  gateways that still need it; Alibaba marks it "no longer recommended".

Outcomes
--------
SendSms is **not idempotent** ("国内短信、国际短信及多媒体短信目前均不支持幂等的能力"), so
anything that may have reached Alibaba is ``Unknown``, never ``Transient``: the engine
records ``unknown`` and re-sends the same parameters with the same ``OutId`` so that a
duplicate is visible and attributable, instead of silently sending twice.

================================================  ==========================================
Answer                                            Outcome
================================================  ==========================================
``Code == "OK"``                                  Receipt, ``provider_id = BizId``
connect error / connect or pool timeout / proxy   Transient (nothing was written to Alibaba)
read or write timeout, reset, protocol error      Unknown (the request may have been taken)
invalid request (``LocalProtocolError``)          Permanent, not the recipient's fault
HTTP 5xx (any code but ``Throttling*``)           Unknown
``isp.SYSTEM_ERROR``, ``ServiceUnavailable``      Unknown
HTTP 429, ``Throttling``, ``Throttling.*``        Transient, retry_after 60 s
``isv.BUSINESS_LIMIT_CONTROL`` (分钟级 per min)   Transient, retry_after 60 s
``isv.BUSINESS_LIMIT_CONTROL`` (小时级 per hour)  Transient, retry_after 3600 s
``isv.BUSINESS_LIMIT_CONTROL`` (天级 per day)     Transient, until next 00:00 Asia/Shanghai
``isv.BUSINESS_LIMIT_CONTROL`` (level not said)   Transient, retry_after 3600 s
``isv.DAY_LIMIT_CONTROL``                         Transient, until next 00:00 Asia/Shanghai
``isv.MONTH_LIMIT_CONTROL``                       Transient, until the 1st of next month 00:00
``SignatureNonceUsed``                            Transient (rejected; next try has a new nonce)
``isv.MOBILE_NUMBER_ILLEGAL``                     Permanent, bad_recipient=True
``isv.BLACK_KEY_CONTROL_LIMIT``                   Permanent, bad_recipient=False (see below)
template, signature, parameter, content errors    Permanent, bad_recipient=False
account, billing, RAM, IP, auth, clock errors     Permanent, bad_recipient=False
any other code                                    Permanent, bad_recipient=False
unparseable 4xx (408 → Transient)                 Permanent, bad_recipient=False
unparseable 2xx                                   Unknown
================================================  ==========================================

``isv.BLACK_KEY_CONTROL_LIMIT`` (黑名单管控) is described by Alibaba as a *keyword* blacklist
hit in the template variables ("变量内容含有限制发送的内容", "模板变量中存在黑名单关键字"),
i.e. our parameters, not the number; marking the contact point bad would lose a good number.
Unknown codes are Permanent for our side: Alibaba answered definitively, so nothing was sent,
and retrying a reply we do not understand would only repeat it; an operator has to look.

The "per-day" windows are natural days in China Standard Time (UTC+8, no daylight saving
since 1991), hence a fixed offset rather than a tz database lookup.

Nothing secret is ever recorded: transcripts and exceptions carry the method, the URL with
``Signature`` redacted (v2), the non-secret headers with the ``Authorization`` signature
redacted (v3), the AccessKeyId (it names the account that sent, which is evidence), the
HTTP status and Alibaba's ``RequestId``, ``Code``, ``Message`` and ``BizId``. The signature
is redacted because it is a bearer value for its validity window.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta, timezone
from typing import Any, ClassVar, Literal
from urllib.parse import quote, urlsplit

import httpx
from pydantic import BaseModel, ConfigDict, Field, field_validator

from channels.base import (
    Outgoing,
    Permanent,
    Prepared,
    RateLimit,
    Receipt,
    Transient,
    Unknown,
    resolve_secret,
)
from channels.http import failure_from_transport_error, make_client, scrub

ACTION = "SendSms"
QUERY_ACTION = "QuerySendDetails"
API_VERSION = "2017-05-25"
DEFAULT_REGION = "cn-hangzhou"
CENTRAL_ENDPOINT = "https://dysmsapi.aliyuncs.com/"
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
V3_ALGORITHM = "ACS3-HMAC-SHA256"

#: The notice kinds the ladder produces; template tables are checked against them so that a
#: typo in the config fails at load time, not at the first send weeks later.
NOTICE_KINDS = frozenset(
    {"cancellation_request", "reminder", "complaint_acquirer", "complaint_regulator"}
)

#: China Standard Time: Alibaba's day and month quotas reset on Beijing midnight.
CHINA_TZ = timezone(timedelta(hours=8), "CST")

#: A gateway throttle does not say its window; a minute outlasts any per-second QPS window
#: and costs nothing for a notice that waits days between ladder steps anyway.
THROTTLE_RETRY_AFTER = 60.0
MINUTE = 60.0
HOUR = 3600.0

_E164 = re.compile(r"^\+[1-9][0-9]{6,14}$")


# --------------------------------------------------------------------------------------------
# Signing: pure functions
# --------------------------------------------------------------------------------------------


def percent_encode(value: str) -> str:
    """RFC 3986 encoding as Alibaba signs it: only ``A-Z a-z 0-9 - _ . ~`` stay literal.

    Space becomes ``%20`` (never ``+``), ``*`` becomes ``%2A``, ``~`` stays; text is UTF-8.
    Both signature versions share it, and it is also what goes on the wire, so the bytes the
    server canonicalises are exactly the bytes we signed.
    """
    return quote(value, safe="-_.~")


def canonical_query(params: Mapping[str, str]) -> str:
    """Sorted ``k=v`` pairs joined by ``&``, names and values percent-encoded (both versions)."""
    return "&".join(f"{percent_encode(k)}={percent_encode(params[k])}" for k in sorted(params))


def hmac_sha1_base64(key: str, data: str) -> str:
    """Base64 of HMAC-SHA1: the primitive of the v2 signature (key passed as is)."""
    digest = hmac.new(key.encode("utf-8"), data.encode("utf-8"), hashlib.sha1).digest()
    return base64.b64encode(digest).decode("ascii")


def string_to_sign_v2(method: str, params: Mapping[str, str]) -> str:
    """``METHOD&%2F&percentEncode(CanonicalizedQueryString)`` (the query is encoded twice)."""
    return f"{method.upper()}&{percent_encode('/')}&{percent_encode(canonical_query(params))}"


def sign_v2(method: str, params: Mapping[str, str], access_key_secret: str) -> str:
    """The v2 ``Signature``: Base64(HMAC-SHA1(secret + "&", StringToSign)).

    ``params`` are all request parameters except ``Signature`` itself.
    """
    return hmac_sha1_base64(access_key_secret + "&", string_to_sign_v2(method, params))


def canonical_request_v3(
    method: str,
    path: str,
    query: Mapping[str, str],
    headers: Mapping[str, str],
    hashed_payload: str,
) -> tuple[str, str]:
    """Return ``(CanonicalRequest, SignedHeaders)`` for ACS3-HMAC-SHA256.

    Signs ``host``, ``content-type`` and every ``x-acs-*`` header present: lower-cased
    names, trimmed values, sorted. ``Authorization`` is never signed (it carries the result).
    """
    signed = {
        name.lower(): value.strip()
        for name, value in headers.items()
        if name.lower() in ("host", "content-type") or name.lower().startswith("x-acs-")
    }
    names = sorted(signed)
    canonical_headers = "".join(f"{n}:{signed[n]}\n" for n in names)
    signed_headers = ";".join(names)
    request = "\n".join(
        [
            method.upper(),
            path or "/",
            canonical_query(query),
            canonical_headers,
            signed_headers,
            hashed_payload,
        ]
    )
    return request, signed_headers


def string_to_sign_v3(canonical_request: str) -> str:
    """``ACS3-HMAC-SHA256\\n`` + hex SHA-256 of the canonical request."""
    digest = hashlib.sha256(canonical_request.encode("utf-8")).hexdigest()
    return f"{V3_ALGORITHM}\n{digest}"


def sign_v3(access_key_secret: str, string_to_sign: str) -> str:
    """Hex HMAC-SHA256 of the string to sign, keyed with the AccessKey secret."""
    key = access_key_secret.encode("utf-8")
    return hmac.new(key, string_to_sign.encode("utf-8"), hashlib.sha256).hexdigest()


def authorization_v3(access_key_id: str, signed_headers: str, signature: str) -> str:
    """The ``Authorization`` header value: commas, no spaces, as Alibaba documents it."""
    return (
        f"{V3_ALGORITHM} Credential={access_key_id},"
        f"SignedHeaders={signed_headers},Signature={signature}"
    )


def redact_authorization(value: str) -> str:
    """``Authorization`` with the signature replaced, for transcripts (Credential is kept)."""
    return re.sub(r"Signature=[^,\s]*", "Signature=REDACTED", value)


# --------------------------------------------------------------------------------------------
# Classification: pure
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Verdict:
    """What one answer from Alibaba means for the attempt. Pure data, easy to test."""

    outcome: Literal["sent", "transient", "permanent", "unknown"]
    reason: str
    retry_after: float | None = None
    bad_recipient: bool = False


def seconds_until_next_day(now: datetime) -> float:
    """Seconds from ``now`` until the next 00:00 China Standard Time (daily quotas reset)."""
    local = now.astimezone(CHINA_TZ)
    midnight = (local + timedelta(days=1)).replace(hour=0, minute=0, second=0, microsecond=0)
    return (midnight - local).total_seconds()


def seconds_until_next_month(now: datetime) -> float:
    """Seconds from ``now`` until 00:00 CST on the 1st of next month (monthly quotas reset)."""
    local = now.astimezone(CHINA_TZ)
    year, month = (local.year + 1, 1) if local.month == 12 else (local.year, local.month + 1)
    first = datetime(year, month, 1, tzinfo=CHINA_TZ)
    return (first - local).total_seconds()


#: Our request or our account is wrong; the number is innocent. An operator must act.
CONFIG_CODES = frozenset(
    {
        "isv.SMS_TEMPLATE_ILLEGAL",
        "isv.SMS_SIGNATURE_ILLEGAL",
        "isv.SMS_SIGN_ILLEGAL",
        "isv.SIGN_STATE_ILLEGAL",
        "isv.SMS_SIGNATURE_SCENE_ILLEGAL",
        "isv.TEMPLATE_MISSING_PARAMETERS",
        "isv.TEMPLATE_PARAMS_ILLEGAL",
        "isv.INVALID_JSON_PARAM",
        "isv.INVALID_PARAMETERS",
        "isv.PARAM_LENGTH_LIMIT",
        "isv.PARAM_NOT_SUPPORT_URL",
        "isv.SMS_CONTENT_ILLEGAL",
        "isv.DOMESTIC_NUMBER_NOT_SUPPORTED",
        "isv.EXTEND_CODE_ERROR",
        "isv.MOBILE_COUNT_OVER_LIMIT",
        "isv.BLACK_KEY_CONTROL_LIMIT",
        "isv.AMOUNT_NOT_ENOUGH",
        "isv.OUT_OF_SERVICE",
        "isv.PRODUCT_UN_SUBSCRIPT",
        "isv.PRODUCT_UNSUBSCRIBE",
        "isv.ACCOUNT_NOT_EXISTS",
        "isv.ACCOUNT_ABNORMAL",
        "isv.DENY_IP_RANGE",
        "isp.RAM_PERMISSION_DENY",
        "InvalidAccessKeyId.NotFound",
        "InvalidAccessKeyId.Inactive",
        "SignatureDoesNotMatch",
        "IncompleteSignature",
        "InvalidTimeStamp.Expired",
        "MissingParameter",
        "Forbidden.RAM",
    }
)

#: The number itself cannot receive: mark the contact point bad and let the ladder fall back.
BAD_RECIPIENT_CODES = frozenset({"isv.MOBILE_NUMBER_ILLEGAL"})

#: Alibaba may have acted on the request before failing.
UNKNOWN_CODES = frozenset({"isp.SYSTEM_ERROR", "ServiceUnavailable", "InternalError"})


def classify(code: str, message: str, *, status: int, now: datetime) -> Verdict:
    """Map one SendSms answer (HTTP status, ``Code``, ``Message``) to a :class:`Verdict`.

    The table in the module docstring is the specification; this is its only implementation.
    """
    if code == "OK" and status < 300:
        return Verdict("sent", "OK")
    if code == "Throttling" or code.startswith("Throttling."):
        return Verdict("transient", f"{code}: gateway flow control", THROTTLE_RETRY_AFTER)
    if status >= 500 or code in UNKNOWN_CODES:
        return Verdict("unknown", f"{code or status}: Alibaba failed and may have sent")
    if code == "isv.BUSINESS_LIMIT_CONTROL":
        if "分钟" in message:
            return Verdict("transient", f"{code}: per-minute flow control", MINUTE)
        if "小时" in message:
            return Verdict("transient", f"{code}: per-hour flow control", HOUR)
        if "天" in message or "日" in message:
            return Verdict(
                "transient", f"{code}: per-day flow control", seconds_until_next_day(now)
            )
        return Verdict("transient", f"{code}: flow control, window not stated", HOUR)
    if code == "isv.DAY_LIMIT_CONTROL":
        return Verdict("transient", f"{code}: daily quota", seconds_until_next_day(now))
    if code == "isv.MONTH_LIMIT_CONTROL":
        return Verdict("transient", f"{code}: monthly quota", seconds_until_next_month(now))
    if code == "SignatureNonceUsed":
        return Verdict("transient", f"{code}: rejected before processing")
    if status == 429:
        return Verdict("transient", f"HTTP 429 {code}".strip(), THROTTLE_RETRY_AFTER)
    if code in BAD_RECIPIENT_CODES:
        return Verdict("permanent", f"{code}: the number cannot receive", bad_recipient=True)
    if code in CONFIG_CODES:
        return Verdict("permanent", f"{code}: fix the channel configuration or account")
    return Verdict("permanent", f"{code or status}: unclassified answer, needs an operator")


# --------------------------------------------------------------------------------------------
# The channel
# --------------------------------------------------------------------------------------------


class AliyunSmsSettings(BaseModel):
    """``[channels.<name>]`` for ``adapter = "aliyun_sms"``. Secrets are named, never given."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    access_key_id_env: str = Field(min_length=1)
    access_key_secret_env: str = Field(min_length=1)
    sign_name: str = Field(min_length=1)  # the approved 短信签名, e.g. "某某商户"
    templates: dict[str, str]  # notice_kind -> approved TemplateCode, e.g. "SMS_15305xxxx"
    signature: Literal["v3", "v2"] = "v3"
    region: str = DEFAULT_REGION
    endpoint: str | None = None  # default: dysmsapi.aliyuncs.com, or dysmsapi.<region>...
    timeout: float = Field(default=10.0, ge=1.0)  # Alibaba asks for at least 1 s

    @field_validator("templates")
    @classmethod
    def _known_kinds(cls, value: dict[str, str]) -> dict[str, str]:
        unknown = sorted(set(value) - NOTICE_KINDS)
        if unknown:
            raise ValueError(f"unknown notice kinds {unknown}; expected {sorted(NOTICE_KINDS)}")
        if not value:
            raise ValueError("name at least one TemplateCode")
        return value

    @field_validator("endpoint")
    @classmethod
    def _https(cls, value: str | None) -> str | None:
        if value is not None:
            _check_endpoint(value)
        return value

    def url(self) -> str:
        """The endpoint to POST to: explicit, or derived from the region like the SDK does."""
        if self.endpoint:
            return self.endpoint if self.endpoint.endswith("/") else self.endpoint + "/"
        if self.region == DEFAULT_REGION:
            return CENTRAL_ENDPOINT
        return f"https://dysmsapi.{self.region}.aliyuncs.com/"


def _check_endpoint(value: str) -> None:
    """Credentials-bearing requests go over TLS; plain HTTP only to a local test gateway."""
    parts = urlsplit(value)
    local = parts.hostname in ("localhost", "127.0.0.1", "::1")
    if parts.scheme != "https" and not (parts.scheme == "http" and local):
        raise ValueError("endpoint must be an https:// URL")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ValueError("endpoint must be scheme://host/ only (RPC requests are signed for /)")
    if parts.username or parts.password:
        raise ValueError("endpoint must not carry credentials")


def canonical_json(value: Any) -> bytes:
    """Sorted keys, no whitespace, UTF-8 as is: one object, one byte string."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def phone_numbers(recipient: str) -> str:
    """E.164 to what SendSms documents: bare 11 digits for +86, country code + number else."""
    if not _E164.match(recipient):
        raise ValueError(f"not an E.164 number: {recipient!r}")
    if recipient.startswith("+86"):
        return recipient[3:]
    return recipient[1:]


def _utc_now() -> datetime:
    return datetime.now(UTC)


def _random_nonce() -> str:
    return secrets.token_hex(16)


@dataclass(frozen=True, slots=True)
class _Wire:
    """One signed request and its secret-free description for the evidence log."""

    url: str
    headers: dict[str, str]
    transcript: dict[str, Any]
    signature: str


@dataclass(frozen=True, slots=True)
class StatusAnswer:
    """A status query's answer as it came: HTTP status, exact body, secret-free transcript."""

    status: int
    body: bytes
    transcript: dict[str, Any]


class AliyunSmsChannel:
    """Sends approved-template SMS through Alibaba Cloud Dysmsapi ``SendSms``."""

    adapter: ClassVar[str] = "aliyun_sms"
    kinds: ClassVar[frozenset[str]] = frozenset({"sms"})
    Settings: ClassVar[type[BaseModel]] = AliyunSmsSettings
    #: Alibaba's default per-number flow control for one signature (1/min, 5/hour, 10/day;
    #: the verification-code defaults, the strictest it documents, and the carriers' 10
    #: non-marketing SMS a day). Staying under them spares a guaranteed
    #: ``isv.BUSINESS_LIMIT_CONTROL``; a console with other limits overrides via ``limits``.
    default_limits: ClassVar[tuple[RateLimit, ...]] = (
        RateLimit(1, 60),
        RateLimit(5, 3600),
        RateLimit(10, 86400),
    )

    def __init__(
        self,
        name: str,
        settings: Mapping[str, Any],
        env: Mapping[str, str],
        *,
        clock: Callable[[], datetime] = _utc_now,
        nonce: Callable[[], str] = _random_nonce,
    ) -> None:
        """Validate settings and resolve secrets now, so a bad config fails at load time.

        ``clock`` (timezone-aware) and ``nonce`` exist so tests can fix what is signed.
        """
        self.name = name
        self.settings = AliyunSmsSettings.model_validate(dict(settings))
        self._access_key_id = resolve_secret(settings, "access_key_id", env)
        self._access_key_secret = resolve_secret(settings, "access_key_secret", env)
        self._url = self.settings.url()
        self._clock = clock
        self._nonce = nonce
        self._client = make_client(timeout=self.settings.timeout)

    def __repr__(self) -> str:
        return f"AliyunSmsChannel(name={self.name!r}, endpoint={self._url!r})"

    def prepare(self, msg: Outgoing) -> Prepared:
        """The deterministic SendSms parameters as canonical JSON (no time, nonce, signature)."""
        if msg.kind != "sms":
            raise Permanent(f"aliyun_sms cannot send {msg.kind!r} messages", bad_recipient=False)
        template = self.settings.templates.get(msg.notice_kind)
        if template is None:
            raise Permanent(
                f"templates.{msg.notice_kind}: no approved TemplateCode configured",
                bad_recipient=False,
            )
        try:
            numbers = phone_numbers(msg.recipient)
        except ValueError as exc:
            raise Permanent(str(exc), bad_recipient=True) from None
        params: dict[str, str] = {
            "Action": ACTION,
            "Version": API_VERSION,
            "PhoneNumbers": numbers,
            "SignName": self.settings.sign_name,
            "TemplateCode": template,
            "OutId": msg.idempotency_key,
        }
        if msg.params:
            params["TemplateParam"] = canonical_json(dict(msg.params)).decode("utf-8")
        return Prepared(
            msg,
            canonical_json(params),
            "application/json",
            msg.idempotency_key,
            {"ext": "json", "template": template, "signature": self.settings.signature},
        )

    async def send(self, prepared: Prepared) -> Receipt:
        """Sign the prepared parameters, POST them, and classify the answer."""
        now = self._clock()
        wire = self._sign(_load_params(prepared.payload), now)
        transcript = wire.transcript
        try:
            request = self._client.build_request("POST", wire.url, headers=wire.headers)
            response = await self._client.send(request)
        except httpx.TransportError as exc:
            raise failure_from_transport_error(
                exc, what="SendSms", transcript=transcript, secrets=self._secrets(wire)
            ) from None
        return self._interpret(response, transcript, now)

    async def query_send_details(
        self,
        recipient: str,
        send_date: date,
        *,
        biz_id: str | None = None,
        page: int = 1,
        page_size: int = 50,
    ) -> StatusAnswer:
        """``QuerySendDetails``: what Alibaba knows of the SMS sent to one number on one day.

        Signed exactly as :meth:`send` signs ``SendSms`` (same version, same credentials), so a
        channel that can send can also ask what became of it. ``send_date`` is the Beijing
        calendar day of the send (only the last 30 days can be asked about); ``biz_id`` narrows
        the answer to one send, and leaving it out lists every send to that number that day,
        each with its ``OutId`` - how a send whose answer we never saw is found again.

        A query changes nothing at Alibaba, so every transport failure is :class:`Transient`.
        The answer comes back unparsed: reading it is the engine's job (``outreach.receipts``).
        """
        params: dict[str, str] = {
            "Action": QUERY_ACTION,
            "Version": API_VERSION,
            "PhoneNumber": phone_numbers(recipient),
            "SendDate": send_date.strftime("%Y%m%d"),
            "PageSize": str(page_size),
            "CurrentPage": str(page),
        }
        if biz_id:
            params["BizId"] = biz_id
        wire = self._sign(params, self._clock())
        transcript = wire.transcript
        try:
            request = self._client.build_request("POST", wire.url, headers=wire.headers)
            response = await self._client.send(request)
        except httpx.TransportError as exc:
            transcript["error"] = type(exc).__name__
            said = scrub(str(exc) or type(exc).__name__, self._secrets(wire))
            raise Transient(
                f"QuerySendDetails failed, {type(exc).__name__}: {said}", transcript=transcript
            ) from None
        transcript["status"] = response.status_code
        return StatusAnswer(response.status_code, response.content, transcript)

    async def aclose(self) -> None:
        await self._client.aclose()

    # -- internals ------------------------------------------------------------------------

    def _common_transcript(self, now: datetime, nonce: str) -> dict[str, Any]:
        return {
            "adapter": self.adapter,
            "signature_version": self.settings.signature,
            "method": "POST",
            "timestamp": _iso(now),
            "nonce": nonce,
        }

    def _sign_v3(self, params: dict[str, str], now: datetime, nonce: str) -> _Wire:
        query = {k: v for k, v in params.items() if k not in ("Action", "Version")}
        headers = {
            "host": urlsplit(self._url).netloc,
            "x-acs-action": params.get("Action", ACTION),
            "x-acs-version": params.get("Version", API_VERSION),
            "x-acs-date": _iso(now),
            "x-acs-signature-nonce": nonce,
            "x-acs-content-sha256": EMPTY_SHA256,
        }
        canonical, signed_headers = canonical_request_v3("POST", "/", query, headers, EMPTY_SHA256)
        signature = sign_v3(self._access_key_secret, string_to_sign_v3(canonical))
        auth = authorization_v3(self._access_key_id, signed_headers, signature)
        url = f"{self._url}?{canonical_query(query)}"
        sent_headers = {**headers, "accept": "application/json", "authorization": auth}
        transcript = self._common_transcript(now, nonce)
        transcript["url"] = url
        transcript["request_headers"] = {
            **sent_headers,
            "authorization": redact_authorization(auth),
        }
        return _Wire(url, sent_headers, transcript, signature)

    def _sign_v2(self, params: dict[str, str], now: datetime, nonce: str) -> _Wire:
        signed = {
            **params,
            "Format": "JSON",
            "AccessKeyId": self._access_key_id,
            "SignatureMethod": "HMAC-SHA1",
            "SignatureVersion": "1.0",
            "SignatureNonce": nonce,
            "Timestamp": _iso(now),
        }
        signature = sign_v2("POST", signed, self._access_key_secret)
        base = f"{self._url}?{canonical_query(signed)}"
        url = f"{base}&Signature={percent_encode(signature)}"
        headers = {"host": urlsplit(self._url).netloc, "accept": "application/json"}
        transcript = self._common_transcript(now, nonce)
        transcript["url"] = f"{base}&Signature=REDACTED"
        transcript["request_headers"] = dict(headers)
        return _Wire(url, headers, transcript, signature)

    def _sign(self, params: dict[str, str], now: datetime) -> _Wire:
        nonce = self._nonce()
        if self.settings.signature == "v3":
            return self._sign_v3(params, now, nonce)
        return self._sign_v2(params, now, nonce)

    def _secrets(self, wire: _Wire) -> tuple[str, ...]:
        """What must never appear in an error text: the key secret and this request's
        signature, also as it is percent-encoded in a V2 URL (defence in depth)."""
        return (self._access_key_secret, wire.signature, percent_encode(wire.signature))

    def _interpret(
        self, response: httpx.Response, transcript: dict[str, Any], now: datetime
    ) -> Receipt:
        body = response.content
        transcript["status"] = response.status_code
        if "date" in response.headers:
            transcript["response_date"] = response.headers["date"]
        try:
            data = json.loads(body)
        except ValueError:
            data = None
        if not isinstance(data, dict):
            raise _unparseable(response.status_code, body, transcript)
        code = str(data.get("Code", ""))
        message = str(data.get("Message", ""))
        for key, field in (
            ("request_id", "RequestId"),
            ("code", "Code"),
            ("message", "Message"),
            ("biz_id", "BizId"),
        ):
            if field in data:
                transcript[key] = data[field]
        verdict = classify(code, message, status=response.status_code, now=now)
        detail = f"{verdict.reason} ({message})" if message else verdict.reason
        common: dict[str, Any] = {"code": code or None, "response": body, "transcript": transcript}
        if verdict.outcome == "sent":
            biz_id = data.get("BizId")
            return Receipt(
                accepted=True,
                provider_id=str(biz_id) if biz_id else None,
                response=body,
                response_type="application/json",
                transcript=transcript,
            )
        if verdict.outcome == "transient":
            raise Transient(detail, retry_after=verdict.retry_after, **common)
        if verdict.outcome == "unknown":
            raise Unknown(detail, **common)
        raise Permanent(detail, bad_recipient=verdict.bad_recipient, **common)


def _iso(moment: datetime) -> str:
    """``yyyy-MM-ddTHH:mm:ssZ`` in UTC, the only form both signature versions accept."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _load_params(payload: bytes) -> dict[str, str]:
    """Read back what :meth:`AliyunSmsChannel.prepare` wrote; anything else is our bug."""
    try:
        data = json.loads(payload)
    except ValueError:
        data = None
    if not isinstance(data, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in data.items()
    ):
        raise Permanent("payload is not a prepared aliyun_sms request", bad_recipient=False)
    return data


def _unparseable(status: int, body: bytes, transcript: dict[str, Any]) -> Exception:
    """An answer that is not Alibaba's JSON: classify by HTTP status alone."""
    if status in (408, 429):
        return Transient(
            f"HTTP {status} without a JSON body",
            retry_after=THROTTLE_RETRY_AFTER if status == 429 else None,
            response=body,
            transcript=transcript,
        )
    if 400 <= status < 500:
        return Permanent(
            f"HTTP {status} without a JSON body: check the endpoint",
            bad_recipient=False,
            response=body,
            transcript=transcript,
        )
    return Unknown(
        f"HTTP {status} without a JSON body; the message may have been accepted",
        response=body,
        transcript=transcript,
    )
