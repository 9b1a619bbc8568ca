"""Database models: receipts. Imported by :mod:`outreach.store` so Alembic and tests see them.

One row per delivery report ever received, matched or not. The row is what makes receipts
idempotent (Aliyun says outright that its pushes are not, and every provider retries a push it
thinks failed): ``dedupe_key`` is unique, so a report seen twice - pushed twice, or pushed and
then polled - is recorded once. It is also where a report that matches no attempt waits, with
the exact bytes it came in, until an attempt claims it (``outreach receipts list --unmatched``).
The evidence itself lives in the hash chains; this table is an index over it and may change.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Boolean, ForeignKey, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from outreach.store import Base, UTCDateTime, utcnow


class DeliveryReceipt(Base):
    """One delivery report from an SMS provider, as received and as matched."""

    __tablename__ = "receipts"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    # sha256 over (provider, message identity, outcome, code, stage): see receipts.dedupe_key
    dedupe_key: Mapped[str] = mapped_column(String(64), unique=True)
    provider: Mapped[str] = mapped_column(String(16))  # aliyun | tencent | twilio
    via: Mapped[str] = mapped_column(String(8))  # push | poll
    channel: Mapped[str | None] = mapped_column(String(64))  # known when polled
    outcome: Mapped[str] = mapped_column(String(16))  # delivered | undelivered | progress
    stage: Mapped[str] = mapped_column(String(32), default="")  # provider's own status word
    provider_id: Mapped[str | None] = mapped_column(String(200), index=True)
    out_id: Mapped[str | None] = mapped_column(String(200))  # OutId / SessionContext
    recipient: Mapped[str | None] = mapped_column(String(64))
    code: Mapped[str | None] = mapped_column(String(64))
    message: Mapped[str | None] = mapped_column(Text)
    reported_at: Mapped[str | None] = mapped_column(String(40))  # the provider's timestamp
    permanent: Mapped[bool] = mapped_column(Boolean, default=False)
    body_sha256: Mapped[str] = mapped_column(String(64))  # blob: the exact bytes received
    item: Mapped[int] = mapped_column(Integer, default=0)  # position of the report in the body
    received_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    attempt_id: Mapped[int | None] = mapped_column(ForeignKey("attempts.id"), index=True)
    matched_by: Mapped[str | None] = mapped_column(String(16))  # provider_id | out_id
    matched_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
