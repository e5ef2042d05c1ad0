"""Import every table module so that ``Base.metadata`` knows all tables (Alembic, tests)."""

import releasegate.store.evidence
import releasegate.store.requests
import releasegate.store.webhooks
import releasegate.store.weights  # noqa: F401
from releasegate.store import models  # noqa: F401
