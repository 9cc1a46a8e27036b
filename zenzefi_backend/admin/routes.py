"""Superuser routes: thin wrappers over the domain services. Every one is 401 without a JWT and 403 for
anyone but a superuser; every change is in the audit log with the actor, IP address and user agent."""
from __future__ import annotations

import uuid

from flask.views import MethodView
from flask_jwt_extended import current_user

from ..accounts.auth import superuser_required
from ..audit import services as audit
from ..idempotency import idempotent
from ..ledger import services as ledger
from ..ledger.schemas import LedgerVerificationSchema, TransactionSchema
from ..openapi import BEARER, IDEMPOTENCY_KEY, Blueprint, errors
from ..pagination import page_schema
from ..tokens import services as tokens
from . import services
from .schemas import (
    AdminTokenSchema,
    AdminTransactionsQuerySchema,
    AdminUserSchema,
    AuditLogSchema,
    AuditLogsQuerySchema,
    BalanceAdjustmentSchema,
    SessionSchema,
    SessionsQuerySchema,
    TokensQuerySchema,
    UsersQuerySchema,
    UserUpdateSchema,
)

blp = Blueprint("admin", __name__, url_prefix="/api/v1/admin", description="Superuser operations.")


@blp.route("/users")
class Users(MethodView):
    decorators = [superuser_required]

    @blp.doc(security=BEARER)
    @blp.arguments(UsersQuerySchema, location="query")
    @blp.response(200, page_schema(AdminUserSchema))
    @errors(401, 403, 422)
    def get(self, query):
        """Users, newest first, with balance, plan and counts

        `search` is a case-insensitive substring of the e-mail or the username. `active_token_count` counts
        tokens neither revoked nor expired (`ready` or `active`).
        """
        return services.list_users(search=query.get("search"), is_active=query.get("is_active"),
                                   plan=query.get("plan"), limit=query["limit"], offset=query["offset"])


@blp.route("/users/<uuid:user_id>")
class AdminUser(MethodView):
    decorators = [superuser_required]

    @blp.doc(security=BEARER)
    @blp.response(200, AdminUserSchema)
    @errors(401, 403, 404)
    def get(self, user_id: uuid.UUID):
        """One user with balance, plan and counts"""
        return services.get_user(user_id)

    @blp.doc(security=BEARER)
    @blp.arguments(UserUpdateSchema)
    @blp.response(200, AdminUserSchema)
    @errors(401, 403, 404, 409, 422)
    def patch(self, changes, user_id: uuid.UUID):
        """Change `is_active`, `is_superuser`, `plan` or `plan_expires_at` (any other field is a 422)

        - `is_active: false` locks the user out on their very next request: JWTs, proxied requests and
          `/proxy/status` all answer 401, and their proxy sessions end. `is_active: true` lets them back in;
          they must sign in again (JWTs from before the deactivation stay invalid), their tokens work again.
        - The free plan never expires: moving a user to `free` clears `plan_expires_at`; sending a non-null
          `plan_expires_at` for a free user is a 422. A paid plan with `plan_expires_at: null` never expires.
        - 409 when you try to remove your own superuser flag or deactivate yourself.
        - Every change is audited (`admin.user_updated`, with each field's old and new value).
        """
        return services.update_user(current_user, user_id, changes)


@blp.route("/users/<uuid:user_id>/balance-adjustments")
class BalanceAdjustments(MethodView):
    decorators = [superuser_required]

    @blp.doc(security=BEARER, parameters=[IDEMPOTENCY_KEY])
    @blp.arguments(BalanceAdjustmentSchema)
    @idempotent
    @blp.response(201, TransactionSchema)
    @errors(401, 403, 404, 409, 422)
    def post(self, body, user_id: uuid.UUID):
        """Credit or debit a user's balance (an `adjustment` entry); never below zero (409)"""
        return services.adjust_balance(current_user, user_id, body["amount"], body["reason"])


@blp.route("/tokens")
class Tokens(MethodView):
    decorators = [superuser_required]

    @blp.doc(security=BEARER)
    @blp.arguments(TokensQuerySchema, location="query")
    @blp.response(200, page_schema(AdminTokenSchema))
    @errors(401, 403, 422)
    def get(self, query):
        """Every user's tokens, newest first; never a secret"""
        return services.list_tokens(user_id=query.get("user_id"), status=query.get("status"),
                                    limit=query["limit"], offset=query["offset"])


@blp.route("/tokens/<uuid:token_id>")
class AdminToken(MethodView):
    decorators = [superuser_required]

    @blp.doc(security=BEARER)
    @blp.response(200, AdminTokenSchema)
    @errors(401, 403, 404, 409)
    def delete(self, token_id: uuid.UUID):
        """Force revoke, without a refund: the token stops working on the very next request

        Its proxy session ends and the owner gets `token.revoked` (with `refund_amount: "0.00"`). Works on
        tokens in any state but `revoked` (409).
        """
        return tokens.force_revoke(current_user, token_id)


@blp.route("/sessions")
class Sessions(MethodView):
    decorators = [superuser_required]

    @blp.doc(security=BEARER)
    @blp.arguments(SessionsQuerySchema, location="query")
    @blp.response(200, page_schema(SessionSchema))
    @errors(401, 403, 422)
    def get(self, query):
        """Proxy sessions, newest first (`active_only` defaults to false)

        Request and byte counters are flushed from the hot path every 60 s, so an active session's figures
        may be up to a minute behind.
        """
        return services.list_sessions(active_only=query["active_only"], user_id=query.get("user_id"),
                                      limit=query["limit"], offset=query["offset"])


@blp.route("/sessions/<uuid:session_id>")
class AdminSession(MethodView):
    decorators = [superuser_required]

    @blp.doc(security=BEARER)
    @blp.response(204)
    @errors(401, 403, 404)
    def delete(self, session_id: uuid.UUID):
        """End a proxy session and free its token: the next request from any device is admitted

        Ending a session that has already ended is a 204 too (nothing changes).
        """
        services.end_session(current_user, session_id)


@blp.route("/transactions")
class Transactions(MethodView):
    decorators = [superuser_required]

    @blp.doc(security=BEARER)
    @blp.arguments(AdminTransactionsQuerySchema, location="query")
    @blp.response(200, page_schema(TransactionSchema))
    @errors(401, 403, 422)
    def get(self, query):
        """Every user's ledger entries, newest first"""
        return ledger.transactions_of(query.get("user_id"), query.get("transaction_type"), query["limit"],
                                      query["offset"])


@blp.route("/audit-logs")
class AuditLogs(MethodView):
    decorators = [superuser_required]

    @blp.doc(security=BEARER)
    @blp.arguments(AuditLogsQuerySchema, location="query")
    @blp.response(200, page_schema(AuditLogSchema))
    @errors(401, 403, 422)
    def get(self, query):
        """The audit trail, newest first; kept `AUDIT_RETENTION_DAYS` (30) days

        `user_id` is the actor; `action` and `resource_type` match exactly; `since` is an ISO 8601 moment
        with an offset (percent-encode `+` as `%2B`, or write `Z`).
        """
        return audit.audit_logs(actor_id=query.get("user_id"), action=query.get("action"),
                                resource_type=query.get("resource_type"), since=query.get("since"),
                                limit=query["limit"], offset=query["offset"])


@blp.route("/ledger/verify")
class LedgerVerify(MethodView):
    decorators = [superuser_required]

    @blp.doc(security=BEARER)
    @blp.response(200, LedgerVerificationSchema)
    @errors(401, 403)
    def get(self):
        """Check `balance == sum(ledger)` and `balance >= 0` for every user"""
        return ledger.verify()
