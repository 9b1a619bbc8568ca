"""The hash chain: every event is chained to the one before it in the same chain.

Format (docs/proof-format.md is the normative text): the event's canonical body is the UTF-8
JSON of ``{"v": 1, "chain", "seq", "at", "kind", "data"}`` with sorted keys, no whitespace and
non-ASCII kept as is; ``hash = SHA-256(bytes.fromhex(prev_hash) || body)``; the first event of
a chain has ``prev_hash`` = 64 zeros. One chain per case (``case:OUT-2026-000001``) keeps one
merchant's evidence separable from another's; ``party:<key>`` chains hold discovery history.

Appending locks the chain's head row, so two writers can never fork a chain: on PostgreSQL by
``SELECT ... FOR UPDATE``, on SQLite by the database-wide write lock taken at BEGIN IMMEDIATE.

Verifying every chain (:func:`verify_chains`) reads each event once, in storage order, through
a raw driver cursor, and checks the columns against the body by exact text rather than by
parsing JSON; bench/verify_chain.py measures it against merely streaming the rows.
"""

from __future__ import annotations

import hashlib
import json
import secrets
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, cast

from sqlalchemy import Select, bindparam, insert, select, update
from sqlalchemy.orm import Session

from outreach.bulk import executemany, in_chunks, insert_ignoring_conflicts, table_of
from outreach.store import Blob, Chain, Event, utcnow

GENESIS = "0" * 64
FORMAT_VERSION = 1


def canonical_json(obj: Any) -> bytes:
    """Deterministic JSON: sorted keys, no whitespace, UTF-8, integers and strings only.

    Floats are refused: their text form differs between languages, and an independent
    verifier must be able to reproduce every byte.
    """
    return _CANONICAL.encode(obj).encode("utf-8")


def _refuse(value: Any) -> Any:
    raise TypeError(f"not allowed in an event: {type(value).__name__} {value!r}")


# One encoder for every event (json.dumps would build one per call, for every event written).
_CANONICAL = json.JSONEncoder(
    sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False, default=_refuse
)


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


# --------------------------------------------------------------------------- writing in bulk


@dataclass(frozen=True, slots=True)
class NewEvent:
    chain: str
    kind: str
    data: dict[str, Any]
    case_id: int | None
    attempt_id: int | None
    at: datetime


_EVENT_INSERT = insert(table_of(Event))
_HEAD_UPDATE = (
    update(table_of(Chain))
    .where(table_of(Chain).c.name == bindparam("b_name"))
    .values(
        head_seq=bindparam("b_seq"), head_hash=bindparam("b_hash"), updated_at=bindparam("b_at")
    )
)


def append_events(session: Session, events: Sequence[NewEvent], now: datetime) -> None:
    """Chain ``events`` (in list order within each chain) inside the caller's transaction.

    Byte for byte what :func:`record_event` writes - the same ``event_body``/``event_hash`` -
    but set-wise, for the dispatcher's batches: the heads of all chains involved are locked in
    one statement (sorted, so two writers cannot deadlock on them), the events inserted in one
    executemany and the heads moved in another. A chain without a head yet gets one first, as
    ``record_event`` would create it.
    """
    if not events:
        return
    names = sorted({e.chain for e in events})
    heads = lock_heads(session, names)
    missing = [n for n in names if n not in heads]
    if missing:
        executemany(
            session,
            insert_ignoring_conflicts(session, table_of(Chain)),
            [{"name": n, "head_seq": 0, "head_hash": GENESIS, "updated_at": now} for n in missing],
        )
        heads.update(lock_heads(session, missing))
    rows: list[dict[str, Any]] = []
    for e in events:
        seq, prev = heads[e.chain]
        seq += 1
        stamp = format_at(e.at)
        body = event_body(e.chain, seq, stamp, e.kind, e.data)
        digest = event_hash(prev, body)
        rows.append(
            {
                "chain": e.chain,
                "seq": seq,
                "at": stamp,
                "kind": e.kind,
                "case_id": e.case_id,
                "attempt_id": e.attempt_id,
                "body": body.decode("utf-8"),
                "prev_hash": prev,
                "hash": digest,
            }
        )
        heads[e.chain] = (seq, digest)
    executemany(session, _EVENT_INSERT, rows)
    executemany(
        session,
        _HEAD_UPDATE,
        [{"b_name": n, "b_seq": heads[n][0], "b_hash": heads[n][1], "b_at": now} for n in names],
    )


