"""Tencent Cloud SMS (腾讯云短信): API 3.0 ``SendSms``, version 2021-01-11, one number per attempt.

What goes out
-------------
As with every Chinese SMS gateway, only an approved template (正文模板) under an approved
signature (签名) is delivered, so the notice text stays here: the ``TemplateId`` configured for
``Outgoing.notice_kind`` goes out with ``TemplateParamSet``. Tencent's template variables are
*positional* (``{1}``, ``{2}``...), so ``template_params`` lists, per notice kind, which
``Outgoing.params`` keys fill them and in which order. ``SessionContext`` is
``Outgoing.idempotency_key``; Tencent echoes it in the answer and in status callbacks, so a
duplicate caused by a re-send is attributable.

:meth:`TencentSmsChannel.prepare` returns the exact JSON body that is POSTed (sorted keys, no
whitespace, UTF-8): nothing in the body varies between tries, the timestamp and the signature
live in headers. The engine therefore hashes and chains the very bytes that go on the wire,
and :meth:`TencentSmsChannel.send` signs those bytes as they are.

Signing
-------
``TC3-HMAC-SHA256`` (cloud.tencent.com/document/api/213/30654, "签名方法 v3") in pure
functions below, tested against the documented CVM ``DescribeInstances`` example. We sign
``content-type``, ``host`` and ``x-tc-action``, as the current documentation does.

Outcomes
--------
Failures for a single number come back in ``SendStatusSet[].Code`` with HTTP 200 and no
``Response.Error``; only request-wide failures (auth, limits, parameters) use the error
envelope. Both go through the same table. Anything that may have reached Tencent's SMS
backend is ``Unknown`` (the engine re-sends with the same ``SessionContext`` so a duplicate is
visible), not ``Transient``.

==============================================================  ==================================
Answer                                                          Outcome
==============================================================  ==================================
``SendStatusSet[].Code == "Ok"``                                Receipt, ``provider_id=SerialNo``
connect error / connect or pool timeout / proxy                 Transient (nothing reached Tencent)
read or write timeout, reset, protocol error                    Unknown
invalid request (``LocalProtocolError``, bad URL scheme)        Permanent, not the recipient's fault
HTTP 5xx                                                        Unknown
``InternalError``, ``InternalError.Timeout``,                   Unknown (the backend may have sent)
``.SendAndRecvFail``, ``.OtherError``, ``.UnknownError``
HTTP 429, ``RequestLimitExceeded``, ``RequestLimitExceeded.*``  Transient, retry_after 60 s
``LimitExceeded.PhoneNumberThirtySecondLimit``                  Transient, retry_after 30 s
``LimitExceeded.PhoneNumberOneHourLimit``                       Transient, retry_after 3600 s
``LimitExceeded.PhoneNumberDailyLimit``,                        Transient, until next 00:00
``.PhoneNumberSameContentDailyLimit``, ``.AppDailyLimit``,      Asia/Shanghai
``.DailyLimit``
``LimitExceeded.DeliveryFrequencyLimit``, other                 Transient, retry_after 3600 s
``LimitExceeded.*`` (window not stated)
``FailedOperation.MarketingSendTimeConstraint``                 Transient, until next 08:00 CST
``InvalidParameterValue.IncorrectPhoneNumber``,                 Permanent, bad_recipient=True
``FailedOperation.PhoneNumberInBlacklist``,
``FailedOperation.PhoneNumberOnBlacklist``
``AuthFailure.*``, ``UnauthorizedOperation.*``, signature or    Permanent, bad_recipient=False
template unapproved, sensitive words, parameter errors,
balance, ``LimitExceeded.PhoneNumberCountLimit``, clock skew
any other code; unparseable 4xx (408 → Transient)               Permanent, bad_recipient=False
unparseable 2xx, no status for our number                       Unknown
==============================================================  ==================================

Unknown codes are Permanent for our side: Tencent answered definitively, so repeating a reply
we do not understand would not change it; an operator has to look. Daily windows are natural
days in China Standard Time (UTC+8, no daylight saving), hence a fixed offset.

Nothing secret is recorded: transcripts and exceptions carry the method, URL, the non-secret
headers with the ``Authorization`` signature redacted (it can be replayed within Tencent's
five-minute window; TC3 has no nonce), the SecretId (it names the account, which is
evidence), the HTTP status, ``RequestId`` and the ``SendStatus`` or ``Error`` fields.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from typing import Any, ClassVar, Literal, NoReturn
from urllib.parse import urlsplit

import httpx
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

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
from channels.http import failure_from_transport_error, make_client

ACTION = "SendSms"
PULL_STATUS_ACTION = "PullSmsSendStatus"
API_VERSION = "2021-01-11"
SERVICE = "sms"
DEFAULT_ENDPOINT = "https://sms.tencentcloudapi.com"
CONTENT_TYPE = "application/json; charset=utf-8"
TC3_ALGORITHM = "TC3-HMAC-SHA256"

#: The notice kinds the ladder produces; checked so a typo fails at load time.
NOTICE_KINDS = frozenset(
    {"cancellation_request", "reminder", "complaint_acquirer", "complaint_regulator"}
)

#: China Standard Time: Tencent's daily limits and the 08:00-22:00 window are Beijing time.
CHINA_TZ = timezone(timedelta(hours=8), "CST")

#: Request-rate throttles do not say their window; a minute outlasts any per-second window.
THROTTLE_RETRY_AFTER = 60.0
HOUR = 3600.0

_E164 = re.compile(r"^\+[1-9][0-9]{6,14}$")


# --------------------------------------------------------------------------------------------
# Signing: pure functions
# --------------------------------------------------------------------------------------------


def hashed_payload(payload: bytes) -> str:
    """Lower-case hex SHA-256 of the exact body bytes (``HashedRequestPayload``)."""
    return hashlib.sha256(payload).hexdigest()


def canonical_request(
    method: str,
    path: str,
    query: str,
    headers: Mapping[str, str],
    payload: bytes,
) -> tuple[str, str]:
    """Return ``(CanonicalRequest, SignedHeaders)``; every header given is signed.

    Names and values are lower-cased and trimmed, then sorted by name. ``query`` is the
    canonical query string, empty for POST.
    """
    signed = {name.lower(): value.strip().lower() for name, value in headers.items()}
    names = sorted(signed)
    canonical_headers = "".join(f"{n}:{signed[n]}\n" for n in names)
    signed_headers = ";".join(names)
    request = "\n".join(
        [
            method.upper(),
            path or "/",
            query,
            canonical_headers,
            signed_headers,
            hashed_payload(payload),
        ]
    )
    return request, signed_headers


def utc_date(timestamp: int) -> str:
    """The credential-scope date: the **UTC** date of the timestamp, not Beijing's."""
    return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%d")


