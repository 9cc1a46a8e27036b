"""The one commit rule (zenzefi_backend/__init__.py): a piece joins its caller's DB transaction. It adds rows and
flushes at most; it never commits or rolls back, and raises instead (the owner rolls back).

The pieces: every function named `…_in_transaction`, the public functions of the modules the package docstring
declares made of pieces, and the proxy's `sessions.end_*`. Each is called here in a transaction the test opened with
a change of its own (the marker): while it runs, the session and the engine report no commit, no rollback and no
end of that transaction; afterwards the marker is still there and the piece's rows are seen in the transaction; one
rollback by the test then leaves every table as it was. A static check lists the pieces, so a new one fails here
until it has its case, and a piece whose body calls `.commit(` or `.rollback(` fails at once.
"""
from __future__ import annotations

import ast
import importlib
import re
import sys
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy import event

import zenzefi_backend
from zenzefi_backend import clock, metrics
from zenzefi_backend.accounts.models import User
from zenzefi_backend.analytics import rollups
from zenzefi_backend.audit import services as audit
from zenzefi_backend.extensions import db
from zenzefi_backend.ledger import services as ledger
from zenzefi_backend.ledger.models import Transaction
from zenzefi_backend.notifications import outbox
from zenzefi_backend.proxy import sessions
from zenzefi_backend.proxy.counters import Usage
from zenzefi_backend.referrals import services as referrals
from zenzefi_backend.tokens import services as tokens
from zenzefi_backend.tokens.models import AccessToken

PACKAGE = Path(zenzefi_backend.__file__).parent
# What the package docstring names as modules made of pieces → (module, which of its public functions are pieces).
PIECE_MODULES = {
    "ledger.services": ("zenzefi_backend.ledger.services", ""),
    "audit.services": ("zenzefi_backend.audit.services", ""),
    "notifications.outbox": ("zenzefi_backend.notifications.outbox", ""),
    "sessions.end_*": ("zenzefi_backend.proxy.sessions", "end_"),
}
MARKER = "the caller's own change"


# The static side: which functions are pieces, and which of them end a transaction themselves.

def _functions(body: list[ast.stmt], prefix: str = "") -> Iterator[tuple[str, ast.FunctionDef, bool]]:
    """(qualified name, node, is top-level) of every function in `body`, methods and nested functions included."""
    for node in body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            yield prefix + node.name, node, prefix == ""
            yield from _functions(node.body, f"{prefix}{node.name}.<locals>.")
        elif isinstance(node, ast.ClassDef):
            yield from _functions(node.body, f"{prefix}{node.name}.")


def pieces_in(source: str, module: str, public_prefix: str | None) -> dict[str, ast.FunctionDef]:
    """The pieces `source` defines, by `module.qualname`: every function named `…_in_transaction` and, in a module
    declared made of pieces (`public_prefix` is not None), each public top-level function whose name starts so."""
    found = {}
    for name, node, top_level in _functions(ast.parse(source).body):
        declared = (public_prefix is not None and top_level and not node.name.startswith("_")
                    and node.name.startswith(public_prefix))
        if node.name.endswith("_in_transaction") or declared:
            found[f"{module}.{name}"] = node
    return found


def direct_ends(node: ast.FunctionDef) -> list[str]:
    """Every `.commit(` and `.rollback(` call written in the function's body."""
    return [f"line {call.lineno}: .{call.func.attr}(" for call in ast.walk(node)
            if isinstance(call, ast.Call) and isinstance(call.func, ast.Attribute)
            and call.func.attr in ("commit", "rollback")]


def all_pieces() -> dict[str, ast.FunctionDef]:
    declared = {module: prefix for module, prefix in PIECE_MODULES.values()}
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        module = ".".join(["zenzefi_backend", *path.relative_to(PACKAGE).with_suffix("").parts])
        module = module.removesuffix(".__init__")
        found.update(pieces_in(path.read_text(encoding="utf-8"), module, declared.get(module)))
    return found


def piece_function(name: str) -> Callable[..., Any]:
    """The function `module.qualname` names (a top-level function or a method: what its callers can reach)."""
    parts = name.split(".")
    for split in range(len(parts) - 1, 0, -1):
        try:
            target: Any = importlib.import_module(".".join(parts[:split]))
        except ModuleNotFoundError:
            continue
        for part in parts[split:]:
            target = getattr(target, part)
        return target
    raise LookupError(name)


# The behaviour side: a piece called in the test's own transaction.

@dataclass
class Watched:
    result: Any
    error: BaseException | None
    ends: list[str]  # what the session and the engine reported while the call ran
    entered: set  # the code objects the call ran (to know it did call the piece)


