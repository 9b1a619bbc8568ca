"""Migrations build the schema from empty on both engines; events refuse UPDATE/DELETE."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from outreach.migrate import current_revision, ensure_schema, head_revision
from outreach.proof import record_event
from outreach.store import Base, make_engine, session_factory


def test_migrations_create_schema_from_empty(db_url: str) -> None:
    engine = make_engine(db_url)
    try:
        assert current_revision(engine) is None
        assert ensure_schema(engine) is True
        assert current_revision(engine) == head_revision()
        assert ensure_schema(engine) is False  # idempotent
        tables = set(sa.inspect(engine).get_table_names())
        assert set(Base.metadata.tables) <= tables
    finally:
        engine.dispose()


def test_migrated_schema_matches_models(db_url: str) -> None:
    """No drift between the hand-written migration and the SQLAlchemy models."""
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    engine = make_engine(db_url)
    try:
        ensure_schema(engine)
        with engine.connect() as conn:
            diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
        assert diff == []
    finally:
        engine.dispose()


@pytest.mark.parametrize("statement", ["UPDATE events SET kind = 'edited'", "DELETE FROM events"])
def test_events_are_append_only(db_url: str, statement: str) -> None:
    engine = make_engine(db_url)
    try:
        ensure_schema(engine)
        with session_factory(engine).begin() as s:
            record_event(s, "case:T", "case_opened", {"x": 1})
        with pytest.raises(sa.exc.DBAPIError, match="append-only"), engine.begin() as conn:
            conn.execute(sa.text(statement))
        with engine.connect() as conn:
            assert conn.execute(sa.text("SELECT kind FROM events")).scalar_one() == "case_opened"
    finally:
        engine.dispose()


@pytest.mark.postgres
def test_events_refuse_truncate_on_postgres(pg_url: str) -> None:
    engine = make_engine(pg_url)
    try:
        ensure_schema(engine)
        with session_factory(engine).begin() as s:
            record_event(s, "case:T", "case_opened", {})
        with pytest.raises(sa.exc.DBAPIError, match="append-only"), engine.begin() as conn:
            conn.execute(sa.text("TRUNCATE events CASCADE"))
    finally:
        engine.dispose()


def test_sqlite_uses_wal(sqlite_url: str) -> None:
    engine = make_engine(sqlite_url)
    try:
        with engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
    finally:
        engine.dispose()