def string_to_sign(timestamp: int, service: str, canonical: str) -> str:
    """``TC3-HMAC-SHA256\\n<timestamp>\\n<date>/<service>/tc3_request\\n<hash of request>``."""
    digest = hashlib.sha256(canonical.encode("utf-8")).hexdigest()
    scope = f"{utc_date(timestamp)}/{service}/tc3_request"
    return f"{TC3_ALGORITHM}\n{timestamp}\n{scope}\n{digest}"


def _hmac_sha256(key: bytes, message: str) -> bytes:
    return hmac.new(key, message.encode("utf-8"), hashlib.sha256).digest()


def signing_key(secret_key: str, date: str, service: str) -> bytes:
    """``SecretSigning``: HMAC chain over ``"TC3" + SecretKey``, date, service, tc3_request."""
    secret_date = _hmac_sha256(("TC3" + secret_key).encode("utf-8"), date)
    secret_service = _hmac_sha256(secret_date, service)
    return _hmac_sha256(secret_service, "tc3_request")


def sign(secret_key: str, timestamp: int, service: str, to_sign: str) -> str:
    """Hex HMAC-SHA256 of the string to sign with the derived signing key."""
    key = signing_key(secret_key, utc_date(timestamp), service)
    return hmac.new(key, to_sign.encode("utf-8"), hashlib.sha256).hexdigest()


def authorization(
    secret_id: str, timestamp: int, service: str, signed_headers: str, signature: str
) -> str:
    """The ``Authorization`` header: note ``", "`` (comma *and* space) between the parts."""
    scope = f"{utc_date(timestamp)}/{service}/tc3_request"
    return (
        f"{TC3_ALGORITHM} Credential={secret_id}/{scope}, "
        f"SignedHeaders={signed_headers}, Signature={signature}"
    )


def redact_authorization(value: str) -> str:
    """``Authorization`` with the signature replaced, for transcripts (Credential is kept)."""
    return re.sub(r"Signature=[^,\s]*", "Signature=REDACTED", value)


# --------------------------------------------------------------------------------------------
# Classification: pure
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Verdict:
    """What one answer from Tencent means for the attempt. Pure data, easy to test."""

    outcome: Literal["sent", "transient", "permanent", "unknown"]
    reason: str
    retry_after: float | None = None
    bad_recipient: bool = False