def run_watched(call: Callable[[], Any]) -> Watched:
    """Run `call`, recording every commit, rollback and end of the session's outermost transaction it causes."""
    ends: list[str] = []
    entered: set = set()
    session = db.session()
    listeners: list[tuple[Any, str, Callable[..., None]]] = [
        (session, "after_commit", lambda _session: ends.append("session commit")),
        (session, "after_rollback", lambda _session: ends.append("session rollback")),
        (session, "after_soft_rollback", lambda _session, _previous: ends.append("session soft rollback")),
        (session, "after_transaction_end",
         lambda _session, transaction: transaction.parent is None and ends.append("transaction ended")),
        (db.engine, "commit", lambda _connection: ends.append("connection commit")),
        (db.engine, "rollback", lambda _connection: ends.append("connection rollback")),
    ]
    for target, name, listener in listeners:
        event.listen(target, name, listener)

    def profile(frame, what, _arg):
        if what == "call":
            entered.add(frame.f_code)

    previous = sys.getprofile()
    sys.setprofile(profile)
    result = error = None
    try:
        result = call()
    except Exception as raised:
        error = raised
    finally:
        sys.setprofile(previous)
        for target, name, listener in listeners:
            event.remove(target, name, listener)
    return Watched(result, error, ends, entered)


def table_rows(connection: sa.Connection | Any) -> dict[str, list[str]]:
    """Every row of every table, as text, through `connection` (a fresh one, or the session in its transaction)."""
    return {table.name: sorted(repr(tuple(row)) for row in connection.execute(sa.select(table)))
            for table in db.metadata.sorted_tables}


def fresh_rows() -> dict[str, list[str]]:
    with db.engine.connect() as connection:
        return table_rows(connection)


def changed(before: dict[str, list[str]], after: dict[str, list[str]]) -> set[str]:
    return {name for name in after if after[name] != before[name]}


@dataclass(frozen=True)
class Case:
    piece: str
    make: Callable[[Any], Callable[[], Any]]  # (accounts) → the call; the set-up it makes is committed first
    writes: frozenset[str]  # the tables the call changes in the caller's transaction
    raises: type[Exception] | None = None


CASES: dict[str, Case] = {}


def case(piece: str, writes: set[str], *, raises: type[Exception] | None = None, label: str = ""):
    def register(make: Callable[[Any], Callable[[], Any]]) -> Callable[[Any], Callable[[], Any]]:
        name = piece.removeprefix("zenzefi_backend.") + (f" ({label})" if label else "")
        assert name not in CASES, name
        CASES[name] = Case(piece, make, frozenset(writes), raises)
        return make
    return register


def user_id(accounts, balance: str | None = None, **overrides) -> uuid.UUID:
    user = accounts.funded(balance, **overrides) if balance else accounts.signed_in(**overrides)
    return uuid.UUID(user["id"])


# ledger.services: the only code that changes a balance.

@case("zenzefi_backend.ledger.services.lock_user", set())
def lock_a_user(accounts):
    user = user_id(accounts)
    return lambda: ledger.lock_user(user)


@case("zenzefi_backend.ledger.services.apply", {"users", "transactions", "outbox_events"})
def debit_below_the_low_balance_threshold(accounts):
    user = user_id(accounts, "50.00")
    return lambda: ledger.apply(user, Decimal("-45.00"), "adjustment", "commit rule: a debit")


@case("zenzefi_backend.ledger.services.apply", set(), raises=ledger.InsufficientBalance,
      label="refused: more than the balance")
def debit_more_than_the_balance(accounts):
    user = user_id(accounts, "50.00")
    return lambda: ledger.apply(user, Decimal("-50.01"), "adjustment", "commit rule: too much")


@case("zenzefi_backend.ledger.services.apply", set(), raises=ledger.BalanceLimitExceeded,
      label="refused: above the largest balance")
def credit_beyond_the_largest_balance(accounts):
    user = user_id(accounts, "50.00")
    return lambda: ledger.apply(user, ledger.MAX_BALANCE, "adjustment", "commit rule: too much")


@case("zenzefi_backend.ledger.services.crossed_below_low_balance", set())
def read_whether_an_entry_crossed(accounts):
    entry = sa.select(Transaction).where(Transaction.user_id == user_id(accounts, "50.00"))
    return lambda: ledger.crossed_below_low_balance(db.session.scalars(entry).one())


@case("zenzefi_backend.ledger.services.transactions_of", set())
def list_transactions(accounts):
    user = user_id(accounts, "50.00")
    return lambda: ledger.transactions_of(user, None, 10, 0)


@case("zenzefi_backend.ledger.services.verify", set())
def verify_the_ledger(accounts):
    user_id(accounts, "50.00")
    return ledger.verify


# audit.services: the audit writer and the trail.

@case("zenzefi_backend.audit.services.record", {"audit_logs"})
def record_an_audit_row(accounts):
    user = user_id(accounts)
    return lambda: audit.record("commit_rule.recorded", actor_id=user, resource_type="user", resource_id=user)


