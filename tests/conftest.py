"""Shared fixtures: every store-backed test runs on SQLite and on the machine's PostgreSQL."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from releasegate.clock import FrozenClock
from releasegate.services.context import Actor, ServiceContext
from releasegate.settings import Settings
from releasegate.store.base import Base
from releasegate.store.db import Database

PG_URL = os.environ.get("RELEASEGATE_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
BACKENDS = [b.strip() for b in os.environ.get("RELEASEGATE_TEST_BACKENDS", "sqlite,postgresql").split(",") if b.strip()]
REPO = Path(__file__).resolve().parent.parent
EXAMPLE_PLAN = REPO / "src" / "releasegate" / "examples" / "atlas" / "plan.yaml"


@pytest.fixture(params=BACKENDS)
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh, empty database: a SQLite file, or a private schema in PostgreSQL's ``test`` database."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'releasegate.db'}"
        return
    schema = f"t_{uuid.uuid4().hex[:12]}"
    admin = create_engine(PG_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    try:
        yield f"{PG_URL}?options=-csearch_path%3D{schema}"
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


@pytest.fixture
def clock() -> FrozenClock:
    return FrozenClock()


@pytest.fixture
def db(database_url: str) -> Iterator[Database]:
    import releasegate.store.all_models  # noqa: F401

    database = Database(database_url)
    Base.metadata.create_all(database.engine)
    yield database
    database.dispose()


@pytest.fixture
def ctx(db: Database, clock: FrozenClock, tmp_path: Path) -> ServiceContext:
    return ServiceContext(db=db, settings=Settings(data_dir=tmp_path / "data"), clock=clock)


@pytest.fixture
def admin() -> Actor:
    return Actor(name="alice@acme.example", role="admin", email="alice@acme.example")


@pytest.fixture
def example_plan_text() -> str:
    return EXAMPLE_PLAN.read_text()
