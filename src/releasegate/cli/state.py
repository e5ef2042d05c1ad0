"""What the CLI knows about where it works: a server, or a local data directory."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from releasegate.errors import InvalidInput
from releasegate.services.context import ServiceContext
from releasegate.settings import Settings


@dataclass
class CliState:
    server: str | None = None
    token: str | None = None
    data_dir: Path | None = None
    _ctx: ServiceContext | None = field(default=None, repr=False)

    def settings(self) -> Settings:
        return Settings(data_dir=self.data_dir) if self.data_dir else Settings()

    def service_context(self, *, create: bool = False) -> ServiceContext:
        """The local store's context; refuses (exit 2) when there is no store and ``create`` is False."""
        if self._ctx is not None:
            return self._ctx
        from releasegate.api.app import build_context
        from releasegate.store.migrate import ensure_schema

        settings = self.settings()
        url = settings.resolved_database_url()
        if not create and url.startswith("sqlite:///") and not Path(url.removeprefix("sqlite:///")).exists():
            raise InvalidInput(
                f"no releasegate store in {settings.data_dir.resolve()}: run `releasegate init` first, "
                "or pass --data-dir / --server",
                code="no_store",
            )
        ctx = build_context(settings)
        ensure_schema(ctx.db.engine)
        self._ctx = ctx
        return ctx