def seconds_until_next_day(now: datetime) -> float:
    """Seconds from ``now`` until the next 00:00 China Standard Time."""
    local = now.astimezone(CHINA_TZ)
    midnight = (local + timedelta(days=1)).replace(hour=0, minute=0, second=0, microsecond=0)
    return (midnight - local).total_seconds()


def seconds_until_next_0800(now: datetime) -> float:
    """Seconds from ``now`` until the next 08:00 CST, when marketing SMS may be sent again."""
    local = now.astimezone(CHINA_TZ)
    eight = local.replace(hour=8, minute=0, second=0, microsecond=0)
    if eight <= local:
        eight += timedelta(days=1)
    return (eight - local).total_seconds()


DAILY_LIMITS = frozenset(
    {
        "LimitExceeded.PhoneNumberDailyLimit",
        "LimitExceeded.PhoneNumberSameContentDailyLimit",
        "LimitExceeded.AppDailyLimit",
        "LimitExceeded.DailyLimit",
    }
)

BAD_RECIPIENT_CODES = frozenset(
    {
        "InvalidParameterValue.IncorrectPhoneNumber",
        "FailedOperation.PhoneNumberInBlacklist",
        "FailedOperation.PhoneNumberOnBlacklist",
    }
)

#: The backend took the request and then failed: it may or may not have sent.
UNKNOWN_CODES = frozenset(
    {
        "InternalError",
        "InternalError.Timeout",
        "InternalError.SendAndRecvFail",
        "InternalError.OtherError",
        "InternalError.UnknownError",
        "ServiceUnavailable",
    }
)

#: Our request, credentials, clock or account is wrong; the number is innocent.
CONFIG_CODES = frozenset(
    {
        "FailedOperation.SignatureIncorrectOrUnapproved",
        "FailedOperation.TemplateIncorrectOrUnapproved",
        "FailedOperation.ContainSensitiveWord",
        "FailedOperation.InsufficientBalanceInSmsPackage",
        "FailedOperation.FailResolvePacket",
        "FailedOperation.JsonParseFail",
        "FailedOperation.OtherError",
        "FailedOperation.ParametersOtherError",
        "FailedOperation.MissingSignatureList",
        "FailedOperation.MissingTemplateList",
        "InternalError.RequestTimeException",
        "InternalError.SigVerificationFail",
        "InternalError.SigFieldMissing",
        "InternalError.JsonParseFail",
        "InternalError.RestApiInterfaceNotExist",
        "LimitExceeded.PhoneNumberCountLimit",
        "UnsupportedOperation.ContainDomesticAndInternationalPhoneNumber",
        "UnsupportedOperation.UnsuportedRegion",
    }
)

#: Families that are configuration problems whatever the suffix.
CONFIG_PREFIXES = (
    "AuthFailure",
    "UnauthorizedOperation",
    "InvalidParameter",
    "InvalidParameterValue",
    "MissingParameter",
    "UnknownParameter",
    "InvalidAction",
)


def _family(code: str) -> str:
    return code.split(".", 1)[0]


def classify(code: str, *, status: int, now: datetime) -> Verdict:
    """Map a Tencent code (``SendStatus.Code`` or ``Error.Code``) to a :class:`Verdict`.

    The table in the module docstring is the specification; this is its only implementation.
    """
    if code == "Ok" and status < 300:
        return Verdict("sent", "Ok")
    if code == "RequestLimitExceeded" or code.startswith("RequestLimitExceeded."):
        return Verdict("transient", f"{code}: request rate limit", THROTTLE_RETRY_AFTER)
    if status >= 500 or code in UNKNOWN_CODES:
        return Verdict("unknown", f"{code or status}: Tencent failed and may have sent")
    if code == "LimitExceeded.PhoneNumberThirtySecondLimit":
        return Verdict("transient", f"{code}: 30-second limit for this number", 30.0)
    if code == "LimitExceeded.PhoneNumberOneHourLimit":
        return Verdict("transient", f"{code}: hourly limit for this number", HOUR)
    if code in DAILY_LIMITS:
        return Verdict("transient", f"{code}: daily limit", seconds_until_next_day(now))
    if code == "FailedOperation.MarketingSendTimeConstraint":
        return Verdict("transient", f"{code}: 08:00-22:00 only", seconds_until_next_0800(now))
    if code in BAD_RECIPIENT_CODES:
        return Verdict("permanent", f"{code}: the number cannot receive", bad_recipient=True)
    if code in CONFIG_CODES:
        return Verdict("permanent", f"{code}: fix the channel configuration or account")
    if _family(code) == "LimitExceeded":
        return Verdict("transient", f"{code}: frequency limit, window not stated", HOUR)
    if status == 429:
        return Verdict("transient", f"HTTP 429 {code}".strip(), THROTTLE_RETRY_AFTER)
    if _family(code) in CONFIG_PREFIXES:
        return Verdict("permanent", f"{code}: fix the channel configuration or account")
    return Verdict("permanent", f"{code or status}: unclassified answer, needs an operator")


