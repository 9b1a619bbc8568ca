"""Shared fixtures: databases (SQLite always, PostgreSQL where a server answers), configs.

PostgreSQL tests skip with a clear reason when no server answers at OUTREACH_TEST_PG
(default postgresql://postgres@127.0.0.1:5432/postgres). ``.ci/run`` sets
OUTREACH_REQUIRE_PG=1 when a server is up, which turns that skip into a failure, so the
PostgreSQL tests can never silently stop running in CI.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

ROOT = Path(__file__).resolve().parent.parent
PG_ADMIN = os.environ.get("OUTREACH_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")


def _pg_admin_engine() -> sa.Engine | None:
    url = PG_ADMIN.replace("postgresql://", "postgresql+psycopg://", 1)
    engine = sa.create_engine(
        url, isolation_level="AUTOCOMMIT", connect_args={"connect_timeout": 3}
    )
    try:
        with engine.connect() as conn:
            conn.execute(sa.text("select 1"))
    except Exception as exc:  # noqa: BLE001
        engine.dispose()
        if os.environ.get("OUTREACH_REQUIRE_PG") == "1":
            pytest.fail(
                f"OUTREACH_REQUIRE_PG=1 but PostgreSQL at {PG_ADMIN} does not answer: {exc}"
            )
        return None
    return engine


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A fresh, empty PostgreSQL database for one test, dropped afterwards."""
    admin = _pg_admin_engine()
    if admin is None:
        pytest.skip(f"no PostgreSQL server answers at {PG_ADMIN} (set OUTREACH_TEST_PG)")
    name = f"outreach_test_{uuid.uuid4().hex[:12]}"
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    base = PG_ADMIN.rsplit("/", 1)[0]
    try:
        yield f"{base}/{name}"
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'outreach.db'}"


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Run a test on both engines."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'outreach.db'}"
    return str(request.getfixturevalue("pg_url"))


@pytest.fixture
def example_config(tmp_path: Path) -> Path:
    """config.example.toml copied into a fresh folder (its var/ lands there)."""
    dest = tmp_path / "outreach.toml"
    shutil.copy(ROOT / "config.example.toml", dest)
    return dest
