"""Schema for schedule (see outreach/models_schedule.py): when each party was last
discovered, and which notice routes ran out of usable contacts.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-23
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from outreach.store import UTCDateTime

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "party_discoveries",
        sa.Column(
            "party_id",
            sa.Integer,
            sa.ForeignKey("parties.id", name="fk_party_discoveries_party_id_parties"),
            nullable=False,
        ),
        sa.Column("discovered_at", UTCDateTime, nullable=False),
        sa.PrimaryKeyConstraint("party_id", name="pk_party_discoveries"),
    )
    op.create_table(
        "exhausted_routes",
        sa.Column(
            "notice_id",
            sa.Integer,
            sa.ForeignKey("notices.id", name="fk_exhausted_routes_notice_id_notices"),
            nullable=False,
        ),
        sa.Column("route", sa.String(16), nullable=False),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("created_at", UTCDateTime, nullable=False),
        sa.PrimaryKeyConstraint("notice_id", "route", name="pk_exhausted_routes"),
    )


def downgrade() -> None:
    op.drop_table("exhausted_routes")
    op.drop_table("party_discoveries")
