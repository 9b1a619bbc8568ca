"""Schema for inbound (see outreach/models_inbound.py): every message fetched from the
answers mailbox, matched, held, assigned, dismissed or skipped; and an index on
attempts.message_id, which matching a reply to the notice it quotes looks up.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-23
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from outreach.store import UTCDateTime

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "inbound_messages",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column(
            "sha256",
            sa.String(64),
            sa.ForeignKey("blobs.sha256", name="fk_inbound_messages_sha256_blobs"),
            nullable=False,
        ),
        sa.Column("message_id", sa.String(400)),
        sa.Column("mailbox", sa.String(200), nullable=False),
        sa.Column("uidvalidity", sa.BigInteger),
        sa.Column("uid", sa.BigInteger),
        sa.Column("mailbox_date", UTCDateTime),
        sa.Column("received_at", UTCDateTime, nullable=False),
        sa.Column("sent_at", UTCDateTime),
        sa.Column("from_address", sa.String(400)),
        sa.Column("from_name", sa.String(400), nullable=False),
        sa.Column("subject", sa.Text, nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column(
            "case_id",
            sa.Integer,
            sa.ForeignKey("cases.id", name="fk_inbound_messages_case_id_cases"),
        ),
        sa.Column(
            "attempt_id",
            sa.Integer,
            sa.ForeignKey("attempts.id", name="fk_inbound_messages_attempt_id_attempts"),
        ),
        sa.Column("matched_by", sa.String(32)),
        sa.Column("note", sa.Text),
        sa.Column("details", sa.JSON, nullable=False),
        sa.Column("updated_at", UTCDateTime, nullable=False),
        sa.UniqueConstraint("sha256", name="uq_inbound_messages_sha256"),
    )
    op.create_index("ix_inbound_messages_message_id", "inbound_messages", ["message_id"])
    op.create_index("ix_inbound_messages_status", "inbound_messages", ["status"])
    op.create_index("ix_inbound_messages_case_id", "inbound_messages", ["case_id"])
    op.create_index("ix_attempts_message_id", "attempts", ["message_id"])


def downgrade() -> None:
    op.drop_index("ix_attempts_message_id", table_name="attempts")
    op.drop_index("ix_inbound_messages_case_id", table_name="inbound_messages")
    op.drop_index("ix_inbound_messages_status", table_name="inbound_messages")
    op.drop_index("ix_inbound_messages_message_id", table_name="inbound_messages")
    op.drop_table("inbound_messages")
