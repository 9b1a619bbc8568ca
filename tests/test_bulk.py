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