# --------------------------------------------------------------------------------------------
# The channel
# --------------------------------------------------------------------------------------------


class TencentSmsSettings(BaseModel):
    """``[channels.<name>]`` for ``adapter = "tencent_sms"``. Secrets are named, never given."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    secret_id_env: str = Field(min_length=1)
    secret_key_env: str = Field(min_length=1)
    sdk_app_id: str = Field(min_length=1)  # SmsSdkAppId, e.g. "1400006666"
    sign_name: str = Field(min_length=1)  # the approved 签名 (required for mainland numbers)
    templates: dict[str, str]  # notice_kind -> approved TemplateId
    template_params: dict[str, list[str]] = Field(default_factory=dict)  # kind -> param keys
    region: str = "ap-guangzhou"
    endpoint: str = DEFAULT_ENDPOINT
    timeout: float = Field(default=10.0, ge=1.0)

    @field_validator("sdk_app_id", "templates", mode="before")
    @classmethod
    def _ids_as_text(cls, value: Any) -> Any:
        """TOML users write ids as numbers; Tencent wants strings. Accept both, store text."""
        if isinstance(value, int) and not isinstance(value, bool):
            return str(value)
        if isinstance(value, dict):
            return {
                k: str(v) if isinstance(v, int) and not isinstance(v, bool) else v
                for k, v in value.items()
            }
        return value

    @field_validator("templates")
    @classmethod
    def _known_kinds(cls, value: dict[str, str]) -> dict[str, str]:
        unknown = sorted(set(value) - NOTICE_KINDS)
        if unknown:
            raise ValueError(f"unknown notice kinds {unknown}; expected {sorted(NOTICE_KINDS)}")
        if not value:
            raise ValueError("name at least one TemplateId")
        return value

    @field_validator("endpoint")
    @classmethod
    def _https(cls, value: str) -> str:
        parts = urlsplit(value)
        local = parts.hostname in ("localhost", "127.0.0.1", "::1")
        if parts.scheme != "https" and not (parts.scheme == "http" and local):
            raise ValueError("endpoint must be an https:// URL")
        if parts.path not in ("", "/") or parts.query or parts.username or parts.password:
            raise ValueError("endpoint must be scheme://host only")
        return value

    @model_validator(mode="after")
    def _params_for_templates(self) -> TencentSmsSettings:
        """A parameter list for a kind without a template is a typo; say so at load time."""
        orphans = sorted(set(self.template_params) - set(self.templates))
        if orphans:
            raise ValueError(f"template_params for kinds without a template: {orphans}")
        return self


def canonical_json(value: Any) -> bytes:
    """Sorted keys, no whitespace, UTF-8 as is: one object, one byte string."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def template_param_set(keys: Sequence[str], params: Mapping[str, str]) -> list[str]:
    """Positional template values; a missing key is a config/engine mismatch, named."""
    missing = [k for k in keys if k not in params]
    if missing:
        raise KeyError(", ".join(missing))
    return [params[k] for k in keys]


def _utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True, slots=True)
class StatusAnswer:
    """A status pull's answer as it came: HTTP status, exact body, secret-free transcript."""

    status: int
    body: bytes
    transcript: dict[str, Any]


