"""The ledger: the only code that changes a balance.

Every change is one conditional `UPDATE … RETURNING` (atomic on PostgreSQL and SQLite alike: no
read-then-write window, never below zero) plus its `transactions` row, in the caller's DB transaction.
Everything here is a piece of someone else's transaction: the caller commits (or rolls back); nothing here
commits or rolls back. (The superuser's balance correction, which commits, is `admin.services.adjust_balance`.)
A debit that takes the balance below the low-balance threshold writes `balance.low` here, whoever debits.
"""
from __future__ import annotations

import uuid
from decimal import Decimal
from typing import Any

import sqlalchemy as sa

from ..accounts.models import User
from ..database import db
from ..errors import Conflict, PaymentRequired
from ..money import format_amount, quantize, quantized_in_sql
from ..notifications.outbox import emit
from ..pagination import paginate
from .models import TRANSACTION_TYPES, Transaction

LOW_BALANCE_THRESHOLD = Decimal("10.00")
MAX_BALANCE = Decimal("9999999999.99")  # what Numeric(12, 2) can hold


class InsufficientBalance(PaymentRequired):
    def __init__(self, required: Decimal, available: Decimal):
        super().__init__(
            f"Insufficient balance: {format_amount(required)} ZNC required, {format_amount(available)} available.",
            required=format_amount(required),
            available=format_amount(available),
        )


class BalanceWouldGoNegative(Conflict):
    message = "The balance cannot go below zero."


class BalanceLimitExceeded(Conflict):
    message = "The balance would exceed the largest amount an account can hold."


def lock_user(user_id: uuid.UUID) -> User:
    """`SELECT … FOR UPDATE` of the user row: serialises every money operation of one user."""
    return db.session.scalars(
        sa.select(User).where(User.id == user_id).with_for_update().execution_options(populate_existing=True)
    ).one()


def _current_balance(user_id: uuid.UUID) -> Decimal:
    return db.session.scalar(sa.select(User.balance).where(User.id == user_id))


def apply(
    user_id: uuid.UUID,
    amount: Decimal,
    transaction_type: str,
    description: str,
    *,
    reference_type: str | None = None,
    reference_id: object | None = None,
    on_short: type[Exception] | None = None,
) -> Transaction:
    """Add a signed `amount` to the balance and record it (and `balance.low` when a debit crosses the threshold).
    A debit that would go below zero raises `InsufficientBalance` (or `on_short`) and changes nothing."""
    if transaction_type not in TRANSACTION_TYPES:
        raise ValueError(f"unknown transaction type {transaction_type!r}")
    amount = quantize(Decimal(amount))
    if amount == 0:
        raise ValueError("a ledger entry moves money")
    new_balance = quantized_in_sql(User.balance + amount)
    balance_after = db.session.scalar(
        sa.update(User)
        .where(User.id == user_id, new_balance >= 0, new_balance <= MAX_BALANCE)
        .values(balance=new_balance)
        .returning(User.balance)
        .execution_options(synchronize_session=False)
    )
    if balance_after is None:
        if amount > 0:
            raise BalanceLimitExceeded()
        if on_short is not None:
            raise on_short()
        raise InsufficientBalance(required=-amount, available=_current_balance(user_id))
    entry = Transaction(
        user_id=user_id,
        amount=amount,
        balance_after=quantize(Decimal(balance_after)),
        transaction_type=transaction_type,
        description=description[:255],
        reference_type=reference_type,
        reference_id=None if reference_id is None else str(reference_id),
    )
    db.session.add(entry)
    user = db.session.identity_map.get(db.session.identity_key(User, user_id))
    if user is not None:
        db.session.expire(user, ["balance"])
    db.session.flush()
    if crossed_below_low_balance(entry):
        emit("balance.low", user_id, balance=format_amount(entry.balance_after))
    return entry


def crossed_below_low_balance(entry: Transaction) -> bool:
    """A debit that took the balance from ≥ 10 to below 10 ZNC (`balance.low`)."""
    before = entry.balance_after - entry.amount
    return entry.amount < 0 and entry.balance_after < LOW_BALANCE_THRESHOLD <= before


def transactions_of(user_id: uuid.UUID | None, transaction_type: str | None, limit: int,
                    offset: int) -> dict[str, Any]:
    statement = sa.select(Transaction).order_by(Transaction.created_at.desc(), Transaction.id.desc())
    if user_id is not None:
        statement = statement.where(Transaction.user_id == user_id)
    if transaction_type:
        statement = statement.where(Transaction.transaction_type == transaction_type)
    return paginate(statement, limit, offset)


def verify() -> dict[str, Any]:
    """`balance == sum(amount)` and `balance >= 0` for every user."""
    sums = (
        sa.select(Transaction.user_id, sa.func.coalesce(sa.func.sum(Transaction.amount), 0).label("total"))
        .group_by(Transaction.user_id)
        .subquery()
    )
    rows = db.session.execute(
        sa.select(User.id, User.balance, sa.func.coalesce(sums.c.total, 0))
        .outerjoin(sums, sums.c.user_id == User.id)
        .order_by(User.created_at)
    ).all()
    mismatches = []
    for user_id, balance, total in rows:
        total = quantize(Decimal(str(total)))
        if balance != total or balance < 0:
            mismatches.append({"user_id": str(user_id), "balance": format_amount(balance),
                               "ledger_sum": format_amount(total)})
    return {"ok": not mismatches, "users_checked": len(rows), "mismatches": mismatches}
