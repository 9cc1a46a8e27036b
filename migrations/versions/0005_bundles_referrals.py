"""bundles and referral bonuses; access tokens know their bundle and the purchase that paid for them

Revision ID: 0005_bundles_referrals
Revises: 0004_proxy
Create Date: 2026-11-22

"""
from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = '0005_bundles_referrals'
down_revision = '0004_proxy'
branch_labels = None
depends_on = None


def upgrade():
    op.create_table('bundles',
    sa.Column('name', sa.String(length=100), nullable=False),
    sa.Column('description', sa.String(length=1000), nullable=True),
    sa.Column('token_count', sa.Integer(), nullable=False),
    sa.Column('duration_hours', sa.Integer(), nullable=False),
    sa.Column('scope', sa.String(length=32), nullable=False),
    sa.Column('discount_percent', sa.Integer(), nullable=False),
    sa.Column('base_price', sa.Numeric(precision=12, scale=2), nullable=False),
    sa.Column('total_price', sa.Numeric(precision=12, scale=2), nullable=False),
    sa.Column('is_active', sa.Boolean(), nullable=False),
    sa.Column('id', sa.Uuid(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.CheckConstraint('discount_percent BETWEEN 0 AND 90', name=op.f('ck_bundles_discount_percent_range')),
    sa.CheckConstraint('token_count BETWEEN 1 AND 1000', name=op.f('ck_bundles_token_count_range')),
    sa.CheckConstraint('total_price >= 0 AND total_price <= base_price', name=op.f('ck_bundles_total_price_range')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_bundles')),
    sa.UniqueConstraint('name', name=op.f('uq_bundles_name'))
    )

    op.create_table('referral_bonuses',
    sa.Column('referrer_id', sa.Uuid(), nullable=False),
    sa.Column('referee_id', sa.Uuid(), nullable=False),
    sa.Column('purchase_transaction_id', sa.Uuid(), nullable=False),
    sa.Column('purchase_amount', sa.Numeric(precision=12, scale=2), nullable=False),
    sa.Column('bonus_amount', sa.Numeric(precision=12, scale=2), nullable=False),
    sa.Column('refunded_amount', sa.Numeric(precision=12, scale=2), nullable=False),
    sa.Column('clawed_back', sa.Numeric(precision=12, scale=2), nullable=False),
    sa.Column('clawback_shortfall', sa.Numeric(precision=12, scale=2), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('id', sa.Uuid(), nullable=False),
    sa.CheckConstraint('bonus_amount > 0 AND bonus_amount < purchase_amount', name=op.f('ck_referral_bonuses_bonus_range')),
    sa.CheckConstraint('clawed_back + clawback_shortfall <= bonus_amount', name=op.f('ck_referral_bonuses_clawback_within_bonus')),
    sa.CheckConstraint('clawed_back >= 0 AND clawback_shortfall >= 0', name=op.f('ck_referral_bonuses_clawback_non_negative')),
    sa.CheckConstraint('referrer_id <> referee_id', name=op.f('ck_referral_bonuses_not_self')),
    sa.CheckConstraint('refunded_amount >= 0 AND refunded_amount <= purchase_amount', name=op.f('ck_referral_bonuses_refunded_range')),
    sa.ForeignKeyConstraint(['purchase_transaction_id'], ['transactions.id'], name=op.f('fk_referral_bonuses_purchase_transaction_id_transactions')),
    sa.ForeignKeyConstraint(['referee_id'], ['users.id'], name=op.f('fk_referral_bonuses_referee_id_users')),
    sa.ForeignKeyConstraint(['referrer_id'], ['users.id'], name=op.f('fk_referral_bonuses_referrer_id_users')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_referral_bonuses')),
    sa.UniqueConstraint('purchase_transaction_id', name=op.f('uq_referral_bonuses_purchase_transaction_id')),
    sa.UniqueConstraint('referee_id', name=op.f('uq_referral_bonuses_referee_id'))
    )
    with op.batch_alter_table('referral_bonuses', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_referral_bonuses_referrer_id'), ['referrer_id'], unique=False)

    # On SQLite the batch recreates access_tokens (an existing table cannot gain a foreign key in place);
    # resolve_fks=False: no need to reflect the referenced tables (users has an expression index SQLite can't).
    with op.batch_alter_table('access_tokens', schema=None, reflect_kwargs={'resolve_fks': False}) as batch_op:
        batch_op.add_column(sa.Column('purchase_transaction_id', sa.Uuid(), nullable=True))
        batch_op.create_index(batch_op.f('ix_access_tokens_purchase_transaction_id'), ['purchase_transaction_id'], unique=False)
        batch_op.create_foreign_key(batch_op.f('fk_access_tokens_purchase_transaction_id_transactions'), 'transactions', ['purchase_transaction_id'], ['id'])
        batch_op.create_foreign_key(batch_op.f('fk_access_tokens_bundle_id_bundles'), 'bundles', ['bundle_id'], ['id'])


def downgrade():
    with op.batch_alter_table('access_tokens', schema=None, reflect_kwargs={'resolve_fks': False}) as batch_op:
        batch_op.drop_constraint(batch_op.f('fk_access_tokens_bundle_id_bundles'), type_='foreignkey')
        batch_op.drop_constraint(batch_op.f('fk_access_tokens_purchase_transaction_id_transactions'), type_='foreignkey')
        batch_op.drop_index(batch_op.f('ix_access_tokens_purchase_transaction_id'))
        batch_op.drop_column('purchase_transaction_id')

    with op.batch_alter_table('referral_bonuses', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_referral_bonuses_referrer_id'))

    op.drop_table('referral_bonuses')
    op.drop_table('bundles')