def lock_heads(session: Session, names: Sequence[str]) -> dict[str, tuple[int, str]]:
    """(head_seq, head_hash) of each named chain that exists, locked on PostgreSQL."""
    conn = session.connection()
    stmt = _HEADS_PG if conn.dialect.name == "postgresql" else _HEADS
    heads: dict[str, tuple[int, str]] = {}
    for chunk in in_chunks(sorted(names)):
        for name, seq, digest in conn.execute(stmt, {"names": chunk}):
            heads[name] = (seq, digest)
    return heads


def _heads_statement(pg: bool) -> Select[Any]:
    chains = table_of(Chain)
    stmt = (
        select(chains.c.name, chains.c.head_seq, chains.c.head_hash)
        .where(chains.c.name.in_(bindparam("names", expanding=True)))
        .order_by(chains.c.name)
    )
    return stmt.with_for_update() if pg else stmt


# Built once: constructing and keying the statement cost more than running it.
_HEADS = _heads_statement(pg=False)
_HEADS_PG = _heads_statement(pg=True)


def store_blobs(session: Session, blobs: Mapping[str, tuple[bytes, str]], now: datetime) -> None:
    """Store content-addressed bytes (sha256 -> (data, media type)) like :func:`store_blob`,
    in one statement, and safe when another worker stores the same bytes at the same moment
    (ON CONFLICT DO NOTHING). Sorted, for the lock order."""
    if not blobs:
        return
    executemany(
        session,
        insert_ignoring_conflicts(session, table_of(Blob)),
        [
            {
                "sha256": sha,
                "size": len(blobs[sha][0]),
                "media_type": blobs[sha][1],
                "data": blobs[sha][0],
                "created_at": now,
            }
            for sha in sorted(blobs)
        ],
    )


# --------------------------------------------------------------------------- verification
#
# Verification is the hot path of ``audit verify`` (every event of every chain, on every run),
# so it avoids parsing JSON per event. The body's fixed frame is checked by exact text:
# canonical form puts the keys in the order at, chain, data, kind, seq, v, so a body whose
# columns are (chain, seq, at, kind) must read
#
#     {"at":"<at>","chain":<chain as JSON>,"data":{ ... },"kind":<kind as JSON>,"seq":<seq>,"v":1}
#
# A JSON string token ends at its first unescaped quote, so matching this prefix and suffix
# pins every indexed column to the hashed bytes; any edit of a column or of the body fails the
# text match or the hash. Only when the cheap match fails is the body parsed, to say exactly
# what is wrong (or to accept an ``at`` that needed escaping). ``strict=True`` parses and
# re-serialises every body too, for small inputs such as one case's evidence bundle.

_GENESIS_RAW = bytes(32)
_AT_OPEN = '{"at":"'
_V_CLOSE = f',"v":{FORMAT_VERSION}}}'
_EVENT_KEYS = frozenset({"v", "chain", "seq", "at", "kind", "data"})

EventRow = tuple[int, int, str, str, str, str, str]
"""(id, seq, at, kind, body, prev_hash, hash) of one event."""
ChainEventRow = tuple[str, int, int, str, str, str, str, str]
"""(chain, id, seq, at, kind, body, prev_hash, hash) of one event."""

_ROWS_SQL = "SELECT chain, id, seq, at, kind, body, prev_hash, hash FROM events"


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


def _json_string(text: str) -> str:
    return json.dumps(text, ensure_ascii=False)


def check_body(chain: str, seq: int, at: str, kind: str, raw: bytes) -> str | None:
    """The exact, slow check of one body: JSON, canonical, the event's fields, and the columns.

    Returns what is wrong, or ``None``. Used when the fast text match fails (to name the
    problem) and for every event in strict mode.
    """
    try:
        parsed = json.loads(raw)
    except ValueError:
        return "body is not JSON"
    try:
        _check_no_floats(parsed)
        canonical = canonical_json(parsed)
    except (TypeError, ValueError):
        return "body is not in canonical form (floats are not allowed)"
    if canonical != raw:
        return "body is not in canonical form"
    if (
        not isinstance(parsed, dict)
        or parsed.keys() != _EVENT_KEYS
        or parsed["v"] != FORMAT_VERSION
        or not isinstance(parsed["data"], dict)
        or not isinstance(parsed["seq"], int)
        or isinstance(parsed["seq"], bool)
    ):
        return "body is not an event of format version 1 (v, chain, seq, at, kind, data)"
    if (parsed["chain"], parsed["seq"], parsed["at"], parsed["kind"]) != (chain, seq, at, kind):
        return "indexed columns disagree with the hashed body (chain, seq, at or kind edited)"
    return None


