"""Built-in ``patterns`` detector: regular expressions from the plan over a request's input and output.

Flags with the first pattern that matches (``category`` = ``input`` or ``output``, ``detail`` =
the pattern). Python's ``re`` cannot be interrupted, so the defence against a pattern that
backtracks catastrophically is twofold: patterns are at most ``MAX_PATTERN_CHARS`` long (checked
when the plan loads) and at most ``max_chars`` characters of each text are scanned (default
32,768). Scanning runs on the detector worker task, not a thread: ``re`` holds the GIL while it
matches, so a thread would add a hand-off per request without protecting the event loop.
"""

from __future__ import annotations

import re
from typing import Any

from releasegate.detectors.base import DetectionInput, Detector, Flag
from releasegate.detectors.settings import PatternsSettings


class PatternDetector(Detector):
    """Flags a request whose text matches any of ``patterns`` (``re.search`` semantics)."""

    synchronous = True  # regular expressions on the calling thread: nothing to wait for

    def __init__(self, name: str, settings: PatternsSettings) -> None:
        self.name = name
        self.settings = settings
        self._compiled = [re.compile(p) for p in settings.patterns]

    @classmethod
    def from_settings(cls, name: str, settings: dict[str, Any]) -> PatternDetector:
        return cls(name, PatternsSettings.model_validate(settings))

    def match(self, item: DetectionInput) -> Flag | None:
        """The flag for ``item``, computed in the calling thread."""
        limit = self.settings.max_chars
        texts: list[tuple[str, str]] = []
        if self.settings.scan in ("input", "both"):
            texts.append(("input", item.input_text[:limit]))
        if self.settings.scan in ("output", "both") and item.output_text:
            texts.append(("output", item.output_text[:limit]))
        for where, text in texts:
            for pattern in self._compiled:
                if pattern.search(text):
                    return Flag(self.name, where, 1.0, pattern.pattern)
        return None

    async def inspect(self, item: DetectionInput) -> Flag | None:
        return self.match(item)

    def inspect_now(self, item: DetectionInput) -> Flag | None:
        return self.match(item)
