"""retired secrets: the hash of the secret a gift replaced, so its cache invalidation can be repeated

Revision ID: 0009_retired_secrets
Revises: 0008_gifts
Create Date: 2026-12-05

"""
from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = '0009_retired_secrets'
down_revision = '0008_gifts'
branch_labels = None
depends_on = None


def upgrade():
    # A nullable column: added in place on both backends (no table rebuild on SQLite).
    op.add_column('access_tokens', sa.Column('retired_token_hash', sa.String(length=64), nullable=True))


def downgrade():
    with op.batch_alter_table('access_tokens', schema=None, reflect_kwargs={'resolve_fks': False}) as batch_op:
        batch_op.drop_column('retired_token_hash')