def _verify_into(
    rows: Iterable[ChainEventRow],
    reports: dict[str, ChainReport],
    *,
    ordered: bool,
    strict: bool = False,
) -> set[str]:
    """Verify rows into ``reports`` (one per chain); return the chains to re-check in order.

    Rows of many chains may be interleaved (a scan in ``id`` order, the cheapest way to read
    every event) as long as each chain's rows come in ``seq`` order, which is how they are
    written. A chain whose rows do not (a missing, duplicated or reordered ``seq``) is, with
    ``ordered=False``, set aside and returned for the caller to verify alone in (seq, id)
    order, so that every message is exactly the one the ordered check gives; with
    ``ordered=True`` the sequence problem is reported at once. Each chain stops at its first
    problem: everything after a break is unverifiable by construction.
    """
    sha256 = hashlib.sha256
    kind_close: dict[str, str] = {}
    # chain -> (next expected seq, previous hash hex, previous hash raw, body text after at)
    state: dict[str, tuple[int, str, bytes, str]] = {}
    get = state.get
    done: set[str] = set()  # broken or set aside: their remaining rows are skipped
    recheck: set[str] = set()
    for chain, ev_id, seq, at, kind, body, prev_hash, digest in rows:
        st = get(chain)
        if st is None:
            if chain in done:
                continue
            st = (1, GENESIS, _GENESIS_RAW, '","chain":' + _json_string(chain) + ',"data":{')
            reports[chain] = ChainReport(chain)
        expected, prev_hex, prev_raw, chain_open = st
        message: str | None = None
        if seq != expected:
            if not ordered:
                recheck.add(chain)
                done.add(chain)
                state.pop(chain, None)
                continue
            what = "missing" if seq > expected else "duplicated"
            message = (
                f"sequence jumps from {expected - 1} to {seq}: event {expected} {what} or reordered"
            )
        elif prev_hash != prev_hex:
            message = "prev_hash does not match the hash of the event before it (inserted, deleted or reordered)"
        else:
            raw = body.encode("utf-8")
            computed = sha256(prev_raw + raw).digest()
            hex_digest = computed.hex()
            if hex_digest != digest:
                message = "hash does not match the event's content (edited)"
            else:
                close = kind_close.get(kind)
                if close is None:
                    close = kind_close[kind] = '},"kind":' + _json_string(kind) + ',"seq":'
                if (
                    strict
                    or not body.startswith(_AT_OPEN + at + chain_open)
                    or not body.endswith(close + str(seq) + _V_CLOSE)
                    or '"' in at
                    or "\\" in at
                ):
                    message = check_body(chain, seq, at, kind, raw)
                if message is None:
                    state[chain] = (seq + 1, hex_digest, computed, chain_open)
                    continue
        report = reports[chain]
        report.problem = Problem(chain, seq, ev_id, message)
        report.events = expected - 1
        report.head_hash = prev_hex
        done.add(chain)
        state.pop(chain, None)
    for chain, (expected, prev_hex, _raw, _open) in state.items():
        report = reports[chain]
        report.events = expected - 1
        report.head_hash = prev_hex
    return recheck


def verify_rows(chain: str, rows: Iterable[EventRow], *, strict: bool = False) -> ChainReport:
    """Verify one chain from rows of (id, seq, at, kind, body, prev_hash, hash) in seq order.

    ``strict`` also parses and re-serialises every body (see :func:`check_body`): for small
    inputs that come from outside the database, such as an evidence bundle.
    """
    reports: dict[str, ChainReport] = {}
    _verify_into(((chain, *row) for row in rows), reports, ordered=True, strict=strict)
    return reports.get(chain) or ChainReport(chain)


@contextmanager
def event_rows(
    session: Session, chain: str | None = None, *, batch: int = 5000
) -> Iterator[Iterable[ChainEventRow]]:
    """Stream (chain, id, seq, at, kind, body, prev_hash, hash): one chain in (seq, id) order,
    or every event in ``id`` (storage) order.

    Why a raw driver cursor: at a million events, building ORM rows costs more than the
    hashing. SQLite gets a plain cursor (it steps lazily); PostgreSQL a server-side cursor, so
    the rows never sit in memory all at once. Why ``id`` order for everything: on SQLite it is
    the table's own order (a plain scan, no index lookups), about twice as fast as reading in
    (chain, seq) order, and each chain's rows still come in seq order (see
    :func:`_verify_into`).
    """
    conn = session.connection()
    dialect = conn.dialect.name
    params: tuple[str, ...] = ()
    if chain is None:
        sql = _ROWS_SQL + " ORDER BY id"
    else:
        sql, params = _ROWS_SQL + " WHERE chain = {p} ORDER BY seq, id", (chain,)
    raw: Any = conn.connection.dbapi_connection
    if dialect == "sqlite":
        cursor = raw.cursor()
        cursor.arraysize = batch
        try:
            cursor.execute(sql.format(p="?"), params)
            yield cursor
        finally:
            cursor.close()
    elif dialect == "postgresql":
        cursor = raw.cursor(name=f"outreach_events_{secrets.token_hex(6)}")
        cursor.itersize = batch
        try:
            cursor.execute(sql.format(p="%s"), params)
            yield cursor
        finally:
            cursor.close()
    else:  # any other SQLAlchemy dialect: slower, but correct
        stmt = select(
            Event.chain, Event.id, Event.seq, Event.at, Event.kind, Event.body,
            Event.prev_hash, Event.hash,
        )  # fmt: skip
        if chain is None:
            stmt = stmt.order_by(Event.id)
        else:
            stmt = stmt.where(Event.chain == chain).order_by(Event.seq, Event.id)
        result = conn.execution_options(yield_per=batch).execute(stmt)
        yield cast(Iterable[ChainEventRow], (tuple(row) for row in result))


