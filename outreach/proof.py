"""The hash chain: every event is chained to the one before it in the same chain.

Format (docs/proof-format.md is the normative text): the event's canonical body is the UTF-8
JSON of ``{"v": 1, "chain", "seq", "at", "kind", "data"}`` with sorted keys, no whitespace and
non-ASCII kept as is; ``hash = SHA-256(bytes.fromhex(prev_hash) || body)``; the first event of
a chain has ``prev_hash`` = 64 zeros. One chain per case (``case:OUT-2026-000001``) keeps one
merchant's evidence separable from another's; ``party:<key>`` chains hold discovery history.

Appending locks the chain's head row, so two writers can never fork a chain: on PostgreSQL by
``SELECT ... FOR UPDATE``, on SQLite by the database-wide write lock taken at BEGIN IMMEDIATE.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from outreach.store import Blob, Chain, Event, utcnow

GENESIS = "0" * 64
FORMAT_VERSION = 1


def canonical_json(obj: Any) -> bytes:
    """Deterministic JSON: sorted keys, no whitespace, UTF-8, integers and strings only.

    Floats are refused: their text form differs between languages, and an independent
    verifier must be able to reproduce every byte.
    """
    return json.dumps(
        obj,
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
        allow_nan=False,
        default=_refuse,
    ).encode("utf-8")


def _refuse(value: Any) -> Any:
    raise TypeError(f"not allowed in an event: {type(value).__name__} {value!r}")


def _check_no_floats(obj: Any) -> None:
    if isinstance(obj, float):
        raise TypeError(f"floats are not allowed in events (got {obj!r}); use a string")
    if isinstance(obj, Mapping):
        for v in obj.values():
            _check_no_floats(v)
    elif isinstance(obj, list | tuple):
        for v in obj:
            _check_no_floats(v)


def format_at(moment: datetime) -> str:
    """RFC 3339 UTC with microseconds and ``Z``: one spelling per instant."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def event_hash(prev_hash: str, body: bytes) -> str:
    return hashlib.sha256(bytes.fromhex(prev_hash) + body).hexdigest()


def event_body(chain: str, seq: int, at: str, kind: str, data: Mapping[str, Any]) -> bytes:
    return canonical_json(
        {"v": FORMAT_VERSION, "chain": chain, "seq": seq, "at": at, "kind": kind, "data": data}
    )


def record_event(
    session: Session,
    chain: str,
    kind: str,
    data: Mapping[str, Any],
    *,
    case_id: int | None = None,
    attempt_id: int | None = None,
    at: datetime | None = None,
) -> Event:
    """Append one event to ``chain`` inside the caller's transaction."""
    _check_no_floats(data)
    head = session.execute(
        select(Chain).where(Chain.name == chain).with_for_update()
    ).scalar_one_or_none()
    if head is None:
        head = Chain(name=chain, head_seq=0, head_hash=GENESIS)
        session.add(head)
    seq = head.head_seq + 1
    stamp = format_at(at or utcnow())
    body = event_body(chain, seq, stamp, kind, data)
    digest = event_hash(head.head_hash, body)
    ev = Event(
        chain=chain,
        seq=seq,
        at=stamp,
        kind=kind,
        case_id=case_id,
        attempt_id=attempt_id,
        body=body.decode("utf-8"),
        prev_hash=head.head_hash,
        hash=digest,
    )
    session.add(ev)
    head.head_seq = seq
    head.head_hash = digest
    head.updated_at = utcnow()
    return ev


def store_blob(session: Session, data: bytes, media_type: str) -> str:
    """Store ``data`` content-addressed; returns its SHA-256. Idempotent."""
    digest = hashlib.sha256(data).hexdigest()
    if session.get(Blob, digest) is None:
        session.add(Blob(sha256=digest, size=len(data), media_type=media_type, data=data))
        session.flush()
    return digest


# --------------------------------------------------------------------------- verification


@dataclass(frozen=True, slots=True)
class Problem:
    chain: str
    seq: int | None
    event_id: int | None
    message: str

    def __str__(self) -> str:
        where = f"{self.chain} #{self.seq}" if self.seq is not None else self.chain
        ident = f" (event id {self.event_id})" if self.event_id is not None else ""
        return f"{where}{ident}: {self.message}"


@dataclass(slots=True)
class ChainReport:
    chain: str
    events: int = 0
    head_hash: str = GENESIS
    problem: Problem | None = None


def verify_rows(
    chain: str, rows: Iterable[tuple[int, int, str, str, str, str, str]]
) -> ChainReport:
    """Verify one chain from rows of (id, seq, at, kind, body, prev_hash, hash) in seq order.

    Stops at the first problem: everything after a break is unverifiable by construction.
    """
    report = ChainReport(chain)
    prev = GENESIS
    expected_seq = 1
    for ev_id, seq, at, kind, body, prev_hash, digest in rows:

        def fail(msg: str, seq: int = seq, ev_id: int = ev_id) -> ChainReport:
            report.problem = Problem(chain, seq, ev_id, msg)
            return report

        if seq != expected_seq:
            what = "missing" if seq > expected_seq else "duplicated"
            return fail(
                f"sequence jumps from {expected_seq - 1} to {seq}: event {expected_seq} {what} or reordered"
            )
        if prev_hash != prev:
            return fail(
                "prev_hash does not match the hash of the event before it (inserted, deleted or reordered)"
            )
        raw = body.encode("utf-8")
        if event_hash(prev, raw) != digest:
            return fail("hash does not match the event's content (edited)")
        try:
            parsed = json.loads(raw)
        except ValueError:
            return fail("body is not JSON")
        if canonical_json(parsed) != raw:
            return fail("body is not in canonical form")
        if (parsed.get("chain"), parsed.get("seq"), parsed.get("at"), parsed.get("kind")) != (
            chain,
            seq,
            at,
            kind,
        ):
            return fail(
                "indexed columns disagree with the hashed body (chain, seq, at or kind edited)"
            )
        prev = digest
        expected_seq += 1
        report.events += 1
    report.head_hash = prev
    return report


def iter_chain_rows(
    session: Session, chain: str
) -> Iterator[tuple[int, int, str, str, str, str, str]]:
    stmt = (
        select(Event.id, Event.seq, Event.at, Event.kind, Event.body, Event.prev_hash, Event.hash)
        .where(Event.chain == chain)
        .order_by(Event.seq, Event.id)
        .execution_options(yield_per=5000)
    )
    for row in session.execute(stmt):
        yield (row[0], row[1], row[2], row[3], row[4], row[5], row[6])


def verify_chain(session: Session, chain: str) -> ChainReport:
    """Verify one chain and compare its end with the recorded head (catches truncation)."""
    report = verify_rows(chain, iter_chain_rows(session, chain))
    if report.problem is not None:
        return report
    head = session.get(Chain, chain)
    if head is None:
        if report.events:
            report.problem = Problem(
                chain, None, None, "events exist but the chain head record is missing"
            )
        return report
    if head.head_seq != report.events or head.head_hash != report.head_hash:
        report.problem = Problem(
            chain,
            head.head_seq,
            None,
            f"chain ends at #{report.events} but its recorded head is #{head.head_seq} "
            f"{head.head_hash[:12]}…: events were removed from the end (truncated) or the head was edited",
        )
    return report


def all_chains(session: Session) -> list[str]:
    names = set(session.scalars(select(Chain.name)))
    names.update(session.scalars(select(Event.chain).distinct()))
    return sorted(names)
