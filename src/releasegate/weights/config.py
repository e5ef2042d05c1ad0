"""Settings of the weights endpoints (``RELEASEGATE_WEIGHTS_*``), read when the router is built."""

from __future__ import annotations

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class WeightsConfig(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="RELEASEGATE_WEIGHTS_", extra="ignore")

    url_ttl: int = Field(default=3600, ge=10, le=7 * 86400, description="Seconds a signed download URL stays valid.")
    accel_redirect: str | None = Field(
        default=None,
        description="Behind nginx: hand file bytes to it with X-Accel-Redirect to this internal location prefix, "
        "which must alias the data directory (e.g. /_releasegate/ with `alias /var/lib/releasegate/;`).",
    )

    @field_validator("accel_redirect")
    @classmethod
    def _prefix(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        value = value.strip()
        if not value.startswith("/"):
            raise ValueError("accel_redirect must be an absolute location prefix such as /_releasegate/")
        return value if value.endswith("/") else value + "/"
