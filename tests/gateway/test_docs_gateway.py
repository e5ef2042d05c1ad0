"""docs/gateway.md documents every reason code the gateway can answer with, with its real status."""

from __future__ import annotations

import re
from pathlib import Path

from releasegate.policy.access import REASONS

DOC = Path(__file__).resolve().parents[2] / "docs" / "gateway.md"


def test_every_reason_code_is_in_the_table_with_its_status() -> None:
    rows = dict(re.findall(r"^\| `([a-z_]+)` \| (\d{3}) \|", DOC.read_text(), flags=re.M))
    missing = sorted(set(REASONS) - set(rows))
    assert not missing, f"undocumented reason codes: {missing}"
    wrong = {code: (rows[code], status) for code, (status, _) in REASONS.items() if int(rows[code]) != status}
    assert not wrong, f"documented status differs from the code: {wrong}"
