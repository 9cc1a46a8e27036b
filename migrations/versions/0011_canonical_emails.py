"""canonical e-mails: every stored address in the normalised form registration and login now compare

Revision ID: 0011_canonical_emails
Revises: 0010_payment_providers
Create Date: 2026-12-01

Addresses used to be stored stripped and lower-cased only, so `x@ｅｘａｍｐｌｅ.com` could sit next to
`x@example.com`. Each row now gets its canonical form (accounts/emails.py), unless that would collide:
when several accounts share one canonical form, the one already stored in that form keeps it, else the
oldest account gets it, and the others keep their stored address unchanged and are logged here for an
operator (they can no longer sign in by e-mail: login looks the canonical form up, which belongs to the
other account). Addresses the validator refuses today are left as they are. The downgrade changes nothing:
the canonical form is as good a spelling of each address as the old one.
"""
import logging

import sqlalchemy as sa
from alembic import op

from zenzefi_backend.accounts.emails import InvalidEmail, canonical_email

# revision identifiers, used by Alembic.
revision = '0011_canonical_emails'
down_revision = '0010_payment_providers'
branch_labels = None
depends_on = None

log = logging.getLogger("alembic.runtime.migration")

users = sa.table("users", sa.column("id", sa.Uuid), sa.column("email", sa.String),
                 sa.column("created_at", sa.DateTime(timezone=True)))


def _canonical(email):
    try:
        return canonical_email(email)
    except InvalidEmail:
        return None


def upgrade():
    connection = op.get_bind()
    rows = connection.execute(sa.select(users.c.id, users.c.email).order_by(users.c.created_at, users.c.id)).all()
    groups = {}
    for user_id, email in rows:
        target = _canonical(email)
        if target is not None:
            groups.setdefault(target, []).append((user_id, email))
    for target, members in groups.items():
        holders = [member for member in members if member[1] == target]
        winner = holders[0] if holders else members[0]  # rows are oldest first
        if winner[1] != target:
            connection.execute(sa.update(users).where(users.c.id == winner[0]).values(email=target))
        for user_id, email in members:
            if user_id != winner[0]:
                log.warning("user %s keeps the e-mail %r: its normalised form %r belongs to user %s; resolve by hand",
                            user_id, email, target, winner[0])


def downgrade():
    pass
