"""Where a model version is served: its upstream pool, the credential injected, and passive health.

A version's ``api.upstreams`` are tried in rotating order. An upstream that refused a connection,
timed out or answered 502/503/504 is skipped for a short cool-down (passive health checking: no
probe traffic). When every upstream of a pool is cooling down, the one that recovers soonest is
tried anyway, so a pool never refuses by itself for longer than the cool-down.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from releasegate.plan.schema import ApiBackend

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Backend:
    """The upstream pool of one version. ``authorization`` is the injected header value; never logged."""

    name: str  # "acme/atlas-8b:v1", for messages
    urls: tuple[str, ...]
    upstream_model: str
    timeout: float
    authorization: str | None = field(default=None, repr=False)


def upstream_credential(api: ApiBackend, *, env: Mapping[str, str], base_dir: str | None) -> tuple[str | None, str | None]:
    """(secret, problem): the upstream key from ``upstream_key_env`` or ``upstream_key_file``.

    A configured but missing credential is a problem to report (never the secret itself); the
    request is then forwarded without one and the upstream decides.
    """
    if api.upstream_key_env:
        value = env.get(api.upstream_key_env)
        if value:
            return value.strip(), None
        if not api.upstream_key_file:
            return None, f"environment variable {api.upstream_key_env} (upstream_key_env) is not set"
    if api.upstream_key_file:
        path = Path(api.upstream_key_file)
        if not path.is_absolute() and base_dir:
            path = Path(base_dir) / path
        try:
            return path.read_text().strip(), None
        except OSError as exc:
            return None, f"upstream key file {path} cannot be read ({exc.strerror})"
    return None, None


def build_backend(name: str, version: str, api: ApiBackend, *, env: Mapping[str, str] | None = None,
                  base_dir: str | None = None) -> tuple[Backend, str | None]:
    """The pool for one version and a configuration problem to report, if any."""
    secret, problem = upstream_credential(api, env=os.environ if env is None else env, base_dir=base_dir)
    return Backend(
        name=name,
        urls=tuple(api.upstreams),
        upstream_model=api.upstream_model or version,
        timeout=api.timeout.total_seconds(),
        authorization=f"Bearer {secret}" if secret else None,
    ), problem


class UpstreamHealth:
    """Passive health of upstream base URLs, shared by every snapshot of one gateway process."""

    def __init__(self, *, cooldown: float = 5.0) -> None:
        self.cooldown = cooldown
        self._cooling: dict[str, float] = {}  # url -> monotonic time it may be tried again
        self._turn: dict[tuple[str, ...], int] = {}

    def order(self, urls: tuple[str, ...]) -> list[str]:
        """The URLs to try, healthy ones first in rotating order, then cooling ones by recovery time."""
        if len(urls) == 1 and not self._cooling:
            return list(urls)
        turn = self._turn.get(urls, 0)
        self._turn[urls] = turn + 1
        rotated = urls[turn % len(urls):] + urls[: turn % len(urls)]
        now = time.monotonic()
        healthy = [u for u in rotated if self._cooling.get(u, 0.0) <= now]
        cooling = sorted((u for u in rotated if self._cooling.get(u, 0.0) > now), key=lambda u: self._cooling[u])
        return healthy + cooling

    def failed(self, url: str) -> None:
        self._cooling[url] = time.monotonic() + self.cooldown
        log.warning("upstream %s failed; skipping it for %.1fs", url, self.cooldown)

    def succeeded(self, url: str) -> None:
        if url in self._cooling:
            del self._cooling[url]

    def cooling(self) -> list[str]:
        now = time.monotonic()
        return [u for u, until in self._cooling.items() if until > now]
