"""``python -m releasegate.mockupstream``: run the MOCK model server (see :mod:`.cli`)."""

from __future__ import annotations

import sys

from releasegate.mockupstream.cli import main

if __name__ == "__main__":
    sys.exit(main())
