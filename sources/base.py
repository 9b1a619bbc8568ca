"""The source contract: the only door between the engine and anything that discovers contacts.

A source looks a party up somewhere (a public registry, an official web site, a bundled
directory, the user's own config) and returns what it saw as plain values: :class:`Finding`
rows, each with its provenance, and :class:`Notice` rows for everything that is not a contact
(the site blocked us, a human must copy a field from a page, the licence was cancelled and
merged into another company).

Sources never touch the database and never open their own HTTP connections: they fetch
through the :class:`Fetcher` the engine hands them, which enforces politeness, size caps,
allowed hosts, decoding and conditional requests, and keeps the exact bytes of every response
as evidence. The ``evidence_sha256`` of a finding is the SHA-256 of the response body it was
read from (``Fetched.sha256``), which the engine stores as a blob.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, ClassVar, Protocol, runtime_checkable

#: Every kind of value a finding can carry.
KINDS = (
    "email",  # lower-cased address
    "phone",  # E.164 (+8695534, +864006155799, +861066001918)
    "sms",  # E.164 mobile that accepts SMS
    "postal",  # one-line postal address
    "web_form",  # URL of a complaint / contact form
    "webhook",  # URL that accepts JSON notices
    "website",  # official site
    "licence",  # licence number, e.g. Z2002511000017
)


@dataclass(frozen=True, slots=True)
class Finding:
    """One contact channel (or identifying fact) seen somewhere, with where and when."""

    party: str  # key of the party it belongs to
    kind: str  # one of KINDS
    value: str  # normalised: E.164 phone, lower-case e-mail, one-line address
    label: str  # "客服热线", "投诉邮箱", "住所（营业场所）" ...
    source: str  # adapter name
    url: str | None  # where it was seen
    seen_at: datetime  # timezone-aware
    evidence_sha256: str | None  # SHA-256 of the bytes it was read from
    confidence: float  # 0..1, the adapter's own judgement
    as_of: str | None = None  # for bundled data: the date the fact was last checked


@dataclass(frozen=True, slots=True)
class Notice:
    """Something a source wants a human (or the engine) to know that is not a contact.

    kinds:
    - ``blocked``: the site served an anti-automation challenge; ``advice`` says what to do.
    - ``error``: the source failed (HTTP 404, timeout, parse failure) - recorded, not fatal.
    - ``manual_task``: a human must look something up (``url`` and ``fields`` say where/what).
    - ``successor``: a cancelled licence names a successor company (``data["name"]``).
    - ``fact``: an identifying fact worth recording (licence status, business types...).
    """

    party: str
    kind: str
    message: str
    source: str
    url: str | None = None
    advice: str | None = None
    fields: tuple[str, ...] = ()
    data: Mapping[str, Any] = field(default_factory=dict)


class NoticeMaker:
    """Mixin for sources: notices stamped with the source's ``name`` and the party's key."""

    name: ClassVar[str]

    def _notice(
        self,
        party: PartyQuery,
        kind: str,
        message: str,
        *,
        url: str | None = None,
        advice: str | None = None,
        fields: tuple[str, ...] = (),
        data: Mapping[str, Any] | None = None,
    ) -> Notice:
        return Notice(
            party=party.key,
            kind=kind,
            message=message,
            source=self.name,
            url=url,
            advice=advice,
            fields=fields,
            data=dict(data or {}),
        )


@dataclass(frozen=True, slots=True)
class Lookup:
    """What one source returned for one party."""

    findings: tuple[Finding, ...] = ()
    notices: tuple[Notice, ...] = ()


@dataclass(frozen=True, slots=True)
class DeclaredContact:
    """A contact the user put in the config, with the provenance they gave for it."""

    kind: str
    value: str
    label: str = ""
    source: str = "config"  # e.g. "annual report 2025", "merchant contract p.3"


@dataclass(frozen=True, slots=True)
class PartyQuery:
    """Everything the engine knows about a party that a source may use to find it."""

    key: str
    role: str  # agent | acquirer | association | regulator
    name: str
    legal_name: str | None = None
    uscc: str | None = None  # 统一社会信用代码, 18 characters
    licence_no: str | None = None  # PBOC 支付业务许可证编号, Z + 13 digits
    website: str | None = None
    declared: tuple[DeclaredContact, ...] = ()
    hints: Mapping[str, Any] = field(default_factory=dict)  # [parties.<key>.hints.<source>]


@dataclass(frozen=True, slots=True)
class Fetched:
    """One HTTP response as the engine's fetcher saw it."""

    url: str  # final URL after allowed redirects
    status: int
    headers: Mapping[str, str]
    body: bytes  # exact bytes received (capped)
    text: str  # decoded with the declared / sniffed charset (GBK, GB18030, UTF-8)
    encoding: str
    fetched_at: datetime
    sha256: str  # of ``body``; the evidence id
    not_modified: bool = False  # 304 on a conditional request: ``body`` is the cached copy


class FetchError(Exception):
    """The fetcher could not get a usable page; ``kind`` says why.

    kinds: ``timeout``, ``http_status``, ``too_large``, ``foreign_redirect``, ``network``.
    """

    def __init__(self, kind: str, message: str, *, url: str, status: int | None = None) -> None:
        super().__init__(message)
        self.kind = kind
        self.url = url
        self.status = status


class Fetcher(Protocol):
    """The engine's polite HTTP client, handed to sources."""

    async def get(self, url: str, *, allowed_hosts: frozenset[str] | None = None) -> Fetched:
        """GET ``url``. Raises :class:`FetchError`. Redirects stay within ``allowed_hosts``
        (default: the host of ``url``)."""
        ...


@runtime_checkable
class Source(Protocol):
    """One source adapter. Registered under the ``outreach.sources`` entry point group."""

    name: ClassVar[str]

    async def lookup(self, party: PartyQuery, fetch: Fetcher) -> Lookup:
        """Look ``party`` up. Never raise for an expected failure: return a ``Notice``."""
        ...
