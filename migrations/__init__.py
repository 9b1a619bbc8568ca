"""Alembic migrations for outreach. Run through ``outreach db upgrade`` (or automatically)."""
