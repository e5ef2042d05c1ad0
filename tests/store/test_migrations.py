"""The Alembic migrations produce exactly the schema the models describe, on both backends."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect

import releasegate.store.all_models  # noqa: F401
from releasegate.store.base import Base
from releasegate.store.db import Database
from releasegate.store.migrate import current_revision, ensure_schema, head_revision


def test_migrations_match_models(database_url: str) -> None:
    db = Database(database_url)
    try:
        assert ensure_schema(db.engine) is True
        assert current_revision(db.engine) == head_revision()
        with db.engine.connect() as conn:
            ctx = MigrationContext.configure(conn, opts={"compare_type": True})
            diff = compare_metadata(ctx, Base.metadata)
        assert diff == [], f"migrations and models differ: {diff}"
        tables = set(inspect(db.engine).get_table_names())
        assert set(Base.metadata.tables) <= tables
        assert ensure_schema(db.engine) is False  # idempotent
    finally:
        db.dispose()
