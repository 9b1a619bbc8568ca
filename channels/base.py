"""The channel contract: the only door between the engine and anything that sends.

A channel turns an :class:`Outgoing` (what the engine wants said, to whom) into exact bytes
(:meth:`Channel.prepare`, pure and deterministic, so the engine can hash and store the bytes
*before* anything leaves) and then sends those bytes (:meth:`Channel.send`). Splitting the two
is what makes the proof honest: the payload recorded in the evidence log is the payload that
went out, and a re-send after a crash sends the identical bytes with the identical Message-ID
or OutId, so a duplicate on the far side is attributable.

Channels never touch the database and import nothing from ``outreach``; they take plain values
and return plain values. Failures are reported by raising exactly one of :class:`Transient`,
:class:`Permanent` or :class:`Unknown`; the dispatcher decides what happens next.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, ClassVar, Protocol, runtime_checkable

#: Contact kinds a channel can reach. Matches ``sources.base.KINDS`` for the reachable ones.
CHANNEL_KINDS = ("email", "sms", "webhook", "postal", "phone")


@dataclass(frozen=True, slots=True)
class Outgoing:
    """Everything a channel needs to say one notice to one recipient.

    ``idempotency_key`` is stable for the life of an attempt: every re-send of the attempt uses
    it (as the Message-ID local part, Aliyun ``OutId``, Tencent ``SessionContext``, webhook
    ``Idempotency-Key``), so that duplicates are visible. ``created_at`` is the moment the
    attempt was created; channels use it (not "now") for the ``Date`` header so that a re-send
    produces identical bytes.
    """

    channel: str  # configured channel name, e.g. "agent-mail"
    kind: str  # contact kind: email | sms | webhook | postal | phone
    recipient: str  # e-mail address, E.164 number, URL or one-line postal address
    recipient_name: str | None
    subject: str | None
    body: str  # plain text of the notice (already rendered and escaped by the engine)
    reference: str  # case reference, e.g. OUT-2026-000123; replies quote it
    idempotency_key: str  # e.g. "a7f3c2e1d9b04c55" - stable across re-sends of this attempt
    notice_kind: str  # cancellation_request | reminder | complaint_acquirer | complaint_regulator
    language: str  # zh-CN | en
    created_at: datetime  # timezone-aware
    html: str | None = None  # optional HTML alternative / printable letter body
    params: Mapping[str, str] = field(default_factory=dict)  # SMS template parameters
    in_reply_to: tuple[str, ...] = ()  # Message-IDs of earlier notices of this case to this party
    sender_name: str | None = None  # who the notice is from (the merchant or their representative)
    # The rest of [sender]: a letter's letterhead and return address, a call script's callback.
    sender_organisation: str | None = None
    sender_address: str | None = None
    sender_phone: str | None = None
    sender_email: str | None = None


@dataclass(frozen=True, slots=True)
class Prepared:
    """The exact bytes a channel will put on the wire (minus credentials added at send time).

    ``payload`` is what the engine hashes, stores as a blob and chains *before* sending:
    an RFC 5322 message for e-mail, the request body for HTTP gateways, the printable HTML of a
    letter. ``message_id`` is the identifier the far side will see (Message-ID, OutId, ...).
    """

    outgoing: Outgoing
    payload: bytes
    media_type: (
        str  # message/rfc822 | application/json | application/x-www-form-urlencoded | text/html
    )
    message_id: str | None = None
    meta: Mapping[str, Any] = field(default_factory=dict)  # channel-specific, JSON-serialisable


@dataclass(frozen=True, slots=True)
class Receipt:
    """What the far side answered when it took the message.

    ``response`` is the server's reply verbatim (SMTP reply lines, HTTP response body);
    ``transcript`` is a JSON-serialisable account of the exchange (status codes, queue id,
    request line and non-secret headers) that goes into the evidence log as is - so it must
    never contain credentials. ``pending`` means a human still has to act (a letter waiting for
    the courier's tracking number, a call waiting to be logged).
    """

    accepted: bool
    provider_id: str | None
    response: bytes
    response_type: str = "text/plain"
    transcript: Mapping[str, Any] = field(default_factory=dict)
    pending: bool = False


class ChannelError(Exception):
    """Base of the three outcomes a send can fail with. Messages must never contain secrets."""

    def __init__(
        self,
        detail: str,
        *,
        code: str | None = None,
        response: bytes | None = None,
        transcript: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(detail)
        self.detail = detail
        self.code = code  # provider or SMTP code, e.g. "451", "isv.BUSINESS_LIMIT_CONTROL"
        self.response = response
        self.transcript = dict(transcript or {})


class Transient(ChannelError):
    """Nothing was delivered and trying again later may work (4xx SMTP, 429/5xx, connect errors).

    ``retry_after`` (seconds) is the far side's own hint (Retry-After, a rate-limit window) and
    wins over the back-off schedule.
    """

    def __init__(self, detail: str, *, retry_after: float | None = None, **kw: Any) -> None:
        super().__init__(detail, **kw)
        self.retry_after = retry_after


class Permanent(ChannelError):
    """This recipient will never accept this message (5xx SMTP, invalid number, blacklisted).

    ``bad_recipient`` says whether the contact point itself is dead (mark it bad and fall back)
    or whether our side is misconfigured (template unapproved, credentials wrong) and the
    contact point is innocent.
    """

    def __init__(self, detail: str, *, bad_recipient: bool = True, **kw: Any) -> None:
        super().__init__(detail, **kw)
        self.bad_recipient = bad_recipient


class Unknown(ChannelError):
    """The message may or may not have been delivered (disconnect after end of DATA, a timeout
    after the request was written). The engine records ``unknown`` and later re-sends the same
    bytes with the same identifiers so any duplicate is attributable."""


@runtime_checkable
class Channel(Protocol):
    """One configured channel instance. Class attributes declare what the adapter can do."""

    adapter: ClassVar[str]  # adapter name used in config: "smtp", "aliyun_sms", ...
    kinds: ClassVar[frozenset[str]]  # contact kinds it can reach
    name: str  # the configured instance name

    def prepare(self, msg: Outgoing) -> Prepared:
        """Build the exact payload. Pure: same ``msg`` -> same bytes."""
        ...

    async def send(self, prepared: Prepared) -> Receipt:
        """Send ``prepared.payload``. Raise Transient, Permanent or Unknown on failure.

        Only the payload is sent - the bytes recorded before sending - so the dispatcher hands
        ``send`` the notice's identifiers in ``prepared.outgoing`` (recipient, reference,
        keys, sender) but not its text: ``body`` is empty and ``html`` None here.
        """
        ...

    async def aclose(self) -> None:
        """Release connections. Called once when the dispatcher stops."""
        ...


@dataclass(frozen=True, slots=True)
class RateLimit:
    """``count`` sends per ``per_seconds``; scope ``recipient`` or ``channel``."""

    count: int
    per_seconds: float
    scope: str = "recipient"


class ChannelFactory(Protocol):
    """What an entry point in ``outreach.channels`` must provide (usually the adapter class).

    ``settings`` is the ``[channels.<name>]`` table minus ``adapter``; ``env`` is the process
    environment, from which ``*_env`` settings are resolved. Raise :class:`ValueError` naming
    the setting for bad settings; the engine turns it into a config error with the key path.
    """

    adapter: ClassVar[str]
    kinds: ClassVar[frozenset[str]]

    def __call__(
        self, name: str, settings: Mapping[str, Any], env: Mapping[str, str]
    ) -> Channel: ...


def resolve_secret(settings: Mapping[str, Any], key: str, env: Mapping[str, str]) -> str:
    """Read a secret named by ``<key>_env`` from the environment.

    Secrets never live in the config file itself; the error names the variable, never a value.
    """
    var = settings.get(f"{key}_env")
    if not var:
        raise ValueError(f"{key}_env: name the environment variable that holds the {key}")
    value = env.get(str(var))
    if not value:
        raise ValueError(f"{key}_env: environment variable {var} is not set")
    return value


_LOOPBACK_NAMES = frozenset({"localhost", "localhost.localdomain"})


def is_loopback(host: str) -> bool:
    """Whether ``host`` is this machine: where a plain-text login (SMTP, IMAP) is allowed."""
    if host.lower() in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
