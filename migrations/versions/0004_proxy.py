"""proxy: proxy sessions (one active device per token)

Revision ID: 0004_proxy
Revises: 0003_payments
Create Date: 2026-11-22
"""
import sqlalchemy as sa
from alembic import op

revision = "0004_proxy"
down_revision = "0003_payments"
branch_labels = None
depends_on = None


def upgrade():
    op.create_table(
        "proxy_sessions",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("token_id", sa.Uuid(), nullable=False),
        sa.Column("user_id", sa.Uuid(), nullable=False),
        sa.Column("device_id", sa.String(length=255), nullable=False),
        sa.Column("ip_address", sa.String(length=64), nullable=True),
        sa.Column("user_agent", sa.String(length=512), nullable=True),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_activity", sa.DateTime(timezone=True), nullable=False),
        sa.Column("ended_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("request_count", sa.BigInteger(), nullable=False),
        sa.Column("bytes_in", sa.BigInteger(), nullable=False),
        sa.Column("bytes_out", sa.BigInteger(), nullable=False),
        sa.Column("is_active", sa.Boolean(), nullable=False),
        sa.ForeignKeyConstraint(["token_id"], ["access_tokens.id"], name=op.f("fk_proxy_sessions_token_id_access_tokens")),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], name=op.f("fk_proxy_sessions_user_id_users")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_proxy_sessions")),
    )
    op.create_index("ix_proxy_sessions_user_id_started_at", "proxy_sessions", ["user_id", "started_at"])
    op.create_index("uq_proxy_sessions_active_token", "proxy_sessions", ["token_id"], unique=True,
                    postgresql_where=sa.text("is_active"), sqlite_where=sa.text("is_active"))


def downgrade():
    op.drop_index("uq_proxy_sessions_active_token", table_name="proxy_sessions")
    op.drop_index("ix_proxy_sessions_user_id_started_at", table_name="proxy_sessions")
    op.drop_table("proxy_sessions")
