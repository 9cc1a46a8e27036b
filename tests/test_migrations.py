from __future__ import annotations

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from flask_migrate import downgrade, upgrade

from zenzefi_backend.extensions import db


@pytest.mark.filterwarnings("ignore:.*expression-based index:UserWarning", "ignore:.*expression-based index")
def test_models_and_migrations_agree(app):
    """A model change without its migration (or the reverse) fails here."""
    with app.app_context(), db.engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        assert compare_metadata(context, db.metadata) == []


def test_downgrade_to_base_and_upgrade_again(app, backends):
    if not backends.is_postgres:
        pytest.skip("run against PostgreSQL, the production database (set TEST_DATABASE_URL)")
    with app.app_context():
        downgrade(revision="base")
        tables = set(sa.inspect(db.engine).get_table_names())
        assert tables <= {"alembic_version"}
        upgrade()
        assert {"users", "revoked_jwts", "audit_logs"} <= set(sa.inspect(db.engine).get_table_names())
