"""Hypothesis stateful test of the money rules, driven through the Flask test client on SQLite or PostgreSQL.

A pure-Python model keeps each user's balance, ledger length and live tokens. Rules top up, debit, buy,
revoke, probe other users' tokens (BOLA) and replay idempotent purchases; after every step the API must
agree with the model, every balance must be ≥ 0 and equal to the sum of its ledger, and the admin ledger
check must pass. No rule moves the clock: nothing can activate a token yet (the proxy does not exist), so
every refund is the full price paid.
"""
from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from decimal import Decimal

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    initialize,
    invariant,
    multiple,
    precondition,
    rule,
    run_state_machine_as_test,
)

from tests.money.helpers import (
    PURCHASE,
    TRANSACTIONS,
    adjust,
    assert_chained,
    assert_ledger_verifies,
    balance,
    ledger,
    ledger_sum,
    money,
    prices,
    token_path,
    tokens,
)
from zenzefi_backend.tokens.models import SCOPES

MAX_USERS = 4
cents = st.integers(min_value=1, max_value=400_00)
# Top-ups: often whole prices or a generous sum (so purchases and revokes happen), sometimes any odd amount.
top_up_cents = st.one_of(st.sampled_from([1_00, 10_00, 18_00, 100_00, 300_00, 1000_00]), cents)


@dataclass
class Customer:
    account: dict
    balance: Decimal = Decimal("0.00")
    entries: int = 0
    live_tokens: dict[str, Bought] = field(default_factory=dict)  # in order of purchase

    @property
    def id(self) -> str:
        return self.account["id"]

    @property
    def headers(self) -> dict[str, str]:
        return self.account["headers"]


@dataclass(frozen=True)
class Bought:
    id: str
    owner: str
    paid: Decimal


@dataclass(frozen=True)
class Receipt:
    """A finished purchase made with an Idempotency-Key: what any replay must give back."""

    owner: str
    key: str
    body: dict
    status: int
    answer: dict


def amount_json(amount: Decimal, as_string: bool) -> str | float:
    # Numbers are accepted as well as strings; repr() of a float of n/100 round-trips to those 2 decimals.
    return money(amount) if as_string else float(amount)


