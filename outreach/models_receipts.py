"""Database models: receipts. Imported by :mod:`outreach.store` so Alembic and tests see them."""

from __future__ import annotations
