"""Schema for contacts (see outreach/models_contacts.py): manual lookup tasks, the last outcome
of each party's sources, and HTTP validators (ETag / Last-Modified) that outlive a run.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-23
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from outreach.store import UTCDateTime

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "lookup_tasks",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column(
            "party_id",
            sa.Integer,
            sa.ForeignKey("parties.id", name="fk_lookup_tasks_party_id_parties"),
            nullable=False,
        ),
        sa.Column("source", sa.String(100), nullable=False),
        sa.Column("key", sa.String(200), nullable=False),
        sa.Column("title", sa.Text, nullable=False),
        sa.Column("url", sa.Text),
        sa.Column("advice", sa.Text),
        sa.Column("fields", sa.JSON, nullable=False),
        sa.Column("wants", sa.JSON, nullable=False),
        sa.Column("answered", sa.JSON, nullable=False),
        sa.Column("data", sa.JSON, nullable=False),
        sa.Column("state", sa.String(8), nullable=False),
        sa.Column("opened_at", UTCDateTime, nullable=False),
        sa.Column("closed_at", UTCDateTime),
        sa.Column("close_reason", sa.Text),
        sa.UniqueConstraint(
            "party_id", "source", "key", name="uq_lookup_tasks_party_id_source_key"
        ),
    )
    op.create_table(
        "source_status",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column(
            "party_id",
            sa.Integer,
            sa.ForeignKey("parties.id", name="fk_source_status_party_id_parties"),
            nullable=False,
        ),
        sa.Column("source", sa.String(100), nullable=False),
        sa.Column("outcome", sa.String(8), nullable=False),
        sa.Column("digest", sa.String(64), nullable=False),
        sa.Column("since", UTCDateTime, nullable=False),
        sa.Column("last_run", UTCDateTime, nullable=False),
        sa.Column("last_ok", UTCDateTime),
        sa.UniqueConstraint("party_id", "source", name="uq_source_status_party_id_source"),
    )
    op.create_table(
        "http_validators",
        sa.Column("url_sha256", sa.String(64), primary_key=True),
        sa.Column("url", sa.Text, nullable=False),
        sa.Column("etag", sa.Text),
        sa.Column("last_modified", sa.String(100)),
        sa.Column("headers", sa.JSON, nullable=False),
        sa.Column(
            "body_sha256",
            sa.String(64),
            sa.ForeignKey("blobs.sha256", name="fk_http_validators_body_sha256_blobs"),
            nullable=False,
        ),
        sa.Column("updated_at", UTCDateTime, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("http_validators")
    op.drop_table("source_status")
    op.drop_table("lookup_tasks")
