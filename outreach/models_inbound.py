"""Database models: inbound. Imported by :mod:`outreach.store` so Alembic and tests see them.

One row per distinct message fetched from the answers mailbox, whatever became of it: matched
to a case, held for review (nothing matched, or the match was ambiguous), later assigned or
dismissed by a person, or skipped (our own notice, a second delivery of a message already
recorded). Nothing is ever deleted, so "never dropped" can be checked with one query. The
exact bytes are a blob (``sha256``); the hash chain holds what the message changed.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, ForeignKey, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from outreach.store import Attempt, Base, UTCDateTime, utcnow

STATUSES = ("matched", "held", "assigned", "dismissed", "skipped")


class InboundMessage(Base):
    """A message from the answers mailbox. ``sha256`` is unique: fetching the same bytes
    again (a crash before the \\Seen flag, two workers polling at once) records nothing new."""

    __tablename__ = "inbound_messages"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    sha256: Mapped[str] = mapped_column(ForeignKey("blobs.sha256"), unique=True)
    message_id: Mapped[str | None] = mapped_column(String(400), index=True)
    mailbox: Mapped[str] = mapped_column(String(200))
    uidvalidity: Mapped[int | None] = mapped_column(BigInteger)
    uid: Mapped[int | None] = mapped_column(BigInteger)
    mailbox_date: Mapped[datetime | None] = mapped_column(UTCDateTime)  # IMAP INTERNALDATE
    received_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)  # fetched by us
    sent_at: Mapped[datetime | None] = mapped_column(UTCDateTime)  # its Date header
    from_address: Mapped[str | None] = mapped_column(String(400))
    from_name: Mapped[str] = mapped_column(String(400), default="")
    subject: Mapped[str] = mapped_column(Text, default="")
    # message | auto_reply | dsn | mdn | bounce (see outreach.mailparse.Kind)
    kind: Mapped[str] = mapped_column(String(16))
    status: Mapped[str] = mapped_column(String(16), index=True)  # one of STATUSES
    case_id: Mapped[int | None] = mapped_column(ForeignKey("cases.id"), index=True)
    attempt_id: Mapped[int | None] = mapped_column(ForeignKey("attempts.id"))
    # in_reply_to | references | original_message_id | envelope_id | x_outreach_reference |
    # subject | body | assigned
    matched_by: Mapped[str | None] = mapped_column(String(32))
    note: Mapped[str | None] = mapped_column(Text)  # why held / skipped, a reviewer's note
    details: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


# A reply is matched by the Message-ID it quotes (In-Reply-To, References, a report's
# Original-Message-ID): without this index each lookup scans the whole outbox.
Index("ix_attempts_message_id", Attempt.message_id)
