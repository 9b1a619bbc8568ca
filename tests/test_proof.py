"""The hash chain: deterministic, and any edit, insertion, deletion, reordering or truncation
is detected and named."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session, sessionmaker

from outreach.migrate import ensure_schema
from outreach.proof import (
    GENESIS,
    canonical_json,
    event_body,
    event_hash,
    record_event,
    verify_chain,
)
from outreach.store import Event, make_engine, session_factory


@pytest.fixture
def sessions(sqlite_url: str) -> Iterator[sessionmaker[Session]]:
    engine = make_engine(sqlite_url)
    ensure_schema(engine)
    yield session_factory(engine)
    engine.dispose()


def _fill(sessions: sessionmaker[Session], n: int = 5, chain: str = "case:OUT-2026-000001") -> None:
    with sessions.begin() as s:
        for i in range(n):
            record_event(s, chain, "note", {"i": i, "text": "商户 & <b>"})


def _unguarded(sessions: sessionmaker[Session], sql: str) -> None:
    """Tamper the way an attacker with database access would: drop the guards first."""
    with sessions.begin() as s:
        s.execute(sa.text("DROP TRIGGER IF EXISTS events_no_update"))
        s.execute(sa.text("DROP TRIGGER IF EXISTS events_no_delete"))
        s.connection().exec_driver_sql(sql)


def test_canonical_json_is_deterministic_and_keeps_chinese() -> None:
    assert canonical_json({"b": 1, "a": "商户"}) == '{"a":"商户","b":1}'.encode()
    with pytest.raises(TypeError):
        canonical_json({"x": object()})


def test_hash_rule_matches_the_spec() -> None:
    body = event_body("case:X", 1, "2026-11-23T03:00:00.000000Z", "case_opened", {"a": 1})
    assert (
        body
        == b'{"at":"2026-11-23T03:00:00.000000Z","chain":"case:X","data":{"a":1},"kind":"case_opened","seq":1,"v":1}'
    )
    assert event_hash(GENESIS, body) == hashlib.sha256(bytes(32) + body).hexdigest()


def test_floats_are_refused(sessions: sessionmaker[Session]) -> None:
    with pytest.raises(TypeError, match="floats"), sessions.begin() as s:
        record_event(s, "c", "k", {"x": 0.1})


def test_intact_chain_verifies(sessions: sessionmaker[Session]) -> None:
    _fill(sessions)
    with sessions() as s:
        report = verify_chain(s, "case:OUT-2026-000001")
    assert report.problem is None and report.events == 5


@pytest.mark.parametrize(
    ("sql", "seq", "words"),
    [
        ("UPDATE events SET body = replace(body, '\"i\":2', '\"i\":9') WHERE seq = 3", 3, "edited"),
        ("UPDATE events SET kind = 'other' WHERE seq = 2", 2, "indexed columns disagree"),
        ("DELETE FROM events WHERE seq = 2", 3, "sequence jumps from 1 to 3"),
        ("UPDATE events SET seq = 10 + seq WHERE seq IN (2, 3)", 4, "sequence jumps"),
    ],
    ids=["edited-body", "edited-column", "deleted", "reordered"],
)
def test_tampering_is_detected_and_named(
    sessions: sessionmaker[Session], sql: str, seq: int, words: str
) -> None:
    _fill(sessions)
    _unguarded(sessions, sql)
    with sessions() as s:
        report = verify_chain(s, "case:OUT-2026-000001")
    assert report.problem is not None
    assert report.problem.seq == seq
    assert words in report.problem.message


def test_inserted_event_is_detected(sessions: sessionmaker[Session]) -> None:
    _fill(sessions)
    # A forged event re-chained from #2 onwards still fails: #3's prev_hash no longer matches.
    with sessions() as s:
        ev2 = s.scalars(sa.select(Event).where(Event.seq == 2)).one()
    _unguarded(sessions, "UPDATE events SET seq = seq + 100 WHERE seq >= 3")
    body = event_body(ev2.chain, 3, ev2.at, "forged", {"i": "x"})
    with sessions.begin() as s:
        s.add(
            Event(
                chain=ev2.chain,
                seq=3,
                at=ev2.at,
                kind="forged",
                body=body.decode(),
                prev_hash=ev2.hash,
                hash=event_hash(ev2.hash, body),
            )
        )
    with sessions() as s:
        report = verify_chain(s, ev2.chain)
    assert report.problem is not None and report.problem.seq == 103


def test_truncation_is_detected_against_the_recorded_head(sessions: sessionmaker[Session]) -> None:
    _fill(sessions)
    _unguarded(sessions, "DELETE FROM events WHERE seq = 5")
    with sessions() as s:
        report = verify_chain(s, "case:OUT-2026-000001")
    assert report.problem is not None
    assert "truncated" in report.problem.message


def test_chains_are_independent(sessions: sessionmaker[Session]) -> None:
    _fill(sessions, 3, "case:A")
    _fill(sessions, 2, "case:B")
    with sessions() as s:
        a, b = verify_chain(s, "case:A"), verify_chain(s, "case:B")
    assert (a.events, b.events) == (3, 2)
    assert a.problem is None and b.problem is None
