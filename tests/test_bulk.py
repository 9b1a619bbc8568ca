"""outreach.bulk: rows written around SQLAlchemy's per-row work read back exactly as if written
through it, on both engines (the datetime columns are where a difference would show)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session, sessionmaker

from outreach.bulk import executemany, insert_ignoring_conflicts, table_of
from outreach.migrate import ensure_schema
from outreach.store import Blob, Chain, make_engine, session_factory


@pytest.fixture
def sessions(db_url: str) -> Iterator[sessionmaker[Session]]:
    engine = make_engine(db_url)
    ensure_schema(engine)
    yield session_factory(engine)
    engine.dispose()


_CHAINS = sa.insert(table_of(Chain))


def _read(s: Session, prefix: str) -> list[tuple[str, int, datetime]]:
    rows = s.execute(
        sa.select(Chain.name, Chain.head_seq, Chain.updated_at)
        .where(Chain.name.startswith(prefix))
        .order_by(Chain.name)
    )
    return [(name[len(prefix) :], seq, at) for name, seq, at in rows]


def test_insert_and_update_match_core(sessions: sessionmaker[Session]) -> None:
    moments = [
        datetime(2026, 1, 1, 0, 0, tzinfo=UTC),  # no microseconds: the format must still agree
        datetime(2026, 3, 2, 9, 30, 15, 123456, tzinfo=UTC),
        datetime(2026, 3, 2, 17, 30, 15, 5, tzinfo=timezone(timedelta(hours=8))),
    ]
    rows = [
        {"name": f"case:{i}", "head_seq": i, "head_hash": "0" * 64, "updated_at": at}
        for i, at in enumerate(moments)
    ]
    with sessions.begin() as s:
        executemany(s, _CHAINS, [{**r, "name": "fast:" + r["name"]} for r in rows])
        s.execute(_CHAINS, [{**r, "name": "core:" + r["name"]} for r in rows])
    with sessions() as s:
        fast, core = _read(s, "fast:"), _read(s, "core:")
        assert fast == core
        assert [at for _, _, at in fast] == moments
        # the stored form too, byte for byte (SQLite keeps datetimes as text)
        stored = {
            name: text
            for name, text in s.execute(sa.select(Chain.name, sa.cast(Chain.updated_at, sa.String)))
        }
        for r in rows:
            assert stored["fast:" + r["name"]] == stored["core:" + r["name"]]
        # range comparisons see the same values: what leases and rate limits rely on
        since = moments[0] + timedelta(microseconds=1)
        for prefix in ("fast:", "core:"):
            n = s.scalar(
                sa.select(sa.func.count()).where(
                    Chain.name.startswith(prefix), Chain.updated_at >= since
                )
            )
            assert n == 2
    later = datetime(2026, 4, 1, 12, 0, tzinfo=UTC)
    update = (
        sa.update(table_of(Chain))
        .where(table_of(Chain).c.name == sa.bindparam("b_name"))
        .values(updated_at=sa.bindparam("b_at"), head_seq=sa.bindparam("b_seq"))
    )
    with sessions.begin() as s:
        executemany(
            s, update, [{"b_name": "fast:" + r["name"], "b_at": later, "b_seq": 7} for r in rows]
        )
    with sessions() as s:
        assert {(seq, at) for _, seq, at in _read(s, "fast:")} == {(7, later)}


def test_conflicting_rows_are_skipped(sessions: sessionmaker[Session]) -> None:
    now = datetime(2026, 3, 2, tzinfo=UTC)
    row = {"sha256": "ab" * 32, "size": 3, "media_type": "text/plain", "data": b"abc"}
    with sessions.begin() as s:
        stmt = insert_ignoring_conflicts(s, table_of(Blob))
        executemany(s, stmt, [{**row, "created_at": now}])
        executemany(s, stmt, [{**row, "data": b"xyz", "created_at": now}])
    with sessions() as s:
        assert s.scalars(sa.select(Blob.data)).all() == [b"abc"]


def test_nothing_to_write_runs_nothing(sessions: sessionmaker[Session]) -> None:
    with sessions.begin() as s:
        executemany(s, _CHAINS, [])
        assert s.scalar(sa.select(sa.func.count()).select_from(Chain)) == 0


def test_many_rows_in_chunks_and_repeated_keys(
    sessions: sessionmaker[Session], monkeypatch: pytest.MonkeyPatch
) -> None:
    """More rows than one statement may carry go in several; an UPDATE naming a key twice
    falls back to one statement per row, so the later row wins as it would in order."""
    import outreach.bulk as bulk

    monkeypatch.setattr(bulk, "_SQLITE_MAX_PARAMS", 40)  # 10 rows of 4 per statement
    at = datetime(2026, 5, 1, 8, 0, tzinfo=UTC)
    rows = [
        {"name": f"n:{i:03d}", "head_seq": i, "head_hash": f"{i:064x}", "updated_at": at}
        for i in range(95)
    ]
    update = (
        sa.update(table_of(Chain))
        .where(table_of(Chain).c.name == sa.bindparam("b_name"))
        .values(head_seq=sa.bindparam("b_seq"))
    )
    with sessions.begin() as s:
        executemany(s, _CHAINS, rows)
        executemany(
            s, update, [{"b_name": r["name"], "b_seq": 1000 + i} for i, r in enumerate(rows)]
        )
        executemany(s, update, [{"b_name": "n:000", "b_seq": 1}, {"b_name": "n:000", "b_seq": 2}])
    with sessions() as s:
        got = dict(s.execute(sa.select(Chain.name, Chain.head_seq)).all())
    assert len(got) == 95
    assert got["n:000"] == 2 and got["n:094"] == 1094