def iter_chain_rows(session: Session, chain: str) -> Iterator[EventRow]:
    """The rows of one chain as (id, seq, at, kind, body, prev_hash, hash), in seq order."""
    with event_rows(session, chain) as rows:
        for row in rows:
            yield row[1:]


def _compare_head(report: ChainReport, head: tuple[int, str] | None) -> None:
    """The chain's end must be the recorded head: catches events removed from the end."""
    if report.problem is not None:
        return
    chain = report.chain
    if head is None:
        if report.events:
            report.problem = Problem(
                chain, None, None, "events exist but the chain head record is missing"
            )
        return
    head_seq, head_hash = head
    if head_seq != report.events or head_hash != report.head_hash:
        report.problem = Problem(
            chain,
            head_seq,
            None,
            f"chain ends at #{report.events} but its recorded head is #{head_seq} "
            f"{head_hash[:12]}…: events were removed from the end (truncated) or the head was edited",
        )


def _verify_chain_rows(session: Session, chain: str) -> ChainReport:
    reports: dict[str, ChainReport] = {}
    with event_rows(session, chain) as rows:
        _verify_into(rows, reports, ordered=True)
    return reports.get(chain) or ChainReport(chain)


def verify_chain(session: Session, chain: str) -> ChainReport:
    """Verify one chain and compare its end with the recorded head (catches truncation)."""
    report = _verify_chain_rows(session, chain)
    head = session.get(Chain, chain)
    _compare_head(report, None if head is None else (head.head_seq, head.head_hash))
    return report


def verify_chains(session: Session, chains: Iterable[str] | None = None) -> list[ChainReport]:
    """Verify every chain (or the named ones) against its recorded head, sorted by name.

    Every chain at once is one pass over ``events`` in storage order, not one query per
    chain: that is what makes a million events a matter of seconds. The result is the same,
    message for message, as :func:`verify_chain` on each chain.
    """
    if chains is not None:
        return [verify_chain(session, name) for name in sorted(set(chains))]
    heads = {
        name: (seq, digest)
        for name, seq, digest in session.execute(
            select(Chain.name, Chain.head_seq, Chain.head_hash)
        )
    }
    reports: dict[str, ChainReport] = {}
    with event_rows(session) as rows:
        recheck = _verify_into(rows, reports, ordered=False)
    for name in recheck:
        reports[name] = _verify_chain_rows(session, name)
    for name in heads.keys() - reports.keys():
        reports[name] = ChainReport(name)
    for name, report in reports.items():
        _compare_head(report, heads.get(name))
    return [reports[name] for name in sorted(reports)]


def all_chains(session: Session) -> list[str]:
    names = set(session.scalars(select(Chain.name)))
    names.update(session.scalars(select(Event.chain).distinct()))
    return sorted(names)


def jsonable(value: Any) -> Any:
    """Any value (a transcript, a source notice) as event data: only str, int, bool, None, lists and objects (floats as
    their repr, so every verifier reads the same text). Exact builtin types are tested first,
    leaves without a call: this runs over every transcript of every send."""
    kind = type(value)
    if kind is str or kind is int or kind is bool or value is None:
        return value
    if kind is dict:
        out: dict[str, Any] = {}
        for k, v in value.items():
            vk = type(v)
            out[k if type(k) is str else str(k)] = (
                v if vk is str or vk is int or vk is bool or v is None else jsonable(v)
            )
        return out
    if kind is list or kind is tuple:
        return [
            v if (vk := type(v)) is str or vk is int or vk is bool or v is None else jsonable(v)
            for v in value
        ]
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, str | int | bool):
        return value
    return str(value)
