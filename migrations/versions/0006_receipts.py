"""Schema for receipts (see outreach/models_receipts.py): one row per SMS delivery report,
unique by its dedupe key, matched to an attempt or waiting for one.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-23
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from outreach.store import UTCDateTime

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "receipts",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("dedupe_key", sa.String(64), nullable=False),
        sa.Column("provider", sa.String(16), nullable=False),
        sa.Column("via", sa.String(8), nullable=False),
        sa.Column("channel", sa.String(64)),
        sa.Column("outcome", sa.String(16), nullable=False),
        sa.Column("stage", sa.String(32), nullable=False),
        sa.Column("provider_id", sa.String(200)),
        sa.Column("out_id", sa.String(200)),
        sa.Column("recipient", sa.String(64)),
        sa.Column("code", sa.String(64)),
        sa.Column("message", sa.Text),
        sa.Column("reported_at", sa.String(40)),
        sa.Column("permanent", sa.Boolean, nullable=False),
        sa.Column("body_sha256", sa.String(64), nullable=False),
        sa.Column("item", sa.Integer, nullable=False),
        sa.Column("received_at", UTCDateTime, nullable=False),
        sa.Column(
            "attempt_id",
            sa.Integer,
            sa.ForeignKey("attempts.id", name="fk_receipts_attempt_id_attempts"),
        ),
        sa.Column("matched_by", sa.String(16)),
        sa.Column("matched_at", UTCDateTime),
        sa.UniqueConstraint("dedupe_key", name="uq_receipts_dedupe_key"),
    )
    op.create_index("ix_receipts_provider_id", "receipts", ["provider_id"])
    op.create_index("ix_receipts_attempt_id", "receipts", ["attempt_id"])


def downgrade() -> None:
    op.drop_index("ix_receipts_attempt_id", table_name="receipts")
    op.drop_index("ix_receipts_provider_id", table_name="receipts")
    op.drop_table("receipts")
