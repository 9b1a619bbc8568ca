"""Signed JSON webhooks: a notice POSTed to a URL a party gave us (the contact point).

The request
-----------
``POST <recipient URL>`` with ``Content-Type: application/json; charset=utf-8`` and the body

.. code-block:: json

    {"body": "…", "created_at": "2026-03-02T09:30:00+08:00", "idempotency_key": "a7f3c2e1d9b04c55",
     "notice_kind": "cancellation_request", "params": {}, "recipient": "https://…",
     "reference": "OUT-2026-000123", "subject": "…"}

serialised canonically (UTF-8, keys sorted, no insignificant whitespace), so a re-send of the
same attempt sends identical bytes, and the receiver can de-duplicate on ``Idempotency-Key``.

Headers:

- ``Idempotency-Key: <idempotency_key>`` - the same on every re-send of one attempt.
- ``X-Outreach-Timestamp: <unix seconds>`` - when this delivery was made.
- ``X-Outreach-Signature: sha256=<hex>`` where
  ``hex = lowercase hex of HMAC-SHA256(key = secret as UTF-8, msg = timestamp + "." + body)``,
  ``timestamp`` the exact header text and ``body`` the exact request bytes.

The timestamp is taken at send time, not from the notice: receivers rightly refuse old
timestamps to stop replays, and a re-send days later must still be accepted. The body - the
part the engine stores as proof - does not change; the timestamp and signature of each
delivery are in the transcript (an HMAC output reveals nothing about its key).

To verify, a receiver recomputes the HMAC over the raw body it received, compares in constant
time, and rejects timestamps more than a few minutes off: :func:`verify_webhook_signature`
does exactly that and is what we would hand a receiver as reference code.

Outcomes:

==================================================  ==========================================
receiver's answer                                   outcome
==================================================  ==========================================
2xx                                                 accepted (``provider_id`` = ``X-Request-Id``
                                                    if the receiver sent one)
408, 429, 5xx                                       :class:`Transient` (``Retry-After`` honoured)
404, 410, 3xx                                       :class:`Permanent`, ``bad_recipient=True``
                                                    (the endpoint is gone or moved)
other 4xx (400, 401, 403, 413, 422, …)              :class:`Permanent`, ``bad_recipient=False``
                                                    (it refused what or how we sent)
timeout or disconnect after the request was sent    :class:`Unknown`
connect error, connect or pool timeout              :class:`Transient`
==================================================  ==========================================

A 5xx is a delivery the receiver did not complete; the ``Idempotency-Key`` makes trying again
safe even if it had half-processed it, so it is Transient rather than Unknown. Redirects are
not followed: a signed notice goes only to the URL on record.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import time
from collections.abc import Mapping
from typing import Any, ClassVar

import httpx
from pydantic import BaseModel, ConfigDict, Field, field_validator

from channels.base import Outgoing, Permanent, Prepared, Receipt, Transient, resolve_secret
from channels.http import (
    describe_exchange,
    failure_from_transport_error,
    make_client,
    retry_after_seconds,
)

__all__ = ["WebhookChannel", "WebhookSettings", "sign_webhook", "verify_webhook_signature"]

SIGNATURE_HEADER = "X-Outreach-Signature"
TIMESTAMP_HEADER = "X-Outreach-Timestamp"


class WebhookSettings(BaseModel):
    """``[channels.<name>]`` with ``adapter = "webhook"``."""

    model_config = ConfigDict(extra="forbid", strict=True)

    secret_env: str
    allow_http: bool = False  # plain http only for local receivers and tests
    headers: dict[str, str] = {}
    timeout: float = Field(default=10.0, gt=0)
    max_connections: int = Field(default=20, ge=1)

    @field_validator("headers")
    @classmethod
    def _no_credentials(cls, headers: dict[str, str]) -> dict[str, str]:
        """Static headers live in the config file, so they must not carry a credential."""
        for name in headers:
            if re.search(r"authorization|cookie|token|secret|api-?key", name, re.IGNORECASE):
                raise ValueError(f"{name}: credentials do not belong in the config file")
        return headers


class WebhookChannel:
    """POST each notice as signed JSON to the recipient URL."""

    adapter: ClassVar[str] = "webhook"
    kinds: ClassVar[frozenset[str]] = frozenset({"webhook"})
    Settings: ClassVar[type[BaseModel]] = WebhookSettings

    def __init__(self, name: str, settings: Mapping[str, Any], env: Mapping[str, str]) -> None:
        self.name = name
        self.settings = WebhookSettings.model_validate(dict(settings))
        self._secret = resolve_secret(settings, "secret", env)
        self._client = make_client(
            timeout=self.settings.timeout, max_connections=self.settings.max_connections
        )

    def prepare(self, msg: Outgoing) -> Prepared:
        """The canonical JSON body; the signature is added per delivery in :meth:`send`."""
        if msg.kind not in self.kinds:
            raise Permanent(
                f"{self.adapter} cannot send {msg.kind!r} messages", bad_recipient=False
            )
        self._check_url(msg.recipient)
        if msg.created_at.tzinfo is None:
            raise Permanent("created_at must be timezone-aware", bad_recipient=False)
        document = {
            "reference": msg.reference,
            "idempotency_key": msg.idempotency_key,
            "notice_kind": msg.notice_kind,
            "recipient": msg.recipient,
            "subject": msg.subject,
            "body": msg.body,
            "params": dict(msg.params),
            "created_at": msg.created_at.isoformat(),
        }
        payload = json.dumps(
            document, ensure_ascii=False, sort_keys=True, separators=(",", ":")
        ).encode("utf-8")
        return Prepared(
            msg, payload, "application/json", msg.idempotency_key, {"url": msg.recipient}
        )

    def _check_url(self, url: str) -> None:
        try:
            parsed = httpx.URL(url)
        except httpx.InvalidURL:
            raise Permanent(f"webhook URL {url!r} is not a URL", code="url") from None
        schemes = ("https", "http") if self.settings.allow_http else ("https",)
        if parsed.scheme not in schemes or not parsed.host:
            raise Permanent(f"webhook URL {url!r} must be {' or '.join(schemes)}", code="url")
        if parsed.userinfo:
            raise Permanent("webhook URL must not carry credentials", code="url")

    async def send(self, prepared: Prepared) -> Receipt:
        msg = prepared.outgoing
        timestamp = str(int(time.time()))
        headers = {
            **self.settings.headers,
            "Content-Type": "application/json; charset=utf-8",
            "Idempotency-Key": msg.idempotency_key,
            TIMESTAMP_HEADER: timestamp,
            SIGNATURE_HEADER: sign_webhook(self._secret, timestamp, prepared.payload),
        }
        started = time.monotonic()
        request = self._client.build_request(
            "POST", msg.recipient, content=prepared.payload, headers=headers
        )
        try:
            response = await self._client.send(request)
        except httpx.TransportError as exc:
            transcript = describe_exchange(request, None, started=started)
            raise failure_from_transport_error(
                exc, what="webhook", transcript=transcript, secrets=(self._secret,)
            ) from exc
        transcript = describe_exchange(request, response, started=started)
        status = response.status_code
        common: dict[str, Any] = {
            "code": str(status),
            "response": response.content,
            "transcript": transcript,
        }
        detail = f"webhook HTTP {status} {response.reason_phrase}".rstrip()
        if 200 <= status < 300:
            return Receipt(
                accepted=True,
                provider_id=response.headers.get("X-Request-Id"),
                response=response.content,
                response_type=response.headers.get("Content-Type", "application/octet-stream"),
                transcript=transcript,
            )
        if status in (408, 429) or status >= 500:
            hint = retry_after_seconds(response.headers.get("Retry-After"))
            raise Transient(detail, retry_after=hint, **common)
        if 300 <= status < 400:
            where = response.headers.get("Location", "?")
            raise Permanent(f"{detail}: moved to {where}; update the contact point", **common)
        if status in (404, 410):
            raise Permanent(detail, bad_recipient=True, **common)
        raise Permanent(detail, bad_recipient=False, **common)

    async def aclose(self) -> None:
        await self._client.aclose()


def sign_webhook(secret: str | bytes, timestamp: str, body: bytes) -> str:
    """``sha256=<hex HMAC-SHA256(secret, timestamp + "." + body)>``, the signature header."""
    key = secret.encode() if isinstance(secret, str) else secret
    mac = hmac.new(key, timestamp.encode("ascii") + b"." + body, hashlib.sha256)
    return f"sha256={mac.hexdigest()}"


def verify_webhook_signature(
    secret: str | bytes,
    timestamp: str,
    body: bytes,
    signature: str,
    *,
    tolerance: float | None = 300.0,
    now: float | None = None,
) -> bool:
    """Check one delivery: ``timestamp`` and ``signature`` are the header values, ``body`` the
    raw request bytes. The comparison is constant-time; with ``tolerance`` (seconds), a
    timestamp further than that from ``now`` (default: the clock) fails, which stops replays.
    """
    if not timestamp.isascii() or not timestamp.isdigit():
        return False
    expected = sign_webhook(secret, timestamp, body)
    if not hmac.compare_digest(expected.encode(), signature.strip().encode("utf-8", "replace")):
        return False
    if tolerance is not None:
        current = time.time() if now is None else now
        if abs(current - int(timestamp)) > tolerance:
            return False
    return True
