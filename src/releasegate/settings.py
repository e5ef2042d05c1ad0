"""Settings from the environment (``RELEASEGATE_*``) or passed explicitly. No globals."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="RELEASEGATE_", extra="ignore")

    data_dir: Path = Field(Path(".releasegate"), description="Working directory for the SQLite store, keys and logs.")
    database_url: str | None = Field(None, description="SQLAlchemy URL; default is SQLite in data_dir.")
    redis_url: str | None = Field(None, description="Redis for shared rate limits and change fan-out.")
    secret_key: SecretStr | None = Field(None, description="Server secret for signing URLs and fingerprints; default: generated in data_dir.")
    log_json: bool = Field(False, description="Emit structured JSON logs.")
    snapshot_max_age: float = Field(30.0, description="Seconds a gateway may serve from a snapshot it could not refresh before failing closed.")
    snapshot_poll_interval: float = Field(2.0, description="Seconds between snapshot polls when no notification arrives.")
    request_log_sync: bool = Field(True, description="fdatasync the request log before forwarding (survives power loss); false: the record is in the kernel before forwarding (survives a killed gateway, not a crashed host).")
    controller_interval: float = Field(5.0, description="Seconds between controller passes (gates, halt rules) and webhook deliveries inside `serve`; 0 disables them.")
    public_url: str = Field("http://127.0.0.1:8080", description="Base URL people and clients reach this server at.")

    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'releasegate.db').resolve()}"

    def ensure_data_dir(self) -> Path:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        return self.data_dir

    def server_secret(self) -> bytes:
        """The server secret, generated once into data_dir when not configured."""
        if self.secret_key is not None:
            return self.secret_key.get_secret_value().encode()
        path = self.ensure_data_dir() / "server-secret"
        if not path.exists():
            import contextlib
            import os
            import secrets
            import tempfile

            # Write then link atomically: concurrent first callers all end up reading one full secret.
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".server-secret.")
            try:
                os.write(fd, secrets.token_urlsafe(48).encode())
                os.fsync(fd)
                os.close(fd)
                with contextlib.suppress(FileExistsError):  # another caller won the race: use theirs
                    os.link(tmp, path)
            finally:
                os.unlink(tmp)
        return path.read_text().strip().encode()
