"""Built-in ``moderation`` detector: any OpenAI-compatible ``POST {base_url}/moderations`` endpoint.

Sends ``{"model": ..., "input": [input text, output text]}`` (the texts selected by ``scan``,
each capped at ``max_chars``) with ``Authorization: Bearer $<api_key_env>`` when configured. A
result with ``flagged: true`` becomes a Flag whose category is the flagged category with the
highest score. A timeout, a connection failure, a non-200 answer or a body that is not a
moderation result raises ``DetectorUnavailable``: the request is recorded as not judged.
"""

from __future__ import annotations

import os
from typing import Any

import httpx

from releasegate.detectors.base import DetectionInput, Detector, DetectorUnavailable, Flag
from releasegate.detectors.settings import ModerationSettings


class ModerationDetector(Detector):
    """Asks an OpenAI-compatible moderation endpoint about a request's input and output."""

    def __init__(self, name: str, settings: ModerationSettings) -> None:
        self.name = name
        self.settings = settings
        self.url = settings.base_url.rstrip("/") + "/moderations"
        self._client: httpx.AsyncClient | None = None

    @classmethod
    def from_settings(cls, name: str, settings: dict[str, Any]) -> ModerationDetector:
        return cls(name, ModerationSettings.model_validate(settings))

    def _http(self) -> httpx.AsyncClient:
        if self._client is None:
            # No environment proxies and no redirects: the plan names the endpoint exactly.
            self._client = httpx.AsyncClient(timeout=self.settings.timeout, trust_env=False, follow_redirects=False)
        return self._client

    def _headers(self) -> dict[str, str]:
        env = self.settings.api_key_env
        if env is None:
            return {}
        key = os.environ.get(env)
        if not key:
            raise DetectorUnavailable(f"the environment variable {env} holding the moderation API key is not set")
        return {"authorization": f"Bearer {key}"}

    async def inspect(self, item: DetectionInput) -> Flag | None:
        s = self.settings
        parts: list[tuple[str, str]] = []
        if s.scan in ("input", "both") and item.input_text:
            parts.append(("input", item.input_text[: s.max_chars]))
        if s.scan in ("output", "both") and item.output_text:
            parts.append(("output", item.output_text[: s.max_chars]))
        if not parts:
            return None
        body = {"model": s.model, "input": [text for _, text in parts]}
        try:
            response = await self._http().post(self.url, json=body, headers=self._headers())
        except httpx.TimeoutException:
            raise DetectorUnavailable(f"{self.url} did not answer within {s.timeout:g}s") from None
        except httpx.HTTPError as exc:
            raise DetectorUnavailable(f"{self.url} could not be reached: {type(exc).__name__}") from None
        if response.status_code != 200:
            raise DetectorUnavailable(f"{self.url} answered HTTP {response.status_code}")
        try:
            results = response.json()["results"]
        except Exception:
            results = None
        if not isinstance(results, list):
            raise DetectorUnavailable(f"{self.url} answered with something that is not a moderation result")
        best: tuple[float, str, str] | None = None
        for (where, _), result in zip(parts, results, strict=False):
            if not isinstance(result, dict) or not result.get("flagged"):
                continue
            categories = result.get("categories") or {}
            scores = result.get("category_scores") or {}
            for category, hit in categories.items():
                if hit:
                    score = float(scores.get(category, 1.0) or 0.0)
                    if best is None or score > best[0]:
                        best = (score, str(category), where)
            if best is None:  # flagged without naming a category
                best = (1.0, "flagged", where)
        if best is None:
            return None
        score, category, where = best
        return Flag(self.name, category, score, f"{where} flagged by {s.model}")

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None
