"""Schema migrations, run programmatically so a fresh machine needs no alembic.ini.

``ensure_schema`` is called on first use by every command that touches the database, so a
user never has to remember ``db upgrade``; the explicit command exists for operators who want
to migrate before deploying new workers.
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config as AlembicConfig
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import text
from sqlalchemy.engine import Engine

import migrations


def _alembic_config() -> AlembicConfig:
    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(Path(migrations.__file__).parent))
    return cfg


def head_revision() -> str | None:
    return ScriptDirectory.from_config(_alembic_config()).get_current_head()


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


# pg_advisory_xact_lock key for migrations: "migrate" in ASCII.
MIGRATION_LOCK_KEY = 0x6D696772617465


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Migrate in one transaction. On PostgreSQL, workers started together on a new
    database take turns (an advisory lock), and the ones that waited find nothing to do."""
    cfg = _alembic_config()
    with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK_KEY})
            if revision == "head" and (
                MigrationContext.configure(conn).get_current_revision() == head_revision()
            ):
                return
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, revision)


def ensure_schema(engine: Engine) -> bool:
    """Upgrade to head when needed. Returns True when something was applied."""
    if current_revision(engine) == head_revision():
        return False
    upgrade(engine)
    return True
