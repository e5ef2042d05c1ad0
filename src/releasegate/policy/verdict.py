"""Gate verdicts: each criterion judged pass / fail / inconclusive with a sentence and evidence."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

Outcome = Literal["pass", "fail", "inconclusive"]


@dataclass(frozen=True)
class CriterionResult:
    kind: str
    outcome: Outcome
    message: str
    evidence: tuple[str, ...] = ()
    numbers: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "outcome": self.outcome, "message": self.message,
                "evidence": list(self.evidence), "numbers": dict(self.numbers)}


@dataclass(frozen=True)
class Verdict:
    stage: str
    results: tuple[CriterionResult, ...]

    @property
    def outcome(self) -> Outcome:
        """fail if any criterion fails, else inconclusive if any is, else pass (no criteria: pass)."""
        outcomes = {r.outcome for r in self.results}
        if "fail" in outcomes:
            return "fail"
        if "inconclusive" in outcomes:
            return "inconclusive"
        return "pass"

    @property
    def passed(self) -> bool:
        return self.outcome == "pass"

    def to_dict(self) -> dict[str, Any]:
        return {"stage": self.stage, "outcome": self.outcome, "results": [r.to_dict() for r in self.results]}
