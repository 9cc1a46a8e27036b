"""webhook subscriptions: when an endpoint subscribed to each of its event types

Revision ID: 0012_webhook_subscriptions
Revises: 0011_canonical_emails
Create Date: 2026-12-01

An endpoint receives only events that happened after it subscribed to their type. Existing endpoints count
as subscribed to their current types since they were created (their history of changes was not kept).
"""
from datetime import UTC

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision = '0012_webhook_subscriptions'
down_revision = '0011_canonical_emails'
branch_labels = None
depends_on = None

endpoints = sa.table("webhook_endpoints", sa.column("id", sa.Uuid), sa.column("events", sa.JSON),
                     sa.column("subscribed_at", sa.JSON), sa.column("created_at", sa.DateTime(timezone=True)))


def upgrade():
    # NOT NULL with a default: added in place on both backends (no table rebuild on SQLite, whose rebuild of a
    # table that webhook_deliveries references ON DELETE CASCADE is best avoided).
    op.add_column('webhook_endpoints', sa.Column('subscribed_at', sa.JSON(), nullable=False,
                                                 server_default=sa.text("'{}'")))
    connection = op.get_bind()
    for endpoint_id, events, created_at in connection.execute(
            sa.select(endpoints.c.id, endpoints.c.events, endpoints.c.created_at)).all():
        since = (created_at if created_at.tzinfo else created_at.replace(tzinfo=UTC)).astimezone(UTC).isoformat()
        connection.execute(sa.update(endpoints).where(endpoints.c.id == endpoint_id)
                           .values(subscribed_at={event_type: since for event_type in events or []}))


def downgrade():
    with op.batch_alter_table('webhook_endpoints', schema=None, reflect_kwargs={'resolve_fks': False}) as batch_op:
        batch_op.drop_column('subscribed_at')