class TencentSmsChannel:
    """Sends approved-template SMS through Tencent Cloud SMS ``SendSms`` (2021-01-11)."""

    adapter: ClassVar[str] = "tencent_sms"
    kinds: ClassVar[frozenset[str]] = frozenset({"sms"})
    Settings: ClassVar[type[BaseModel]] = TencentSmsSettings
    #: Tencent's documented default frequency policy (cloud.tencent.com/document/faq/382/13303):
    #: one message per number per 30 s, two per number per natural day. Staying under it
    #: spares a guaranteed ``LimitExceeded.*``; a console with other limits overrides via
    #: ``limits`` in the channel table.
    default_limits: ClassVar[tuple[RateLimit, ...]] = (
        RateLimit(1, 30),
        RateLimit(2, 86400),
    )

    def __init__(
        self,
        name: str,
        settings: Mapping[str, Any],
        env: Mapping[str, str],
        *,
        clock: Callable[[], datetime] = _utc_now,
    ) -> None:
        """Validate settings and resolve secrets now, so a bad config fails at load time.

        ``clock`` (timezone-aware) exists so tests can fix the signed timestamp.
        """
        self.name = name
        self.settings = TencentSmsSettings.model_validate(dict(settings))
        self._secret_id = resolve_secret(settings, "secret_id", env)
        self._secret_key = resolve_secret(settings, "secret_key", env)
        self._url = self.settings.endpoint.rstrip("/") + "/"
        self._host = urlsplit(self._url).netloc
        self._clock = clock
        self._client = make_client(timeout=self.settings.timeout)

    def __repr__(self) -> str:
        return f"TencentSmsChannel(name={self.name!r}, endpoint={self._url!r})"

    def prepare(self, msg: Outgoing) -> Prepared:
        """The exact JSON body to POST; deterministic, so re-sends carry identical bytes."""
        if msg.kind != "sms":
            raise Permanent(f"tencent_sms cannot send {msg.kind!r} messages", bad_recipient=False)
        template = self.settings.templates.get(msg.notice_kind)
        if template is None:
            raise Permanent(
                f"templates.{msg.notice_kind}: no approved TemplateId configured",
                bad_recipient=False,
            )
        if not _E164.match(msg.recipient):
            raise Permanent(f"not an E.164 number: {msg.recipient!r}", bad_recipient=True)
        if len(msg.idempotency_key.encode("utf-8")) >= 512:
            raise Permanent("idempotency key too long for SessionContext", bad_recipient=False)
        keys = self.settings.template_params.get(msg.notice_kind, [])
        try:
            values = template_param_set(keys, msg.params)
        except KeyError as exc:
            raise Permanent(
                f"template_params.{msg.notice_kind}: Outgoing.params lacks {exc.args[0]}",
                bad_recipient=False,
            ) from None
        body: dict[str, Any] = {
            "PhoneNumberSet": [msg.recipient],
            "SmsSdkAppId": self.settings.sdk_app_id,
            "SignName": self.settings.sign_name,
            "TemplateId": template,
            "TemplateParamSet": values,
            "SessionContext": msg.idempotency_key,
        }
        return Prepared(
            msg,
            canonical_json(body),
            "application/json",
            msg.idempotency_key,
            {"ext": "json", "template": template},
        )

    async def send(self, prepared: Prepared) -> Receipt:
        """Sign the prepared body as is, POST it, and classify the answer for our number."""
        now = self._clock()
        response, transcript = await self._signed_post(ACTION, prepared.payload, now, "SendSms")
        return self._interpret(response, prepared.outgoing.recipient, transcript, now)

    async def pull_send_status(self, limit: int = 100) -> StatusAnswer:
        """``PullSmsSendStatus``: delivery reports for this SdkAppId not pulled before.

        Signed exactly as :meth:`send` signs ``SendSms``. Tencent hands each report out once
        (the pull is a queue) and the API must be enabled by Tencent support. A connect
        failure is :class:`Transient`; a failure after the request was written is
        :class:`Unknown`, because Tencent may already have handed out - and so forgotten -
        the reports that answer would have carried. The answer comes back unparsed: reading it
        is the engine's job (``outreach.receipts``).
        """
        payload = canonical_json({"Limit": limit, "SmsSdkAppId": self.settings.sdk_app_id})
        response, transcript = await self._signed_post(
            PULL_STATUS_ACTION, payload, self._clock(), "PullSmsSendStatus"
        )
        transcript["status"] = response.status_code
        return StatusAnswer(response.status_code, response.content, transcript)

    async def _signed_post(
        self, action: str, payload: bytes, now: datetime, what: str
    ) -> tuple[httpx.Response, dict[str, Any]]:
        """POST ``payload`` as ``action``, signed with TC3-HMAC-SHA256; the transcript holds
        the request headers with the signature redacted. Transport failures are classified by
        whether the request can have reached Tencent (:func:`failure_from_transport_error`)."""
        timestamp = int(now.timestamp())
        signed_headers = {"content-type": CONTENT_TYPE, "host": self._host, "x-tc-action": action}
        canonical, names = canonical_request("POST", "/", "", signed_headers, payload)
        signature = sign(
            self._secret_key, timestamp, SERVICE, string_to_sign(timestamp, SERVICE, canonical)
        )
        auth = authorization(self._secret_id, timestamp, SERVICE, names, signature)
        headers = {
            **signed_headers,
            "x-tc-timestamp": str(timestamp),
            "x-tc-version": API_VERSION,
            "x-tc-region": self.settings.region,
            "authorization": auth,
        }
        transcript: dict[str, Any] = {
            "adapter": self.adapter,
            "method": "POST",
            "url": self._url,
            "request_headers": {**headers, "authorization": redact_authorization(auth)},
        }
        try:
            request = self._client.build_request(
                "POST", self._url, headers=headers, content=payload
            )
            return await self._client.send(request), transcript
        except httpx.TransportError as exc:
            raise failure_from_transport_error(
                exc, what=what, transcript=transcript, secrets=(self._secret_key, signature)
            ) from None

    async def aclose(self) -> None:
        await self._client.aclose()

    # -- internals ------------------------------------------------------------------------

    def _interpret(
        self,
        response: httpx.Response,
        recipient: str,
        transcript: dict[str, Any],
        now: datetime,
    ) -> Receipt:
        body = response.content
        status = response.status_code
        transcript["status"] = status
        if "date" in response.headers:
            transcript["response_date"] = response.headers["date"]
        try:
            data = json.loads(body)
        except ValueError:
            data = None
        inner = data.get("Response") if isinstance(data, dict) else None
        if not isinstance(inner, dict):
            raise _unparseable(status, body, transcript)
        if "RequestId" in inner:
            transcript["request_id"] = inner["RequestId"]
        error = inner.get("Error")
        if isinstance(error, dict):
            code = str(error.get("Code", ""))
            message = str(error.get("Message", ""))
            transcript["error_code"] = code
            transcript["error_message"] = message
            verdict = classify(code, status=status, now=now)
            if verdict.outcome == "sent":  # an Error envelope never means success
                verdict = Verdict("unknown", f"{code}: error envelope with a success code")
            _raise(verdict, code, message, body, transcript)
        mine = _status_for(inner.get("SendStatusSet"), recipient)
        if mine is None:
            raise Unknown(
                "no SendStatus for our number in the answer; it may have been sent",
                response=body,
                transcript=transcript,
            )
        transcript["send_status"] = mine
        code = str(mine.get("Code", ""))
        message = str(mine.get("Message", ""))
        verdict = classify(code, status=status, now=now)
        if verdict.outcome == "sent":
            serial = mine.get("SerialNo")
            return Receipt(
                accepted=True,
                provider_id=str(serial) if serial else None,
                response=body,
                response_type="application/json",
                transcript=transcript,
            )
        _raise(verdict, code, message, body, transcript)


