"""Property tests: whatever an insider does to the events, verification notices.

The insider has the database: they drop the append-only triggers first, then change a column
of an event, insert a forged event, delete one, or swap two. Done naively, the chain itself
breaks (``verify_chains``). Done carefully - every later hash recomputed and the head record
moved to match, so that the chain is internally perfect - the RFC 3161 anchor still names the
old head, and ``verify_anchors`` catches it. And any flipped byte inside any member of an
evidence bundle is caught by ``verify-bundle``, even when the checksums are rewritten to hide
it, for every member that carries evidence (events and cited files).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import shutil
import sqlite3
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy.orm import Session, sessionmaker
from tsa_server import local_tsa

from outreach.anchor import anchor_now, verify_anchors
from outreach.bundle import (
    build_members,
    read_bundle,
    seal,
    verify_bundle,
    verify_members,
    zip_bytes,
)
from outreach.migrate import ensure_schema
from outreach.proof import (
    GENESIS,
    event_body,
    event_hash,
    format_at,
    record_event,
    store_blob,
    verify_chains,
)
from outreach.store import Case, Merchant, make_engine, session_factory

CASE = "case:OUT-2026-000001"
CHAINS = (CASE, "case:OUT-2026-000002", "party:lakala")
EVENTS = 6  # per chain, all anchored
TAIL = 2  # more events of CASE after the anchor
T0 = datetime(2026, 11, 23, 3, 0, tzinfo=UTC)


def _settings(examples: int) -> settings:
    """Moderate counts: the whole file runs in well under 40 s on a loaded 2-core machine."""
    return settings(
        max_examples=examples,
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )


@dataclass
class Template:
    db: Path
    ca_pem: bytes = field(repr=False)
    members: dict[str, bytes] = field(repr=False)
    top: str
    workdir: Path


def _data(chain: str, n: int, session: Session) -> dict[str, Any]:
    reply = f"250 2.0.0 Ok: queued as {chain[-6:]}{n}\r\n".encode()
    return {
        "n": n,
        "text": f"第{n}次通知 & <b>{chain}</b>",
        "response_sha256": store_blob(session, reply, "text/plain"),
    }


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Template]:
    """Three chains of six events, anchored by a real local TSA, then two more events."""
    tmp = tmp_path_factory.mktemp("tamper")
    path = tmp / "template.db"
    engine = make_engine(f"sqlite:///{path}")
    ensure_schema(engine)
    sessions = session_factory(engine)
    with sessions.begin() as s:
        m = Merchant(key="m", name="张三便利店", merchant_no="822584053990001")
        s.add(m)
        s.flush()
        s.add(
            Case(
                key="c",
                reference="OUT-2026-000001",
                merchant_id=m.id,
                goal="cancel_terminal",
                plan="standard",
                opened_on=date(2026, 11, 23),
            )
        )
        for n in range(1, EVENTS + 1):
            for chain in CHAINS:
                record_event(s, chain, "note", _data(chain, n, s), at=T0 + timedelta(minutes=n))
    with local_tsa(tmp) as tsa:

        async def anchor() -> None:
            async with httpx.AsyncClient() as client:
                report = await anchor_now(sessions, [tsa.url], client)
                assert report.error is None and report.anchored == len(CHAINS)

        asyncio.run(anchor())
        ca_pem = tsa.ca_pem
    with sessions.begin() as s:
        for n in range(EVENTS + 1, EVENTS + TAIL + 1):
            record_event(s, CASE, "note", _data(CASE, n, s), at=T0 + timedelta(minutes=n))
    with sessions() as s:
        assert all(r.problem is None for r in verify_chains(s))
        assert not verify_anchors(s, ca_pem).problems
        top, members, _report = build_members(s, CASE[5:], trust_roots_pem=ca_pem, now=T0)
    engine.dispose()
    yield Template(path, ca_pem, members, top, tmp)


@pytest.fixture
def copy_db(template: Template) -> Iterator[Any]:
    """A fresh copy of the template database per hypothesis example."""
    made: list[Path] = []

    def fresh() -> Path:
        dest = template.workdir / f"{uuid.uuid4().hex}.db"
        shutil.copy(template.db, dest)
        made.append(dest)
        return dest

    yield fresh
    for p in made:
        for suffix in ("", "-wal", "-shm"):
            Path(f"{p}{suffix}").unlink(missing_ok=True)


def _insider(path: Path) -> sqlite3.Connection:
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("DROP TRIGGER IF EXISTS events_no_update")
    db.execute("DROP TRIGGER IF EXISTS events_no_delete")
    return db


def _problems(path: Path, ca_pem: bytes) -> tuple[list[str], list[str]]:
    """(chain problems, anchor problems) as ``audit verify`` would find them."""
    engine = make_engine(f"sqlite:///{path}")
    try:
        sessions: sessionmaker[Session] = session_factory(engine)
        with sessions() as s:
            chains = [str(r.problem) for r in verify_chains(s) if r.problem is not None]
            anchors = verify_anchors(s, ca_pem).problems
    finally:
        engine.dispose()
    return chains, anchors


def _mutate_text(text: str, index: int, char: str) -> str:
    i = index % len(text)
    new = char if char != text[i] else ("x" if text[i] != "x" else "y")
    return text[:i] + new + text[i + 1 :]


# ------------------------------------------------------------------ naive tampering


naive_ops = st.one_of(
    st.tuples(
        st.just("edit"),
        st.sampled_from(["chain", "at", "kind", "body", "prev_hash", "hash"]),
        st.integers(0, 10_000),
        st.sampled_from(list('0123456789abcdef"\\{}:,zZ张三 ')),
    ),
    st.tuples(st.just("seq"), st.integers(1, 50)),
    st.tuples(st.just("insert"), st.booleans()),
    st.just(("delete",)),
    st.tuples(st.just("swap"), st.integers(1, EVENTS + TAIL)),
)


@_settings(150)
@given(chain=st.sampled_from(CHAINS), position=st.integers(1, EVENTS + TAIL), op=naive_ops)
def test_any_naive_change_is_detected(
    template: Template, copy_db: Any, chain: str, position: int, op: tuple[Any, ...]
) -> None:
    path = copy_db()
    db = _insider(path)
    rows = db.execute(
        "SELECT id, seq, at, kind, body, prev_hash, hash FROM events WHERE chain = ? ORDER BY seq",
        (chain,),
    ).fetchall()
    k = min(position, len(rows))
    ev_id, seq, at, kind, body, prev_hash, digest = rows[k - 1]
    if op[0] == "edit":
        _, column, index, char = op
        current = {"chain": chain, "at": at, "kind": kind, "body": body}.get(column)
        current = (
            current if current is not None else (prev_hash if column == "prev_hash" else digest)
        )
        db.execute(
            f"UPDATE events SET {column} = ? WHERE id = ?",  # noqa: S608 - column from a fixed list
            (_mutate_text(current, index, char), ev_id),
        )
    elif op[0] == "seq":
        db.execute("UPDATE events SET seq = ? WHERE id = ?", (len(rows) + op[1], ev_id))
    elif op[0] == "insert":
        # A forged event that is itself well formed and correctly chained to its predecessor;
        # at_end=True appends it after the head instead.
        at_end = op[1]
        new_seq = len(rows) + 1 if at_end else k
        prev = rows[-1][6] if at_end else prev_hash
        if not at_end:
            db.execute(
                "UPDATE events SET seq = seq + 1000 WHERE chain = ? AND seq >= ?", (chain, k)
            )
            db.execute(
                "UPDATE events SET seq = seq - 999 WHERE chain = ? AND seq >= 1000", (chain,)
            )
        forged_at = format_at(T0)
        forged = event_body(chain, new_seq, forged_at, "note", {"n": 0, "text": "forged"})
        db.execute(
            "INSERT INTO events (chain, seq, at, kind, body, prev_hash, hash) VALUES (?,?,?,?,?,?,?)",
            (chain, new_seq, forged_at, "note", forged.decode(), prev, event_hash(prev, forged)),
        )
    elif op[0] == "delete":
        db.execute("DELETE FROM events WHERE id = ?", (ev_id,))
    else:  # swap two events' places
        other = min(op[1], len(rows))
        if other == k:
            other = k % len(rows) + 1
        other_id, other_seq = rows[other - 1][0], rows[other - 1][1]
        db.execute("UPDATE events SET seq = -1 WHERE id = ?", (ev_id,))
        db.execute("UPDATE events SET seq = ? WHERE id = ?", (seq, other_id))
        db.execute("UPDATE events SET seq = ? WHERE id = ?", (other_seq, ev_id))
    db.close()
    chains, anchors = _problems(path, template.ca_pem)
    assert chains or anchors, f"{op} at {chain} #{k} went unnoticed"
    assert chains, "a naive change must break the chain itself"


# ------------------------------------------------------------------ careful rewriting


careful_ops = st.one_of(
    st.tuples(st.just("edit"), st.text(min_size=1, max_size=8)),
    st.just(("delete",)),
    st.just(("insert",)),
    st.tuples(st.just("swap"), st.integers(1, EVENTS)),
    st.just(("truncate",)),
)


@_settings(80)
@given(chain=st.sampled_from(CHAINS), position=st.integers(1, EVENTS), op=careful_ops)
def test_careful_rewrite_of_anchored_events_is_caught_by_the_anchor(
    template: Template, copy_db: Any, chain: str, position: int, op: tuple[Any, ...]
) -> None:
    """Rewrite history from an anchored event on, re-hash to the end, move the head: the
    chain verifies perfectly, and only the timestamped Merkle root gives it away."""
    path = copy_db()
    db = _insider(path)
    rows = db.execute(
        "SELECT seq, at, kind, body FROM events WHERE chain = ? ORDER BY seq", (chain,)
    ).fetchall()

    events = [(at, kind, json.loads(body)["data"]) for _seq, at, kind, body in rows]
    k = position - 1  # 0-based, always within the anchored part
    if op[0] == "edit":
        at, kind, data = events[k]
        events[k] = (at, kind, {**data, "text": data["text"] + op[1]})
    elif op[0] == "delete":
        del events[k]
    elif op[0] == "insert":
        events.insert(k, (events[k][0], "note", {"n": -1, "text": "backdated"}))
    elif op[0] == "swap":
        j = (op[1] - 1) if op[1] - 1 != k else (k + 1) % EVENTS
        events[k], events[j] = events[j], events[k]
        k = min(k, j)
    else:  # truncate: cut the chain back to before this event
        events = events[:k]
    db.execute("DELETE FROM events WHERE chain = ? AND seq > ?", (chain, k))
    prev = GENESIS
    for seq, (at, kind, data) in enumerate(events, 1):
        body = event_body(chain, seq, at, kind, data)
        digest = event_hash(prev, body)
        if seq > k:
            db.execute(
                "INSERT INTO events (chain, seq, at, kind, body, prev_hash, hash) VALUES (?,?,?,?,?,?,?)",
                (chain, seq, at, kind, body.decode(), prev, digest),
            )
        prev = digest
    db.execute(
        "UPDATE chains SET head_seq = ?, head_hash = ? WHERE name = ?", (len(events), prev, chain)
    )
    db.close()
    chains, anchors = _problems(path, template.ca_pem)
    assert not chains, f"the rewrite was meant to be internally consistent: {chains}"
    assert any(chain in p for p in anchors), f"{op} at {chain} #{position} escaped the anchor"


# ------------------------------------------------------------------ bundles


@_settings(120)
@given(data=st.data())
def test_any_flipped_byte_in_a_bundle_member_is_detected(template: Template, data: Any) -> None:
    members = template.members
    name = data.draw(st.sampled_from(sorted(members)), label="member")
    index = data.draw(st.integers(0, len(members[name]) - 1), label="byte")
    mask = data.draw(st.integers(1, 255), label="xor")
    changed = bytearray(members[name])
    changed[index] ^= mask
    path = template.workdir / f"{uuid.uuid4().hex}.zip"
    path.write_bytes(zip_bytes(template.top, {**members, name: bytes(changed)}, T0))
    try:
        check = verify_bundle(path)
    finally:
        path.unlink()
    assert check.problem is not None, f"{name} byte {index} ^ {mask} went unnoticed"


@_settings(120)
@given(data=st.data())
def test_flipped_evidence_is_detected_even_with_the_checksums_rewritten(
    template: Template, data: Any
) -> None:
    members = template.members
    evidence = sorted(n for n in members if n == "events.jsonl" or n.startswith("blobs/"))
    name = data.draw(st.sampled_from(evidence), label="member")
    index = data.draw(st.integers(0, len(members[name]) - 1), label="byte")
    mask = data.draw(st.integers(1, 255), label="xor")
    changed = bytearray(members[name])
    changed[index] ^= mask
    check = verify_members(seal({**members, name: bytes(changed)}))
    assert check.problem is not None, f"{name} byte {index} ^ {mask} went unnoticed"


def test_template_bundle_is_sound(template: Template) -> None:
    """The properties above start from a bundle that verifies, timestamps and all."""
    check = verify_members(template.members, top=template.top)
    assert check.ok, check.problem
    assert check.events == EVENTS + TAIL and check.anchored_seq == EVENTS
    assert check.signatures_checked == 1 and check.blobs == EVENTS + TAIL
    top, members = read_bundle(_write(template))
    assert top == "OUT-2026-000001" and members == template.members
    assert hashlib.sha256(members["events.jsonl"]).hexdigest() in members["SHA256SUMS"].decode()


def _write(template: Template) -> Path:
    path = template.workdir / "template.zip"
    path.write_bytes(zip_bytes(template.top, template.members, T0))
    return path
