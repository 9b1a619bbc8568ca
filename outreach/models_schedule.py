"""Database models: schedule. Imported by :mod:`outreach.store` so Alembic and tests see them.

Both tables are bookkeeping for decisions whose evidence is already in the hash chain: they
exist so the worker can answer "is this party's discovery stale?" and "was this dead end
already reported?" with one indexed lookup instead of re-reading event bodies every tick.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import ForeignKey, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from outreach.store import Base, UTCDateTime


class PartyDiscovery(Base):
    """When a party's sources were last asked, so the worker re-discovers only stale parties.

    Discovery chains events only when something changed, so "nothing new on Tuesday" leaves
    no trace in the chain; this row is what remembers that Tuesday's lookup happened.
    """

    __tablename__ = "party_discoveries"
    party_id: Mapped[int] = mapped_column(ForeignKey("parties.id"), primary_key=True)
    discovered_at: Mapped[datetime] = mapped_column(UTCDateTime)


class ExhaustedRoute(Base):
    """A notice route with no usable contact left (chained once as ``no_channel``).

    ``route`` is the contact kind (``email``, ``sms``, …) for a step in mode ``all``, where
    each kind is tried on its own, or ``first`` for a step in mode ``first``, where all kinds
    form one route. The primary key makes the dead end reported exactly once, even when two
    workers look at the same failure.
    """

    __tablename__ = "exhausted_routes"
    notice_id: Mapped[int] = mapped_column(ForeignKey("notices.id"), primary_key=True)
    route: Mapped[str] = mapped_column(String(16), primary_key=True)
    reason: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
