"""What every service needs: the store, the clock, settings, and who is acting."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from sqlalchemy.orm import Session

from releasegate.clock import Clock, SystemClock
from releasegate.errors import Forbidden
from releasegate.settings import Settings
from releasegate.store.db import Database

ROLES = ("admin", "release_manager", "reviewer", "auditor", "deployer", "licensee")
STAFF_ROLES = frozenset({"admin", "release_manager", "reviewer", "auditor"})


@dataclass(frozen=True)
class Actor:
    """Who is acting: a person, an automation, or the system itself (``controller``)."""

    name: str
    role: str
    deployer_id: str | None = None
    email: str | None = None
    principal_id: str | None = None

    def require(self, *roles: str, action: str = "do this") -> None:
        """Raise Forbidden unless the actor holds one of ``roles`` (admin always may)."""
        if self.role == "admin" or self.role in roles:
            return
        raise Forbidden(
            f"{self.name} ({self.role}) may not {action}; it needs one of: {', '.join(('admin', *roles))}",
            code="forbidden_role",
            details={"role": self.role, "needs": ["admin", *roles]},
        )

    def require_deployer(self, deployer_id: str, *staff_roles: str, action: str = "do this") -> None:
        """Staff with ``staff_roles`` may act on any deployer; a deployer only on itself."""
        if self.role == "deployer":
            if self.deployer_id != deployer_id:
                # Same answer as "does not exist": a deployer learns nothing of others.
                from releasegate.errors import NotFound

                raise NotFound(f"no deployer {deployer_id!r}", code="deployer_not_found")
            return
        self.require(*staff_roles, action=action)


SYSTEM = Actor(name="system", role="admin")


@dataclass
class ServiceContext:
    """The store, clock and settings shared by the services; listeners hear of every committed write."""

    db: Database
    settings: Settings
    clock: Clock = field(default_factory=SystemClock)
    on_change: list[Callable[[], None]] = field(default_factory=list)

    @contextmanager
    def write(self) -> Iterator[Session]:
        """A transaction that, once committed, tells every ``on_change`` listener."""
        with self.db.transaction() as session:
            yield session
        for listener in list(self.on_change):
            listener()

