"""Initial schema: merchants, terminals, parties, contact points with provenance, cases,
notices, attempts (the outbox), hash-chained append-only events, blobs, anchors.

Revision ID: 0001
Revises:
Create Date: 2026-11-23
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from outreach.store import UTCDateTime

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "merchants",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("key", sa.String(64), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("merchant_no", sa.String(32), nullable=False),
        sa.Column("contact_name", sa.String(100)),
        sa.Column("phone", sa.String(40)),
        sa.Column("email", sa.String(254)),
        sa.Column("address", sa.String(400)),
        sa.Column("active", sa.Boolean, nullable=False),
        sa.Column("created_at", UTCDateTime, nullable=False),
        sa.Column("updated_at", UTCDateTime, nullable=False),
        sa.UniqueConstraint("key", name="uq_merchants_key"),
    )
    op.create_table(
        "parties",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("key", sa.String(64), nullable=False),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("legal_name", sa.String(200)),
        sa.Column("uscc", sa.String(18)),
        sa.Column("licence_no", sa.String(14)),
        sa.Column("website", sa.String(400)),
        sa.Column("sources", sa.JSON, nullable=False),
        sa.Column("hints", sa.JSON, nullable=False),
        sa.Column("active", sa.Boolean, nullable=False),
        sa.Column("created_at", UTCDateTime, nullable=False),
        sa.Column("updated_at", UTCDateTime, nullable=False),
        sa.UniqueConstraint("key", name="uq_parties_key"),
    )
    op.create_table(
        "terminals",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column(
            "merchant_id",
            sa.Integer,
            sa.ForeignKey("merchants.id", name="fk_terminals_merchant_id_merchants"),
            nullable=False,
        ),
        sa.Column("terminal_no", sa.String(32), nullable=False),
        sa.Column("sn", sa.String(64)),
        sa.Column("model", sa.String(100)),
        sa.Column(
            "acquirer_id",
            sa.Integer,
            sa.ForeignKey("parties.id", name="fk_terminals_acquirer_id_parties"),
            nullable=False,
        ),
        sa.Column(
            "agent_id",
            sa.Integer,
            sa.ForeignKey("parties.id", name="fk_terminals_agent_id_parties"),
        ),
        sa.Column("active", sa.Boolean, nullable=False),
        sa.UniqueConstraint(
            "merchant_id", "terminal_no", name="uq_terminals_merchant_id_terminal_no"
        ),
    )
    op.create_table(
        "contact_points",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column(
            "party_id",
            sa.Integer,
            sa.ForeignKey("parties.id", name="fk_contact_points_party_id_parties"),
            nullable=False,
        ),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("value", sa.String(400), nullable=False),
        sa.Column("label", sa.String(200), nullable=False),
        sa.Column("status", sa.String(8), nullable=False),
        sa.Column("status_reason", sa.Text),
        sa.Column("confidence", sa.Float, nullable=False),
        sa.Column("listed", sa.Boolean, nullable=False),
        sa.Column("first_seen", UTCDateTime, nullable=False),
        sa.Column("last_seen", UTCDateTime, nullable=False),
        sa.UniqueConstraint(
            "party_id", "kind", "value", name="uq_contact_points_party_id_kind_value"
        ),
    )
    op.create_table(
        "provenance",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column(
            "contact_point_id",
            sa.Integer,
            sa.ForeignKey(
                "contact_points.id", name="fk_provenance_contact_point_id_contact_points"
            ),
            nullable=False,
        ),
        sa.Column("source", sa.String(100), nullable=False),
        sa.Column("url", sa.String(800), nullable=False),
        sa.Column("label", sa.String(200), nullable=False),
        sa.Column("confidence", sa.Float, nullable=False),
        sa.Column("evidence_sha256", sa.String(64)),
        sa.Column("as_of", sa.String(32)),
        sa.Column("first_seen", UTCDateTime, nullable=False),
        sa.Column("last_seen", UTCDateTime, nullable=False),
        sa.Column("listed", sa.Boolean, nullable=False),
        sa.UniqueConstraint(
            "contact_point_id", "source", "url", name="uq_provenance_contact_point_id_source_url"
        ),
    )
    op.create_table(
        "cases",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("key", sa.String(64), nullable=False),
        sa.Column("reference", sa.String(32), nullable=False),
        sa.Column(
            "merchant_id",
            sa.Integer,
            sa.ForeignKey("merchants.id", name="fk_cases_merchant_id_merchants"),
            nullable=False,
        ),
        sa.Column("goal", sa.String(32), nullable=False),
        sa.Column("plan", sa.String(64), nullable=False),
        sa.Column("language", sa.String(8), nullable=False),
        sa.Column("statement", sa.Text),
        sa.Column("deposit", sa.String(16)),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("opened_on", sa.Date, nullable=False),
        sa.Column("next_step", sa.Integer, nullable=False),
        sa.Column("last_step_on", sa.Date),
        sa.Column("active", sa.Boolean, nullable=False),
        sa.Column("created_at", UTCDateTime, nullable=False),
        sa.Column("updated_at", UTCDateTime, nullable=False),
        sa.UniqueConstraint("key", name="uq_cases_key"),
        sa.UniqueConstraint("reference", name="uq_cases_reference"),
    )
    op.create_table(
        "case_terminals",
        sa.Column(
            "case_id",
            sa.Integer,
            sa.ForeignKey("cases.id", name="fk_case_terminals_case_id_cases"),
            primary_key=True,
        ),
        sa.Column(
            "terminal_id",
            sa.Integer,
            sa.ForeignKey("terminals.id", name="fk_case_terminals_terminal_id_terminals"),
            primary_key=True,
        ),
    )
    op.create_table(
        "notices",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column(
            "case_id",
            sa.Integer,
            sa.ForeignKey("cases.id", name="fk_notices_case_id_cases"),
            nullable=False,
        ),
        sa.Column("step", sa.Integer, nullable=False),
        sa.Column(
            "party_id",
            sa.Integer,
            sa.ForeignKey("parties.id", name="fk_notices_party_id_parties"),
            nullable=False,
        ),
        sa.Column("template", sa.String(64), nullable=False),
        sa.Column("language", sa.String(8), nullable=False),
        sa.Column("subject", sa.String(400), nullable=False),
        sa.Column("body", sa.Text, nullable=False),
        sa.Column("html", sa.Text),
        sa.Column("sms_params", sa.JSON, nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("deadline", sa.Date, nullable=False),
        sa.Column("created_at", UTCDateTime, nullable=False),
        sa.UniqueConstraint("case_id", "step", "party_id", name="uq_notices_case_id_step_party_id"),
    )
    op.create_table(
        "attempts",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column(
            "notice_id",
            sa.Integer,
            sa.ForeignKey("notices.id", name="fk_attempts_notice_id_notices"),
            nullable=False,
        ),
        sa.Column(
            "contact_point_id",
            sa.Integer,
            sa.ForeignKey("contact_points.id", name="fk_attempts_contact_point_id_contact_points"),
            nullable=False,
        ),
        sa.Column("channel", sa.String(64), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("recipient", sa.String(400), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("tries", sa.Integer, nullable=False),
        sa.Column("claims", sa.Integer, nullable=False),
        sa.Column("next_try_at", UTCDateTime, nullable=False),
        sa.Column("lease_owner", sa.String(100)),
        sa.Column("lease_expires_at", UTCDateTime),
        sa.Column("idempotency_key", sa.String(64), nullable=False),
        sa.Column("message_id", sa.String(400)),
        sa.Column("provider_id", sa.String(200)),
        sa.Column("payload_sha256", sa.String(64)),
        sa.Column("last_error", sa.Text),
        sa.Column("created_at", UTCDateTime, nullable=False),
        sa.Column("updated_at", UTCDateTime, nullable=False),
        sa.UniqueConstraint(
            "notice_id", "contact_point_id", name="uq_attempts_notice_id_contact_point_id"
        ),
        sa.UniqueConstraint("idempotency_key", name="uq_attempts_idempotency_key"),
    )
    op.create_index("ix_attempts_due", "attempts", ["state", "next_try_at"])
    op.create_table(
        "chains",
        sa.Column("name", sa.String(100), primary_key=True),
        sa.Column("head_seq", sa.Integer, nullable=False),
        sa.Column("head_hash", sa.String(64), nullable=False),
        sa.Column("updated_at", UTCDateTime, nullable=False),
    )
    op.create_table(
        "events",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True),
        sa.Column("chain", sa.String(100), nullable=False),
        sa.Column("seq", sa.Integer, nullable=False),
        sa.Column("at", sa.String(32), nullable=False),
        sa.Column("kind", sa.String(40), nullable=False),
        sa.Column("case_id", sa.Integer, sa.ForeignKey("cases.id", name="fk_events_case_id_cases")),
        sa.Column(
            "attempt_id",
            sa.Integer,
            sa.ForeignKey("attempts.id", name="fk_events_attempt_id_attempts"),
        ),
        sa.Column("body", sa.Text, nullable=False),
        sa.Column("prev_hash", sa.String(64), nullable=False),
        sa.Column("hash", sa.String(64), nullable=False),
        sa.UniqueConstraint("chain", "seq", name="uq_events_chain_seq"),
    )
    op.create_index("ix_events_case_id", "events", ["case_id"])
    op.create_index("ix_events_attempt_id", "events", ["attempt_id"])
    op.create_table(
        "blobs",
        sa.Column("sha256", sa.String(64), primary_key=True),
        sa.Column("size", sa.Integer, nullable=False),
        sa.Column("media_type", sa.String(100), nullable=False),
        sa.Column("data", sa.LargeBinary, nullable=False),
        sa.Column("created_at", UTCDateTime, nullable=False),
    )
    op.create_table(
        "anchors",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("created_at", UTCDateTime, nullable=False),
        sa.Column("root", sa.String(64), nullable=False),
        sa.Column("leaves", sa.JSON, nullable=False),
        sa.Column("tsa_url", sa.String(400)),
        sa.Column("token", sa.LargeBinary),
        sa.Column("gen_time", UTCDateTime),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("error", sa.Text),
    )
    op.create_table(
        "sends",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("channel", sa.String(64), nullable=False),
        sa.Column("recipient", sa.String(400), nullable=False),
        sa.Column("at", UTCDateTime, nullable=False),
        sa.Column(
            "attempt_id",
            sa.Integer,
            sa.ForeignKey("attempts.id", name="fk_sends_attempt_id_attempts"),
            nullable=False,
        ),
    )
    op.create_index("ix_sends_channel_recipient_at", "sends", ["channel", "recipient", "at"])
    _append_only("events")


def _append_only(table: str) -> None:
    """Refuse UPDATE and DELETE (and TRUNCATE on PostgreSQL) on ``table``."""
    if op.get_bind().dialect.name == "sqlite":
        for action in ("UPDATE", "DELETE"):
            op.execute(
                f"CREATE TRIGGER {table}_no_{action.lower()} BEFORE {action} ON {table} "
                f"BEGIN SELECT RAISE(ABORT, '{table} are append-only: {action} refused'); END"
            )
        return
    op.execute(
        f"""
        CREATE FUNCTION {table}_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            RAISE EXCEPTION '{table} are append-only: % refused', TG_OP
                USING ERRCODE = 'insufficient_privilege';
        END $$
        """
    )
    op.execute(
        f"CREATE TRIGGER {table}_no_change BEFORE UPDATE OR DELETE ON {table} "
        f"FOR EACH ROW EXECUTE FUNCTION {table}_append_only()"
    )
    op.execute(
        f"CREATE TRIGGER {table}_no_truncate BEFORE TRUNCATE ON {table} "
        f"FOR EACH STATEMENT EXECUTE FUNCTION {table}_append_only()"
    )


def downgrade() -> None:
    if op.get_bind().dialect.name != "sqlite":
        op.execute("DROP TRIGGER IF EXISTS events_no_truncate ON events")
        op.execute("DROP TRIGGER IF EXISTS events_no_change ON events")
        op.execute("DROP FUNCTION IF EXISTS events_append_only()")
    for table in (
        "sends",
        "anchors",
        "blobs",
        "events",
        "chains",
        "attempts",
        "notices",
        "case_terminals",
        "cases",
        "provenance",
        "contact_points",
        "terminals",
        "parties",
        "merchants",
    ):
        op.drop_table(table)
