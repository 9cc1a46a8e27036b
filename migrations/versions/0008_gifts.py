"""gifts: to whom and when a token was gifted, and an index of each user's gifts for the daily limit

Revision ID: 0008_gifts
Revises: 0007_notifications
Create Date: 2026-11-24

"""
from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = '0008_gifts'
down_revision = '0007_notifications'
branch_labels = None
depends_on = None

GIFTED = "gifted_at IS NOT NULL"


def upgrade():
    # Nullable columns: added in place on both backends (no table rebuild on SQLite).
    op.add_column('access_tokens', sa.Column('gifted_to_email', sa.String(length=255), nullable=True))
    op.add_column('access_tokens', sa.Column('gifted_at', sa.DateTime(timezone=True), nullable=True))
    op.create_index('ix_access_tokens_user_id_gifted_at', 'access_tokens', ['user_id', 'gifted_at'], unique=False,
                    postgresql_where=sa.text(GIFTED), sqlite_where=sa.text(GIFTED))


def downgrade():
    op.drop_index('ix_access_tokens_user_id_gifted_at', table_name='access_tokens')
    with op.batch_alter_table('access_tokens', schema=None, reflect_kwargs={'resolve_fks': False}) as batch_op:
        batch_op.drop_column('gifted_at')
        batch_op.drop_column('gifted_to_email')
