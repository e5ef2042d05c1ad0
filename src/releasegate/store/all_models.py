"""Import every table module so that ``Base.metadata`` knows all tables (Alembic, tests)."""

import releasegate.store.evidence  # noqa: F401
import releasegate.store.requests  # noqa: F401
from releasegate.store import models  # noqa: F401
from releasegate.store import weights  # noqa: F401
