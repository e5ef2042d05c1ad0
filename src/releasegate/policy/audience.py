"""Who a stage's audience admits. Pure: deployers and an audience in, admitted ids out.

The waitlist share is stable: a deployer's bucket is a hash of its id, so raising
``waitlist_percent`` only ever adds deployers, and lowering it removes the newest buckets.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from releasegate.plan.schema import Audience

ADMITTABLE = frozenset({"active", "waitlisted"})


@dataclass(frozen=True)
class DeployerView:
    id: str
    name: str
    tier: str | None
    status: str  # pending | active | waitlisted | suspended
    admitted_at: datetime | None = None


def waitlist_bucket(deployer_id: str) -> float:
    """A stable number in [0, 100) for ``deployer_id``."""
    digest = hashlib.sha256(deployer_id.encode()).digest()
    return int.from_bytes(digest[:8], "big") % 10_000 / 100


def in_audience(audience: Audience, d: DeployerView) -> bool:
    """True if ``d`` matches the audience, before any cap is applied."""
    if d.status not in ADMITTABLE:
        return False
    if d.status == "waitlisted":
        if audience.everyone:
            return True
        tier_ok = not audience.tiers or d.tier in audience.tiers
        pct = audience.waitlist_percent or 0.0
        return d.name in audience.deployers or d.id in audience.deployers or (tier_ok and waitlist_bucket(d.id) < pct)
    if audience.everyone:
        return True
    return d.tier in audience.tiers or d.name in audience.deployers or d.id in audience.deployers


def admitted(audience: Audience, deployers: Iterable[DeployerView]) -> frozenset[str]:
    """Ids admitted by ``audience``; a cap keeps named deployers first, then the earliest admitted."""
    matching = [d for d in deployers if in_audience(audience, d)]
    cap = audience.max_deployers
    if cap is not None and len(matching) > cap:
        def order(d: DeployerView) -> tuple[int, float, str]:
            named = 0 if (d.name in audience.deployers or d.id in audience.deployers) else 1
            ts = d.admitted_at.timestamp() if d.admitted_at else float("inf")
            return (named, ts, d.id)

        matching = sorted(matching, key=order)[:cap]
    return frozenset(d.id for d in matching)
