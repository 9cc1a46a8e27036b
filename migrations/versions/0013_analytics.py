"""analytics: daily rollups of proxy usage (per user) and of the ledger (per type), built from the stored data

Revision ID: 0013_analytics
Revises: 0012_webhook_subscriptions
Create Date: 2026-12-05

"""
from datetime import UTC, date, datetime, timedelta

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision = '0013_analytics'
down_revision = '0012_webhook_subscriptions'
branch_labels = None
depends_on = None

CLOSE_AFTER = timedelta(minutes=5)  # as analytics/rollups.py: a day is closed once it is over by this much


def _utc_day(column: str, dialect: str) -> str:
    if dialect == "postgresql":
        return f"CAST(timezone('UTC', {column}) AS DATE)"
    return f"date({column})"


def _as_date(value) -> date:
    return value if isinstance(value, date) else date.fromisoformat(str(value))


def upgrade():
    op.create_table(
        'usage_daily',
        sa.Column('user_id', sa.Uuid(), nullable=False),
        sa.Column('day', sa.Date(), nullable=False),
        sa.Column('requests', sa.BigInteger(), nullable=False),
        sa.Column('bytes_in', sa.BigInteger(), nullable=False),
        sa.Column('bytes_out', sa.BigInteger(), nullable=False),
        sa.Column('sessions', sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(['user_id'], ['users.id'], name=op.f('fk_usage_daily_user_id_users')),
        sa.PrimaryKeyConstraint('user_id', 'day', name=op.f('pk_usage_daily')),
    )
    op.create_index('ix_usage_daily_day', 'usage_daily', ['day'], unique=False)
    op.create_table(
        'usage_last_active',
        sa.Column('user_id', sa.Uuid(), nullable=False),
        sa.Column('day', sa.Date(), nullable=False),
        sa.ForeignKeyConstraint(['user_id'], ['users.id'], name=op.f('fk_usage_last_active_user_id_users')),
        sa.PrimaryKeyConstraint('user_id', name=op.f('pk_usage_last_active')),
    )
    op.create_index(op.f('ix_usage_last_active_day'), 'usage_last_active', ['day'], unique=False)
    op.create_table(
        'ledger_daily',
        sa.Column('day', sa.Date(), nullable=False),
        sa.Column('transaction_type', sa.String(length=32), nullable=False),
        sa.Column('reference_type', sa.String(length=32), nullable=False),
        sa.Column('entries', sa.Integer(), nullable=False),
        sa.Column('amount', sa.Numeric(precision=18, scale=2), nullable=False),
        sa.PrimaryKeyConstraint('day', 'transaction_type', 'reference_type', name=op.f('pk_ledger_daily')),
    )
    op.create_table(
        'analytics_closed_days',
        sa.Column('day', sa.Date(), nullable=False),
        sa.Column('new_users', sa.Integer(), nullable=False),
        sa.Column('dau', sa.Integer(), nullable=False),
        sa.Column('requests', sa.BigInteger(), nullable=False),
        sa.Column('bytes', sa.BigInteger(), nullable=False),
        sa.Column('closed_at', sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint('day', name=op.f('pk_analytics_closed_days')),
    )
    op.create_index('ix_transactions_created_at', 'transactions', ['created_at'], unique=False)
    op.create_index('ix_users_created_at', 'users', ['created_at'], unique=False)
    _build_rollups()


def _build_rollups():
    """The rollups of the data already stored: each session's counters on the day it started, each user's last
    active day; the ledger, sign-ups and everyone's usage of every day that is over."""
    bind = op.get_bind()
    dialect = bind.dialect.name
    session_day = _utc_day('started_at', dialect)
    bind.execute(sa.text(
        f"INSERT INTO usage_daily (user_id, day, requests, bytes_in, bytes_out, sessions) "
        f"SELECT user_id, {session_day}, SUM(request_count), SUM(bytes_in), SUM(bytes_out), COUNT(*) "
        f"FROM proxy_sessions GROUP BY user_id, {session_day}"
    ))
    bind.execute(sa.text(
        "INSERT INTO usage_last_active (user_id, day) "
        "SELECT user_id, MAX(day) FROM usage_daily WHERE requests > 0 GROUP BY user_id"
    ))

    moment = datetime.now(UTC)
    last = (moment - CLOSE_AFTER).date() - timedelta(days=1)
    day_created = _utc_day('created_at', dialect)
    first_days = [_as_date(value) for value in (
        bind.execute(sa.text(f"SELECT MIN({day_created}) FROM users")).scalar(),
        bind.execute(sa.text(f"SELECT MIN({day_created}) FROM transactions")).scalar(),
    ) if value is not None]
    if not first_days or min(first_days) > last:
        return
    first = min(first_days)
    until = sa.bindparam('until', last + timedelta(days=1), type_=sa.Date())
    new_users = {
        _as_date(day): count for day, count in bind.execute(
            sa.text(f"SELECT {day_created}, COUNT(*) FROM users WHERE {day_created} < :until GROUP BY {day_created}")
            .bindparams(until)
        )
    }
    usage = {
        _as_date(day): (dau, requests, size) for day, dau, requests, size in bind.execute(
            sa.text("SELECT day, SUM(CASE WHEN requests > 0 THEN 1 ELSE 0 END), SUM(requests), "
                    "SUM(bytes_in + bytes_out) FROM usage_daily WHERE day < :until GROUP BY day").bindparams(until)
        )
    }
    closed = sa.table('analytics_closed_days', sa.column('day', sa.Date()), sa.column('new_users', sa.Integer()),
                      sa.column('dau', sa.Integer()), sa.column('requests', sa.BigInteger()),
                      sa.column('bytes', sa.BigInteger()), sa.column('closed_at', sa.DateTime(timezone=True)))
    rows, day = [], first
    while day <= last:
        dau, requests, size = usage.get(day, (0, 0, 0))
        rows.append({'day': day, 'new_users': new_users.get(day, 0), 'dau': dau, 'requests': requests,
                     'bytes': size, 'closed_at': moment})
        day += timedelta(days=1)
    op.bulk_insert(closed, rows)
    bind.execute(sa.text(
        f"INSERT INTO ledger_daily (day, transaction_type, reference_type, entries, amount) "
        f"SELECT {day_created}, transaction_type, COALESCE(reference_type, ''), COUNT(*), SUM(amount) "
        f"FROM transactions WHERE {day_created} < :until "
        f"GROUP BY {day_created}, transaction_type, COALESCE(reference_type, '')"
    ).bindparams(until))


def downgrade():
    op.drop_index('ix_users_created_at', table_name='users')
    op.drop_index('ix_transactions_created_at', table_name='transactions')
    op.drop_table('analytics_closed_days')
    op.drop_table('ledger_daily')
    op.drop_index(op.f('ix_usage_last_active_day'), table_name='usage_last_active')
    op.drop_table('usage_last_active')
    op.drop_index('ix_usage_daily_day', table_name='usage_daily')
    op.drop_table('usage_daily')
