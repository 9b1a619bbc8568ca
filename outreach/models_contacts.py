"""Database models: contacts. Imported by :mod:`outreach.store` so Alembic and tests see them.

Three small tables that discovery needs to remember between runs, beside the contact points
and provenance of :mod:`outreach.store`:

- ``lookup_tasks``: a lookup only a human can do (the company registry blocks automation).
  Kept so a task is raised once and shown until answered, instead of re-raised every run.
- ``source_status``: the last outcome of each (party, source), so a site that stays down is
  chained once when it fails and once when it recovers, not on every scheduled run.
- ``http_validators``: ETag / Last-Modified per URL, so the next run can ask "changed?" and
  get a 304 instead of the whole page; the page bytes themselves live in ``blobs``.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, ForeignKey, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column, relationship

from outreach.store import Base, Party, UTCDateTime, utcnow


class LookupTask(Base):
    """A manual lookup a source asked a human to do, e.g. copy an annual report's contacts.

    ``key`` is the source's stable name for the task (``gsxt-annual-report-2025``), so the same
    request on the next run finds this row instead of opening another. ``wants`` maps the
    contact kinds that answer it to the field to copy (``{"email": "企业电子邮箱"}``);
    ``answered`` lists the kinds supplied so far through ``outreach contacts add``.
    """

    __tablename__ = "lookup_tasks"
    __table_args__ = (UniqueConstraint("party_id", "source", "key"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    party_id: Mapped[int] = mapped_column(ForeignKey("parties.id"))
    source: Mapped[str] = mapped_column(String(100))
    key: Mapped[str] = mapped_column(String(200))
    title: Mapped[str] = mapped_column(Text)
    url: Mapped[str | None] = mapped_column(Text)
    advice: Mapped[str | None] = mapped_column(Text)
    fields: Mapped[list[str]] = mapped_column(JSON, default=list)
    wants: Mapped[dict[str, str]] = mapped_column(JSON, default=dict)
    answered: Mapped[list[str]] = mapped_column(JSON, default=list)
    data: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    state: Mapped[str] = mapped_column(String(8), default="open")  # open | closed
    opened_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    closed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    close_reason: Mapped[str | None] = mapped_column(Text)
    party: Mapped[Party] = relationship()


class SourceStatus(Base):
    """How the last run of one source for one party went, and since when it has gone so."""

    __tablename__ = "source_status"
    __table_args__ = (UniqueConstraint("party_id", "source"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    party_id: Mapped[int] = mapped_column(ForeignKey("parties.id"))
    source: Mapped[str] = mapped_column(String(100))
    outcome: Mapped[str] = mapped_column(String(8))  # ok | error | blocked | failed
    digest: Mapped[str] = mapped_column(String(64))  # of the notices last chained
    since: Mapped[datetime] = mapped_column(UTCDateTime)
    last_run: Mapped[datetime] = mapped_column(UTCDateTime)
    last_ok: Mapped[datetime | None] = mapped_column(UTCDateTime)


class HttpValidator(Base):
    """ETag / Last-Modified of the last 200 for a URL; the body is the blob ``body_sha256``.

    Keyed by the SHA-256 of the URL, because real registry URLs can be longer than any
    portable index allows.
    """

    __tablename__ = "http_validators"
    url_sha256: Mapped[str] = mapped_column(String(64), primary_key=True)
    url: Mapped[str] = mapped_column(Text)
    etag: Mapped[str | None] = mapped_column(Text)
    last_modified: Mapped[str | None] = mapped_column(String(100))
    headers: Mapped[dict[str, str]] = mapped_column(JSON, default=dict)
    body_sha256: Mapped[str] = mapped_column(ForeignKey("blobs.sha256"))
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
