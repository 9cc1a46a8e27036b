"""token expiry sweep: when a token's expiry was processed, and an index of those still to process

Revision ID: 0006_token_expiry
Revises: 0005_bundles_referrals
Create Date: 2026-11-23

"""
from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = '0006_token_expiry'
down_revision = '0005_bundles_referrals'
branch_labels = None
depends_on = None

EXPIRY_PENDING = "expires_at IS NOT NULL AND expiry_processed_at IS NULL AND revoked_at IS NULL"


def upgrade():
    # A nullable column: added in place on both backends (no table rebuild on SQLite).
    op.add_column('access_tokens', sa.Column('expiry_processed_at', sa.DateTime(timezone=True), nullable=True))
    op.create_index('ix_access_tokens_expiry_pending', 'access_tokens', ['expires_at'], unique=False,
                    postgresql_where=sa.text(EXPIRY_PENDING), sqlite_where=sa.text(EXPIRY_PENDING))


def downgrade():
    op.drop_index('ix_access_tokens_expiry_pending', table_name='access_tokens')
    with op.batch_alter_table('access_tokens', schema=None, reflect_kwargs={'resolve_fks': False}) as batch_op:
        batch_op.drop_column('expiry_processed_at')
