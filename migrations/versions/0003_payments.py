"""payments: top-ups and the ids of processed provider webhook events

Revision ID: 0003_payments
Revises: 0002_money
Create Date: 2026-11-22

"""
from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = '0003_payments'
down_revision = '0002_money'
branch_labels = None
depends_on = None


def upgrade():
    op.create_table('payments',
    sa.Column('user_id', sa.Uuid(), nullable=False),
    sa.Column('amount_znc', sa.Numeric(precision=12, scale=2), nullable=False),
    sa.Column('currency', sa.String(length=3), nullable=False),
    sa.Column('amount', sa.Numeric(precision=12, scale=2), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('provider', sa.String(length=32), nullable=False),
    sa.Column('provider_payment_id', sa.String(length=128), nullable=False),
    sa.Column('return_url', sa.String(length=2048), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('expires_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('completed_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('id', sa.Uuid(), nullable=False),
    sa.CheckConstraint("status IN ('pending', 'succeeded', 'canceled', 'expired')", name=op.f('ck_payments_status_known')),
    sa.CheckConstraint('amount > 0', name=op.f('ck_payments_amount_positive')),
    sa.CheckConstraint('amount_znc > 0', name=op.f('ck_payments_amount_znc_positive')),
    sa.ForeignKeyConstraint(['user_id'], ['users.id'], name=op.f('fk_payments_user_id_users')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_payments')),
    sa.UniqueConstraint('provider_payment_id', name=op.f('uq_payments_provider_payment_id'))
    )
    with op.batch_alter_table('payments', schema=None) as batch_op:
        batch_op.create_index('ix_payments_status_expires_at', ['status', 'expires_at'], unique=False)
        batch_op.create_index('ix_payments_user_id_created_at', ['user_id', 'created_at'], unique=False)

    op.create_table('payment_webhook_events',
    sa.Column('event_id', sa.String(length=255), nullable=False),
    sa.Column('payment_id', sa.Uuid(), nullable=False),
    sa.Column('event_type', sa.String(length=64), nullable=False),
    sa.Column('received_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['payment_id'], ['payments.id'], name=op.f('fk_payment_webhook_events_payment_id_payments')),
    sa.PrimaryKeyConstraint('event_id', name=op.f('pk_payment_webhook_events'))
    )
    with op.batch_alter_table('payment_webhook_events', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_payment_webhook_events_payment_id'), ['payment_id'], unique=False)



def downgrade():
    with op.batch_alter_table('payment_webhook_events', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_payment_webhook_events_payment_id'))

    op.drop_table('payment_webhook_events')
    with op.batch_alter_table('payments', schema=None) as batch_op:
        batch_op.drop_index('ix_payments_user_id_created_at')
        batch_op.drop_index('ix_payments_status_expires_at')

    op.drop_table('payments')