class LedgerMachine(RuleBasedStateMachine):
    customers = Bundle("customers")
    bought = Bundle("bought")
    receipts = Bundle("receipts")

    def __init__(self, app, accounts):
        super().__init__()
        self.client = app.test_client()
        self.accounts = accounts
        self.prices = prices(app)
        self.people: dict[str, Customer] = {}
        self.admin: dict | None = None
        self.touched: set[str] = set()  # users whose tokens the last step may have changed

    # -- set-up: fresh users every example (the autouse clean-up runs only once per test function) --

    @initialize(target=customers, opening=st.lists(st.one_of(st.just(0), top_up_cents), min_size=2, max_size=2))
    def fresh_users(self, opening):
        self.admin = self.accounts.signed_in(superuser=True)
        ids = [self._sign_up() for _ in opening]
        for who, amount in zip(ids, opening, strict=True):
            if amount:
                self.top_up(who, amount, as_string=True)
        return multiple(*ids)

    @precondition(lambda self: len(self.people) < MAX_USERS)
    @rule(target=customers)
    def sign_up(self):
        return self._sign_up()

    def _sign_up(self) -> str:
        customer = Customer(self.accounts.signed_in())
        self.people[customer.id] = customer
        return customer.id

    # -- money in and out by a superuser --

    @rule(who=customers, amount=top_up_cents, as_string=st.booleans())
    def top_up(self, who, amount, as_string):
        customer = self.people[who]
        value = Decimal(amount) / 100
        response = self.client.post(f"/api/v1/admin/users/{who}/balance-adjustments",
                                    json={"amount": amount_json(value, as_string), "reason": "top-up"},
                                    headers=self.admin["headers"])
        assert response.status_code == 201, response.get_json()
        customer.balance += value
        customer.entries += 1
        entry = response.get_json()
        assert entry["transaction_type"] == "adjustment"
        assert (entry["amount"], entry["balance_after"]) == (money(value), money(customer.balance)), entry

    @rule(who=customers, amount=st.one_of(cents, st.just("everything")))
    def debit(self, who, amount):
        customer = self.people[who]
        # "everything" takes exactly the whole balance: the boundary of the `>= 0` rule.
        value = customer.balance if amount == "everything" else Decimal(amount) / 100
        if value == 0:
            return
        response = adjust(self.client, self.admin, who, -value, reason="correction")
        if value <= customer.balance:
            assert response.status_code == 201, response.get_json()
            customer.balance -= value
            customer.entries += 1
            assert response.get_json()["balance_after"] == money(customer.balance)
        else:
            assert response.status_code == 409, response.get_json()

    # -- purchases --

    @rule(target=bought, who=customers, hours=st.sampled_from((1, 12, 24, 168, 720)), scope=st.sampled_from(SCOPES),
          default_scope=st.booleans())
    def buy(self, who, hours, scope, default_scope):
        body = {"duration_hours": hours} if default_scope and scope == "full" else {"duration_hours": hours,
                                                                                  "scope": scope}
        response = self.client.post(PURCHASE, json=body, headers=self.people[who].headers)
        return self._expect_purchase(who, hours, scope, response)

    @rule(target=receipts, who=customers, hours=st.sampled_from((1, 24, 720)))
    def buy_with_key(self, who, hours):
        body = {"duration_hours": hours}
        key = f"sm-{uuid.uuid4()}"
        headers = {**self.people[who].headers, "Idempotency-Key": key}
        response = self.client.post(PURCHASE, json=body, headers=headers)
        self._expect_purchase(who, hours, "full", response)
        # A retry straight away replays the answer and changes nothing.
        again = self.client.post(PURCHASE, json=body, headers=headers)
        assert again.headers.get("Idempotent-Replayed") == "true"
        assert (again.status_code, again.get_json()) == (response.status_code, response.get_json())
        return Receipt(who, key, body, response.status_code, response.get_json())

    def _expect_purchase(self, who: str, hours: int, scope: str, response):
        customer = self.people[who]
        price = self.prices[hours]
        self.touched.add(who)
        if customer.balance < price:
            assert response.status_code == 402, response.get_json()
            answer = response.get_json()
            assert (answer["required"], answer["available"]) == (money(price), money(customer.balance)), answer
            return multiple()
        assert response.status_code == 201, response.get_json()
        token = response.get_json()
        assert (token["duration_hours"], token["scope"], token["status"]) == (hours, scope, "ready"), token
        assert token["paid_znc"] == money(price) and token["source"] == "purchase", token
        assert token["activated_at"] is None and token["expires_at"] is None and token["revoked_at"] is None
        assert len(token["token"]) == 64 and token["token_hint"] == f"{token['token'][:6]}...{token['token'][-4:]}"
        customer.balance -= price
        customer.entries += 1
        customer.live_tokens[token["id"]] = Bought(token["id"], who, price)
        return customer.live_tokens[token["id"]]

    @rule(receipt=receipts)
    def replay_later(self, receipt):
        """Later, whatever happened to the balance meanwhile, the key still gives the first answer, and the
        same key with another body is refused."""
        headers = {**self.people[receipt.owner].headers, "Idempotency-Key": receipt.key}
        response = self.client.post(PURCHASE, json=receipt.body, headers=headers)
        assert response.headers.get("Idempotent-Replayed") == "true"
        assert (response.status_code, response.get_json()) == (receipt.status, receipt.answer)
        other = {"duration_hours": 12 if receipt.body["duration_hours"] != 12 else 1}
        assert self.client.post(PURCHASE, json=other, headers=headers).status_code == 422

    # -- revokes: a token in the `bought` bundle may have been revoked since; the model knows --

    @rule(token=bought)
    def revoke(self, token):
        self._revoke(self.people[token.owner], token)

    @rule(who=customers)
    def revoke_latest(self, who):
        customer = self.people[who]
        if customer.live_tokens:
            self._revoke(customer, list(customer.live_tokens.values())[-1])

    def _revoke(self, customer: Customer, token: Bought) -> None:
        self.touched.add(customer.id)
        response = self.client.delete(token_path(token.id), headers=customer.headers)
        if token.id not in customer.live_tokens:
            assert response.status_code == 404, response.get_json()  # already revoked
            return
        assert response.status_code == 200, response.get_json()
        result = response.get_json()
        # Never activated: the refund is exactly what was paid.
        customer.balance += token.paid
        customer.entries += 1
        del customer.live_tokens[token.id]
        assert result["revoked"] is True
        assert (result["refund_amount"], result["new_balance"]) == (money(token.paid), money(customer.balance)), result
        shown = self.client.get(token_path(token.id), headers=customer.headers).get_json()
        assert shown["status"] == "revoked" and shown["revoked_at"] is not None, shown

    @rule(token=bought, intruder=customers)
    def revoke_someone_elses(self, token, intruder):
        if intruder == token.owner:
            return
        owner = self.people[token.owner]
        self.touched.update((token.owner, intruder))
        intruder_headers = self.people[intruder].headers
        assert self.client.delete(token_path(token.id), headers=intruder_headers).status_code == 404
        assert self.client.get(token_path(token.id), headers=intruder_headers).status_code == 404
        # The owner's token is untouched: still usable if it was.
        shown = self.client.get(token_path(token.id), headers=owner.headers)
        assert shown.status_code == 200, shown.get_json()
        expected = "ready" if token.id in owner.live_tokens else "revoked"
        assert shown.get_json()["status"] == expected, shown.get_json()

    # -- audits --

    @rule(who=customers)
    def audit_whole_ledger(self, who):
        """Every page of the user's ledger: the sum is the balance and each entry starts where the last ended."""
        customer = self.people[who]
        rows = ledger(self.client, customer.account)
        assert len(rows) == customer.entries
        assert_chained(rows)
        assert ledger_sum(rows) == customer.balance

    # -- after every step --

    @invariant()
    def api_agrees_with_the_model(self):
        for customer in self.people.values():
            shown = balance(self.client, customer.account)
            assert shown == customer.balance >= 0, (customer.id, shown, customer.balance)
            newest = self.client.get(f"{TRANSACTIONS}?limit=1", headers=customer.headers).get_json()
            assert newest["total"] == customer.entries, (customer.id, newest)
            if customer.entries:
                assert Decimal(newest["items"][0]["balance_after"]) == shown, newest
        for who in self.touched:
            customer = self.people[who]
            live = {token["id"] for token in tokens(self.client, customer.account, active_only=True)}
            assert live == set(customer.live_tokens)
        self.touched.clear()
        # balance == sum(ledger) and balance >= 0 for every user, checked by the service itself.
        assert_ledger_verifies(self.client, self.admin)


def test_ledger_state_machine(app, accounts):
    run_state_machine_as_test(
        lambda: LedgerMachine(app, accounts),
        settings=settings(max_examples=25, stateful_step_count=25, deadline=None),
    )