def _status_for(statuses: Any, recipient: str) -> dict[str, Any] | None:
    """The ``SendStatus`` for our number (or the only one, if Tencent reformatted it)."""
    if not isinstance(statuses, list):
        return None
    entries = [s for s in statuses if isinstance(s, dict)]
    for entry in entries:
        if entry.get("PhoneNumber") == recipient:
            return entry
    return entries[0] if len(entries) == 1 else None


def _raise(
    verdict: Verdict, code: str, message: str, body: bytes, transcript: dict[str, Any]
) -> NoReturn:
    """Turn a non-success verdict into the one exception the contract allows."""
    detail = f"{verdict.reason} ({message})" if message else verdict.reason
    common: dict[str, Any] = {"code": code or None, "response": body, "transcript": transcript}
    if verdict.outcome == "transient":
        raise Transient(detail, retry_after=verdict.retry_after, **common)
    if verdict.outcome == "permanent":
        raise Permanent(detail, bad_recipient=verdict.bad_recipient, **common)
    raise Unknown(detail, **common)


def _unparseable(status: int, body: bytes, transcript: dict[str, Any]) -> Exception:
    """An answer that is not Tencent's ``{"Response": ...}``: classify by HTTP status alone."""
    if status in (408, 429):
        return Transient(
            f"HTTP {status} without a Tencent answer",
            retry_after=THROTTLE_RETRY_AFTER if status == 429 else None,
            response=body,
            transcript=transcript,
        )
    if 400 <= status < 500:
        return Permanent(
            f"HTTP {status} without a Tencent answer: check the endpoint",
            bad_recipient=False,
            response=body,
            transcript=transcript,
        )
    return Unknown(
        f"HTTP {status} without a Tencent answer; the message may have been accepted",
        response=body,
        transcript=transcript,
    )
