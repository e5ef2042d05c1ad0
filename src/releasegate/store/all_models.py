"""Import every table module so that ``Base.metadata`` knows all tables (Alembic, tests)."""

from releasegate.store import models  # noqa: F401
