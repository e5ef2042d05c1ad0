"""store.base: UTC datetimes and the text SQLite stores for them."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from sqlalchemy.dialects import sqlite

from releasegate.store.base import UTCDateTime


@pytest.mark.parametrize("value", [
    datetime(2030, 5, 17, 12, 0, 0, tzinfo=UTC),  # no microseconds: still written with six digits
    datetime(2030, 5, 17, 12, 34, 56, 789012, tzinfo=UTC),
    datetime(999, 1, 2, 3, 4, 5, 6, tzinfo=UTC),  # a three-digit year, zero-padded as SQLAlchemy does
    datetime(2030, 1, 1, 0, 30, tzinfo=timezone(timedelta(hours=2))),  # another zone: converted to UTC
    datetime.fromtimestamp(1_796_063_747.714633, UTC),
])
def test_sqlite_text_is_what_the_column_type_would_bind(value: datetime) -> None:
    dialect = sqlite.dialect()
    column = UTCDateTime()
    processor = column.dialect_impl(dialect).bind_processor(dialect)
    assert processor is not None
    assert UTCDateTime.sqlite_text(value) == processor(value)


def test_sqlite_text_refuses_a_naive_datetime_like_the_column() -> None:
    with pytest.raises(ValueError, match="naive"):
        UTCDateTime.sqlite_text(datetime(2030, 5, 17, 12))
