"""What the dispatcher claims, sends and records, and the statements that read and write it.

Kept apart from :mod:`outreach.dispatch` (the order of operations) so that module reads as the
procedure it is; everything here is plain data or one SQL statement, built once.
"""

from __future__ import annotations

import hashlib
import os
import socket
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from datetime import datetime
from operator import attrgetter
from typing import Any, NamedTuple

from sqlalchemy import Select, bindparam, insert, select, update
from sqlalchemy.orm import Session
from sqlalchemy.sql.dml import Update

from channels.base import Outgoing, Prepared, Receipt
from outreach import clock
from outreach.bulk import executemany, table_of
from outreach.proof import NewEvent, append_events, store_blobs
from outreach.retry import Backoff
from outreach.store import Attempt, Case, Notice, Party, Send


@dataclass
class DispatchReport:
    sent: int = 0
    pending: int = 0
    failed: int = 0
    unknown: int = 0
    rescheduled: int = 0
    deferred: int = 0
    recovered: int = 0
    released: int = 0
    errors: list[str] = field(default_factory=list)

    def add(self, other: DispatchReport) -> None:
        for name in (
            "sent",
            "pending",
            "failed",
            "unknown",
            "rescheduled",
            "deferred",
            "recovered",
            "released",
        ):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.errors.extend(other.errors)


@dataclass(frozen=True, slots=True)
class DispatchPolicy:
    max_tries: int = 4
    reschedule_after: float = 1800.0
    max_claims: int = 12
    lease_seconds: float = 120.0
    batch: int = 200
    backoff: Backoff = field(default_factory=Backoff)
    # How long the writer lets outcomes gather before one commit records them all: a longer
    # linger means fewer, larger transactions, a shorter one a smaller crash window (sent but
    # not yet recorded, hence re-sent after recovery as a visible duplicate).
    linger_seconds: float = 0.05


@dataclass(slots=True)
class Job:
    attempt_id: int
    case_id: int
    chain: str
    channel: str
    contact_id: int
    prepared: Prepared
    try_number: int
    claims: int
    lease_until: datetime | None = None
    tries: int = 0  # sends of this claim so far


@dataclass(slots=True)
class Outcome:
    job: Job
    state: str  # sent | pending | failed | unknown | retry | released
    receipt: Receipt | None = None
    error: Exception | None = None
    at: datetime = field(default_factory=clock.now)
    tries: int = 1
    reason: str | None = None  # why a job was released


def worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def case_chain(reference: str) -> str:
    """The chain of a case, as :attr:`outreach.store.Case.chain` names it (without loading it)."""
    return f"case:{reference}"


def is_pg(session: Session) -> bool:
    return session.get_bind().dialect.name == "postgresql"


_ATTEMPT_UPDATES: dict[tuple[str, ...], Update] = {}


def attempt_update(columns: tuple[str, ...]) -> Update:
    """UPDATE attempts SET <columns> WHERE id = :b_id, built once per set of columns."""
    stmt = _ATTEMPT_UPDATES.get(columns)
    if stmt is None:
        table = table_of(Attempt)
        stmt = (
            update(table)
            .where(table.c.id == bindparam("b_id"))
            .values({c: bindparam(f"b_{c}") for c in columns})
        )
        _ATTEMPT_UPDATES[columns] = stmt
    return stmt


SEND_INSERT = insert(table_of(Send))


class DueRow(NamedTuple):
    """A due attempt with what preparing it needs (a plain tuple: SQLAlchemy's ``Row`` looks
    attributes up through a failed ordinary lookup first, which cost more than the claim's
    own work on them)."""

    id: int
    next_try_at: datetime
    channel: str
    kind: str
    recipient: str
    contact_point_id: int
    idempotency_key: str
    tries: int
    claims: int
    created_at: datetime
    payload_sha256: str | None
    case_id: int
    party_id: int
    step: int
    subject: str
    body: str
    html: str | None
    sms_params: dict[str, Any] | None
    template: str
    language: str
    reference: str
    party_name: str
    legal_name: str | None


def _due_columns() -> dict[str, Any]:
    a, n, c, p = (table_of(m) for m in (Attempt, Notice, Case, Party))
    columns: dict[str, Any] = {}
    for name in DueRow._fields:
        if name == "reference":
            columns[name] = c.c.reference
        elif name == "party_name":
            columns[name] = p.c.name.label("party_name")
        elif name == "legal_name":
            columns[name] = p.c.legal_name
        elif name in a.c:
            columns[name] = a.c[name]
        else:
            columns[name] = n.c[name]
    return columns


DUE_COLUMNS = _due_columns()


class CurrentRow(NamedTuple):
    id: int
    state: str
    lease_owner: str | None
    claims: int
    tries: int


def _current_statement(pg: bool) -> Select[Any]:
    a = table_of(Attempt)
    stmt = (
        select(*(a.c[name] for name in CurrentRow._fields))
        .where(a.c.id.in_(bindparam("ids", expanding=True)))
        .order_by(a.c.id)
    )
    return stmt.with_for_update() if pg else stmt


CURRENT = _current_statement(pg=False)
CURRENT_PG = _current_statement(pg=True)


@dataclass(slots=True)
class Writes:
    """What one transaction will chain and store, written in lock order by :meth:`flush`."""

    now: datetime
    blobs: dict[str, tuple[bytes, str]] = field(default_factory=dict)
    events: list[NewEvent] = field(default_factory=list)

    def blob(self, data: bytes, media_type: str) -> str:
        digest = hashlib.sha256(data).hexdigest()
        self.blobs.setdefault(digest, (data, media_type))
        return digest

    def event(
        self,
        chain: str,
        kind: str,
        data: dict[str, Any],
        *,
        case_id: int | None,
        attempt_id: int | None,
        at: datetime | None = None,
    ) -> None:
        self.events.append(NewEvent(chain, kind, data, case_id, attempt_id, at or self.now))

    def flush(self, session: Session) -> None:
        store_blobs(session, self.blobs, self.now)
        append_events(session, self.events, self.now)


def for_sending(prepared: Prepared) -> Prepared:
    """What ``send`` gets: the prepared payload, with the notice's text left behind.

    ``prepare`` turned the text into the payload that was just stored and chained; ``send``
    must send that payload and nothing else, so it gets the notice's identifiers (recipient,
    reference, keys) but not its body or HTML. It also keeps jobs small: with ``db_process``
    every job crosses a pipe, and the text was most of its bytes.
    """
    out = prepared.outgoing
    if not out.body and out.html is None:
        return prepared
    values = list(_OUTGOING_VALUES(out))  # (dataclasses.replace costs ten times as much)
    values[_BODY], values[_HTML] = "", None
    p = prepared
    return Prepared(Outgoing(*values), p.payload, p.media_type, p.message_id, p.meta)


_OUTGOING_FIELDS = tuple(f.name for f in fields(Outgoing))
_OUTGOING_VALUES = attrgetter(*_OUTGOING_FIELDS)
_BODY, _HTML = _OUTGOING_FIELDS.index("body"), _OUTGOING_FIELDS.index("html")


def update_attempts(session: Session, rows: Sequence[dict[str, Any]]) -> None:
    """UPDATE attempts by id, one executemany per set of changed columns."""
    groups: dict[tuple[str, ...], list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault(tuple(sorted(k for k in row if k != "id")), []).append(row)
    for columns, group in groups.items():
        executemany(
            session,
            attempt_update(columns),
            [{f"b_{k}": v for k, v in row.items()} for row in group],
        )
