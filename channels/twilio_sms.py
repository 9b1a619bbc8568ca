"""Twilio Programmable Messaging: free-text SMS through the 2010-04-01 REST API.

``POST {base_url}/2010-04-01/Accounts/{AccountSid}/Messages.json`` with a form-encoded body
``To``, ``From`` (or ``MessagingServiceSid``), ``Body`` and optionally ``StatusCallback``;
HTTP Basic auth with ``AccountSid:AuthToken`` or ``ApiKeySid:ApiKeySecret``. Twilio answers
201 with a Message resource whose ``sid`` (``SM…``) becomes :attr:`Receipt.provider_id`.

``prepare`` produces the form body (deterministic: fixed field order, UTF-8, ``+`` for
spaces); ``send`` posts exactly those bytes and adds only the ``Authorization`` header, so the
payload the engine hashes before sending is the body Twilio receives. Twilio's REST API has no
idempotency key for messages, so a re-send after ``Unknown`` can produce a second SMS; the
identical ``Body`` (which carries the case reference) makes that duplicate attributable.

Outcomes (reference/providers.md §3.2; Twilio error body
``{"code": 21211, "message": "…", "more_info": "…", "status": 400}``):

================================================  ==========================================
Twilio answer                                     outcome
================================================  ==========================================
201 Message resource                              accepted, ``provider_id`` = ``sid``
429 / code 20429 ("never processed")              :class:`Transient`, ``Retry-After`` honoured
63038, 60728 (account daily / hourly limit)       :class:`Transient` (defer, no hint)
21211 invalid 'To', 21610 unsubscribed (STOP),    :class:`Permanent`, ``bad_recipient=True``
21614 not SMS-capable, 21612 unroutable,
21635 landline
20003 authentication, 21408 region not enabled,   :class:`Permanent`, ``bad_recipient=False``
21608 unverified (trial), 21606 'From' not
SMS-capable; any other 4xx
5xx                                               :class:`Unknown` (Twilio may have queued it)
timeout / disconnect after the request was        :class:`Unknown`
written
connect error, connect or pool timeout            :class:`Transient` (nothing was sent)
================================================  ==========================================

A 21610 opt-out is a bad recipient for this channel only: the person asked Twilio to stop,
which is evidence in itself and is kept in the exception's ``code`` and ``response``.

:func:`validate_twilio_signature` checks ``X-Twilio-Signature`` on Twilio's status callbacks
(reference/providers.md §3.3), for the engine's receipts endpoint.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, ClassVar, Self
from urllib.parse import parse_qs, urlencode, urlsplit, urlunsplit

import httpx
from pydantic import BaseModel, ConfigDict, Field, model_validator

from channels.base import (
    ChannelError,
    Outgoing,
    Permanent,
    Prepared,
    Receipt,
    Transient,
    Unknown,
    resolve_secret,
)
from channels.http import (
    describe_exchange,
    failure_from_transport_error,
    fit_text,
    make_client,
    retry_after_seconds,
)

__all__ = [
    "TwilioSettings",
    "TwilioSmsChannel",
    "classify_twilio_error",
    "validate_twilio_signature",
]

#: The recipient's number is dead for SMS: mark the contact point bad.
BAD_RECIPIENT_CODES: frozenset[int] = frozenset({21211, 21610, 21612, 21614, 21635})
#: Our account or sender is misconfigured: the recipient is innocent.
CONFIG_CODES: frozenset[int] = frozenset({20003, 21408, 21606, 21608})
#: Account-level sending caps: try again later.
DEFER_CODES: frozenset[int] = frozenset({20429, 60728, 63038})

_E164 = re.compile(r"^\+[1-9][0-9]{1,14}$")


class TwilioSettings(BaseModel):
    """``[channels.<name>]`` with ``adapter = "twilio_sms"``."""

    model_config = ConfigDict(extra="forbid", strict=True)

    account_sid: str = Field(pattern=r"^AC[0-9a-fA-F]{32}$")
    auth_token_env: str | None = None
    api_key_sid: str | None = Field(default=None, pattern=r"^SK[0-9a-fA-F]{32}$")
    api_key_secret_env: str | None = None
    # With an API key: the account's Auth Token, used only to verify status callbacks (Twilio
    # signs them with the Auth Token whatever credential sent the message).
    callback_auth_token_env: str | None = None
    from_number: str | None = Field(default=None, pattern=r"^\+[1-9][0-9]{1,14}$")
    messaging_service_sid: str | None = Field(default=None, pattern=r"^MG[0-9a-fA-F]{32}$")
    status_callback: str | None = Field(default=None, pattern=r"^https?://")
    base_url: str = Field(default="https://api.twilio.com", pattern=r"^https?://[^/?#]+$")
    max_length: int = Field(default=1600, ge=40, le=1600)  # Twilio's limit for Body
    timeout: float = Field(default=15.0, gt=0)
    max_connections: int = Field(default=20, ge=1)

    @model_validator(mode="after")
    def _one_sender_one_credential(self) -> Self:
        if (self.from_number is None) == (self.messaging_service_sid is None):
            raise ValueError("set exactly one of from_number and messaging_service_sid")
        if self.api_key_sid is not None or self.api_key_secret_env is not None:
            if self.api_key_sid is None or self.api_key_secret_env is None:
                raise ValueError("api_key_sid and api_key_secret_env go together")
            if self.auth_token_env is not None:
                raise ValueError("set auth_token_env or api_key_sid + api_key_secret_env, not both")
        elif self.auth_token_env is None:
            raise ValueError("set auth_token_env (or api_key_sid + api_key_secret_env)")
        elif self.callback_auth_token_env is not None:
            raise ValueError(
                "callback_auth_token_env is for API-key channels; auth_token_env already "
                "verifies status callbacks"
            )
        return self


class TwilioSmsChannel:
    """One Twilio account (or API key) sending from one number or Messaging Service."""

    adapter: ClassVar[str] = "twilio_sms"
    kinds: ClassVar[frozenset[str]] = frozenset({"sms"})
    Settings: ClassVar[type[BaseModel]] = TwilioSettings
    max_body: ClassVar[int] = 1600

    def __init__(self, name: str, settings: Mapping[str, Any], env: Mapping[str, str]) -> None:
        self.name = name
        self.settings = TwilioSettings.model_validate(dict(settings))
        s = self.settings
        if s.api_key_sid is not None:
            user, secret = s.api_key_sid, resolve_secret(settings, "api_key_secret", env)
        else:
            user, secret = s.account_sid, resolve_secret(settings, "auth_token", env)
        self._secrets = (secret,)
        token = base64.b64encode(f"{user}:{secret}".encode()).decode("ascii")
        self._authorization = f"Basic {token}"
        self.url = f"{s.base_url}/2010-04-01/Accounts/{s.account_sid}/Messages.json"
        self._url = httpx.URL(self.url)  # parsed once, not per request
        self._client = make_client(timeout=s.timeout, max_connections=s.max_connections)

    def prepare(self, msg: Outgoing) -> Prepared:
        """The form body Twilio will receive, byte for byte (credentials go in a header)."""
        if msg.kind not in self.kinds:
            raise Permanent(
                f"{self.adapter} cannot send {msg.kind!r} messages", bad_recipient=False
            )
        if not _E164.match(msg.recipient):
            raise Permanent(f"recipient {msg.recipient!r} is not an E.164 number", code="E164")
        s = self.settings
        fields: list[tuple[str, str]] = [("To", msg.recipient)]
        if s.from_number is not None:
            fields.append(("From", s.from_number))
        else:
            assert s.messaging_service_sid is not None
            fields.append(("MessagingServiceSid", s.messaging_service_sid))
        fields.append(("Body", fit_text(msg.body, msg.reference, s.max_length)))
        if s.status_callback is not None:
            fields.append(("StatusCallback", s.status_callback))
        payload = urlencode(fields).encode("ascii")
        return Prepared(
            msg,
            payload,
            "application/x-www-form-urlencoded",
            None,  # Twilio assigns the identifier (the Message sid); nothing of ours is echoed
            {"url": self.url},
        )

    async def send(self, prepared: Prepared) -> Receipt:
        started = time.monotonic()
        request = self._client.build_request(
            "POST",
            self._url,
            content=prepared.payload,
            headers={
                "Content-Type": "application/x-www-form-urlencoded",
                "Accept": "application/json",
                "Authorization": self._authorization,
            },
        )
        try:
            response = await self._client.send(request)
        except httpx.TransportError as exc:
            transcript = describe_exchange(request, None, started=started)
            raise failure_from_transport_error(
                exc, what="twilio", transcript=transcript, secrets=self._secrets
            ) from exc
        transcript = describe_exchange(request, response, started=started)
        if response.status_code in (200, 201):
            resource = _json_object(response.content) or {}
            sid = resource.get("sid")
            if not isinstance(sid, str) or not sid:
                raise Unknown(
                    f"twilio answered {response.status_code} without a Message sid",
                    response=response.content,
                    transcript=transcript,
                )
            status = resource.get("status")
            if isinstance(resource.get("error_code"), int) and status in ("failed", "undelivered"):
                raise classify_twilio_error(response, resource, transcript)
            return Receipt(
                accepted=True,
                provider_id=sid,
                response=response.content,
                response_type="application/json",
                transcript={**transcript, "message_status": status},
            )
        raise classify_twilio_error(response, _json_object(response.content), transcript)

    async def aclose(self) -> None:
        await self._client.aclose()


def classify_twilio_error(
    response: httpx.Response, body: Mapping[str, Any] | None, transcript: Mapping[str, Any]
) -> ChannelError:
    """Map a Twilio error answer to Transient, Permanent or Unknown (table in the module doc).

    Pure apart from reading ``response``'s status, headers and bytes, so it is tested without
    any I/O. ``body`` is the decoded error body, if it was JSON.
    """
    status = response.status_code
    raw_code = body.get("error_code", body.get("code")) if body is not None else None
    code = raw_code if isinstance(raw_code, int) else None
    message = (body.get("error_message") or body.get("message")) if body is not None else None
    detail = f"twilio HTTP {status}" + (f" error {code}" if code is not None else "")
    if isinstance(message, str) and message:
        detail += f": {message}"
    common: dict[str, Any] = {
        "code": str(code) if code is not None else str(status),
        "response": response.content,
        "transcript": transcript,
    }
    if status == 429 or code in DEFER_CODES:
        hint = retry_after_seconds(response.headers.get("Retry-After"))
        return Transient(detail, retry_after=hint, **common)
    if code in BAD_RECIPIENT_CODES:
        return Permanent(detail, bad_recipient=True, **common)
    if code in CONFIG_CODES:
        return Permanent(detail, bad_recipient=False, **common)
    if status >= 500:
        return Unknown(detail, **common)
    # Any other 4xx: Twilio refused the request as we built it; retrying sends the same bytes.
    return Permanent(detail, bad_recipient=False, **common)


def _json_object(content: bytes) -> dict[str, Any] | None:
    try:
        value = json.loads(content)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


# -- X-Twilio-Signature ------------------------------------------------------------------------

TwilioParams = Mapping[str, str | Sequence[str]] | Iterable[tuple[str, str]] | str | bytes


def validate_twilio_signature(
    url: str, params: TwilioParams, signature: str, auth_token: str
) -> bool:
    """Check an ``X-Twilio-Signature`` header the way Twilio's own SDKs do.

    ``url`` is the full URL Twilio requested, query string included. ``params`` is the form
    body as a mapping (values may be lists for repeated names) or a sequence of pairs; for a
    JSON body pass the raw body (``str`` or ``bytes``): the URL must then carry
    ``bodySHA256=<hex sha256 of the body>``, which is checked too, and the URL is signed with
    no parameters. The signature is base64(HMAC-SHA1(auth_token, url + name1 + value1 + …))
    with names sorted, and the values of a repeated name sorted (and de-duplicated, as in
    twilio-python). Twilio may have signed the URL with or without its port, so both forms
    are tried. Every comparison is constant-time.
    """
    body_ok = True
    pairs: list[tuple[str, str]]
    if isinstance(params, str | bytes):
        raw = params.encode() if isinstance(params, str) else params
        claimed = parse_qs(urlsplit(url).query).get("bodySHA256", [""])[0]
        body_ok = hmac.compare_digest(hashlib.sha256(raw).hexdigest().encode(), claimed.encode())
        pairs = []
    elif isinstance(params, Mapping):
        pairs = []
        for name, value in params.items():
            values = [value] if isinstance(value, str) else list(value)
            pairs.extend((name, v) for v in values)
    else:
        pairs = list(params)
    signed = "".join(name + value for name, value in sorted(set(pairs)))
    expected = signature.encode()
    matched = False
    for candidate in _url_variants(url):
        digest = hmac.new(auth_token.encode(), (candidate + signed).encode(), hashlib.sha1)
        mine = base64.b64encode(digest.digest())
        matched |= hmac.compare_digest(mine, expected)
    return matched and body_ok


def _url_variants(url: str) -> list[str]:
    """The URL as given, with its default port added, and with any port removed."""
    parts = urlsplit(url)
    variants = [url]
    netloc = parts.netloc
    if parts.port is not None:
        bare = netloc[: netloc.rfind(":")]
        variants.append(urlunsplit(parts._replace(netloc=bare)))
    else:
        default = 443 if parts.scheme == "https" else 80
        variants.append(urlunsplit(parts._replace(netloc=f"{netloc}:{default}")))
    return variants