@case("zenzefi_backend.audit.services.record_outcome", {"audit_logs", "outbox_events"})
def record_an_outcome(accounts):
    user = user_id(accounts)
    return lambda: audit.record_outcome(
        "commit_rule.outcome", actor_id=user, resource_type="user", resource_id=user, details={"why": "test"},
        events=[("balance.low", user, {"balance": "1.00"})],
        counts=[(metrics.token_purchases, 1, {"duration_hours": "1"})])


@case("zenzefi_backend.audit.services.audit_logs", set())
def read_the_audit_trail(accounts):
    user = user_id(accounts)
    return lambda: audit.audit_logs(actor_id=user, limit=10, offset=0)


# notifications.outbox: events written in the caller's transaction.

@case("zenzefi_backend.notifications.outbox.emit", {"outbox_events"})
def emit_an_event(accounts):
    user = user_id(accounts)
    return lambda: outbox.emit("balance.low", user, balance="1.00")


@case("zenzefi_backend.notifications.outbox.emit", set(), raises=ValueError, label="refused: unknown event type")
def emit_an_unknown_event(accounts):
    user = user_id(accounts)
    return lambda: outbox.emit("commit_rule.unknown", user)


@case("zenzefi_backend.notifications.outbox.nudge_relay", set())
def nudge_the_relay(accounts):
    return outbox.nudge_relay


@case("zenzefi_backend.notifications.outbox.take_nudge", set())
def take_the_nudge(accounts):
    return outbox.take_nudge


# proxy sessions: the end_* pieces close a session in the caller's transaction.

def proxy_session(accounts) -> tuple[uuid.UUID, uuid.UUID, uuid.UUID]:
    """(user id, token id, session id) of a token a device holds (`claim` commits it)."""
    user = accounts.funded("50.00")
    token = uuid.UUID(accounts.buy_token(user, 1)["id"])
    session = sessions.claim(token, uuid.UUID(user["id"]), "commit-rule-device", "127.0.0.1", "pytest")
    return uuid.UUID(user["id"]), token, session


@case("zenzefi_backend.proxy.sessions.end_for_token", {"proxy_sessions", "outbox_events"})
def end_the_tokens_session(accounts):
    _user, token, _session = proxy_session(accounts)
    return lambda: sessions.end_for_token(token, "revoked")


@case("zenzefi_backend.proxy.sessions.end_for_user", {"proxy_sessions", "outbox_events"})
def end_the_users_sessions(accounts):
    user, _token, _session = proxy_session(accounts)
    return lambda: sessions.end_for_user(user, "deactivated")


@case("zenzefi_backend.proxy.sessions.end_session", {"proxy_sessions", "outbox_events"})
def end_one_session(accounts):
    _user, _token, session = proxy_session(accounts)
    return lambda: sessions.end_session(session, "admin")


# tokens: the purchase and the token itself, for bundles and auto-renewal.

@case("zenzefi_backend.tokens.services.add_token_in_transaction", {"access_tokens"})
def add_a_token(accounts):
    user = user_id(accounts)
    return lambda: tokens.add_token_in_transaction(user, 1, "full", Decimal("1.00"))


@case("zenzefi_backend.tokens.services.purchase_token_in_transaction",
      {"users", "access_tokens", "transactions", "audit_logs", "outbox_events"})
def purchase_a_token(accounts):
    user = user_id(accounts, "50.00")
    return lambda: (ledger.lock_user(user), tokens.purchase_token_in_transaction(user, 1, "full"))


@case("zenzefi_backend.tokens.services.purchase_token_in_transaction", {"access_tokens"},
      raises=ledger.InsufficientBalance, label="refused: no money")
def purchase_a_token_without_money(accounts):
    user = user_id(accounts)
    return lambda: (ledger.lock_user(user), tokens.purchase_token_in_transaction(user, 1, "full"))


# referrals: the bonus in the purchase's transaction, the clawback in the revoke's.

@case("zenzefi_backend.referrals.services.award_bonus_in_transaction",
      {"referral_bonuses", "users", "transactions", "audit_logs", "outbox_events"})
def award_a_bonus(accounts):
    referrer = accounts.signed_in()
    referee = user_id(accounts, "500.00", referral_code=referrer["referral_code"])
    purchase = ledger.apply(referee, Decimal("-300.00"), "purchase", "commit rule: a purchase").id
    db.session.commit()
    return lambda: referrals.award_bonus_in_transaction(referee, db.session.get(Transaction, purchase))


@case("zenzefi_backend.referrals.services.claw_back_in_transaction",
      {"referral_bonuses", "users", "transactions", "audit_logs", "outbox_events"})
