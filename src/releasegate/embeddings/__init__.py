"""Sentence embeddings computed in numpy, for checks that must not pull in torch."""

from releasegate.embeddings.minilm import MiniLMEncoder, default_model_dir

__all__ = ["MiniLMEncoder", "default_model_dir"]
