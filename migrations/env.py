"""Alembic environment: always driven from outreach.migrate with a live connection."""

from __future__ import annotations

from alembic import context

from outreach.store import Base

config = context.config
connection = config.attributes.get("connection")
if connection is None:  # pragma: no cover - only when someone runs plain `alembic`
    raise SystemExit("run migrations with `outreach db upgrade`, which supplies the database")

context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    render_as_batch=connection.dialect.name == "sqlite",
    compare_type=True,
)
with context.begin_transaction():
    context.run_migrations()