def claw_a_bonus_back(accounts):
    referrer = accounts.signed_in()
    referee = accounts.funded("500.00", referral_code=referrer["referral_code"])
    token = uuid.UUID(accounts.buy_token(referee, 720)["id"])  # 300.00: a 30.00 bonus for the referrer
    return lambda: referrals.claw_back_in_transaction(db.session.get(AccessToken, token), Decimal("300.00"))


# analytics: usage added to the daily rollups in the transaction that counts it.

@case("zenzefi_backend.analytics.rollups.add_usage_in_transaction", {"usage_daily", "usage_last_active"})
def add_usage(accounts):
    user = user_id(accounts)
    return lambda: rollups.add_usage_in_transaction([Usage(user, clock.now(), requests=3, bytes_in=100, sessions=1)])


@pytest.mark.parametrize("name", sorted(CASES))
def test_a_piece_joins_its_callers_transaction_and_never_ends_it(name, app, accounts):
    subject = CASES[name]
    with app.app_context():
        call = subject.make(accounts)
        marked = user_id(accounts)
        db.session.remove()
        before = fresh_rows()

        db.session.get(User, marked).full_name = MARKER
        db.session.flush()
        at_marker = table_rows(db.session)
        assert changed(before, at_marker) == {"users"}

        watched = run_watched(call)
        assert watched.ends == [], f"{name} ended its caller's transaction: {watched.ends}"
        assert piece_function(subject.piece).__code__ in watched.entered, f"the case does not call {subject.piece}"
        if subject.raises is None:
            assert watched.error is None, f"{name} raised {watched.error!r}"
        else:
            assert isinstance(watched.error, subject.raises), f"{name} raised {watched.error!r}, not {subject.raises}"
        assert db.session.scalar(sa.select(User.full_name).where(User.id == marked)) == MARKER
        assert changed(at_marker, table_rows(db.session)) == subject.writes

        db.session.rollback()
        db.session.remove()
        assert fresh_rows() == before
        assert db.session.scalar(sa.select(User.full_name).where(User.id == marked)) is None


def test_the_watch_sees_a_commit_a_rollback_and_the_piece(app, accounts):
    marked = user_id(accounts)
    with app.app_context():
        for end, ends in ((db.session.commit, {"session commit", "connection commit", "transaction ended"}),
                          (db.session.rollback, {"session rollback", "session soft rollback", "connection rollback",
                                                 "transaction ended"})):
            db.session.get(User, marked).full_name = MARKER
            db.session.flush()
            assert set(run_watched(end).ends) == ends
        watched = run_watched(ledger.verify)
        assert watched.result["ok"] is True and watched.ends == []
        assert piece_function("zenzefi_backend.ledger.services.verify") is ledger.verify
        assert ledger.verify.__code__ in watched.entered and ledger.apply.__code__ not in watched.entered


def test_the_static_check_finds_every_kind_of_piece_and_its_commits():
    source = "\n".join([
        "def apply(): db.session.commit()",
        "def _private(): pass",
        "def add_in_transaction(): session.rollback()",
        "class Relay:",
        "    def mark_in_transaction(self): pass",
        "    def run(self): pass",
        "def end_it(): pass",
        "def outer():",
        "    def inner_in_transaction(): db.session.commit()",
    ])
    nested = {"m.add_in_transaction", "m.Relay.mark_in_transaction", "m.outer.<locals>.inner_in_transaction"}
    assert set(pieces_in(source, "m", None)) == nested
    assert set(pieces_in(source, "m", "end_")) == nested | {"m.end_it"}
    found = pieces_in(source, "m", "")
    assert set(found) == nested | {"m.apply", "m.end_it", "m.outer"}
    assert {name: ends for name, node in found.items() if (ends := direct_ends(node))} == {
        "m.apply": ["line 1: .commit("], "m.add_in_transaction": ["line 3: .rollback("],
        "m.outer": ["line 9: .commit("], "m.outer.<locals>.inner_in_transaction": ["line 9: .commit("]}


def test_the_declared_piece_modules_are_those_the_package_docstring_names():
    text = " ".join((zenzefi_backend.__doc__ or "").split())
    declared = re.search(r"in that module's docstring \(([^)]*)\)", text)
    assert declared, "the package docstring no longer says which modules are made of pieces"
    assert set(re.findall(r"`([^`]+)`", declared.group(1))) == set(PIECE_MODULES)


def test_every_piece_has_a_case_here_and_none_ends_a_transaction_itself():
    found = all_pieces()
    assert "zenzefi_backend.analytics.rollups.add_usage_in_transaction" in found
    covered = {piece.piece for piece in CASES.values() if piece.raises is None}
    assert sorted(set(found) - covered) == [], "each new piece needs its case in tests/test_commit_rule.py"
    assert sorted({piece.piece for piece in CASES.values()} - set(found)) == [], "a case for what is no piece"
    assert {name: ends for name, node in found.items() if (ends := direct_ends(node))} == {}
