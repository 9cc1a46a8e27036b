"""payment providers: the checkout URL a provider returned, and the index the reconciliation job walks

Revision ID: 0010_payment_providers
Revises: 0009_retired_secrets
Create Date: 2026-12-05

"""
from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = '0010_payment_providers'
down_revision = '0009_retired_secrets'
branch_labels = None
depends_on = None

PENDING = "status = 'pending'"


def upgrade():
    # Nullable: rows of the mock provider from before keep computing their URL (our own checkout page).
    op.add_column('payments', sa.Column('payment_url', sa.String(length=2048), nullable=True))
    op.create_index('ix_payments_pending_provider_created_at', 'payments', ['provider', 'created_at'], unique=False,
                    postgresql_where=sa.text(PENDING), sqlite_where=sa.text(PENDING))


def downgrade():
    op.drop_index('ix_payments_pending_provider_created_at', table_name='payments')
    with op.batch_alter_table('payments', schema=None, reflect_kwargs={'resolve_fks': False}) as batch_op:
        batch_op.drop_column('payment_url')
