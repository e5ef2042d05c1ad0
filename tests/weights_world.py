"""Builders for the weights tests: a small model with a plan, terms and safetensors files."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from releasegate.services import principals
from releasegate.services.context import Actor, ServiceContext
from releasegate.weights.safetensors_io import write_safetensors

MODEL = "acme/atlas-8b"
RM = Actor(name="rm@acme.example", role="release_manager", email="rm@acme.example")
REVIEWER = Actor(name="rita@acme.example", role="reviewer", email="rita@acme.example")

PLAN = """
model: acme/atlas-8b
versions:
  v1: {weights: {path: artifacts/v1}}
  v2: {weights: {path: artifacts/v2}}
use_cases: {chat: {description: Chat with customers.}}
tiers: {internal: {}, partner: {}}
terms:
  atlas-license: {file: terms/license.md}
stages:
  - {name: internal, channels: [api], audience: {tiers: [internal]}}
  - name: open-weights
    channels: [api, weights]
    audience: {everyone: true}
    weights:
      terms: atlas-license
      form:
        - {name: organisation, type: text, required: true}
        - {name: country, type: country, required: true}
        - {name: intended_use, type: select, options: [research, commercial]}
        - {name: start_date, type: date}
        - {name: agree_no_redistribution, type: checkbox, required: true}
      vetting:
        auto_approve: {email_domains: [".edu", "partner.example"], countries_not: [XX, KP]}
        otherwise: manual
      grant_days: 30
      fingerprint: true
"""

TERMS_V1 = "# Atlas license\n\nResearch and commercial use; no redistribution of the weights.\n\n1. Be nice.\n"
GOOD_FIELDS = {"organisation": "MIT", "country": "US", "intended_use": "research", "agree_no_redistribution": "true"}


def write_weights(directory: Path, seed: int) -> None:
    """A tiny model: one safetensors file (fingerprintable F32 and F16 matrices, a bias) plus config and tokenizer."""
    rng = np.random.default_rng(seed)
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {
        "model.embed.weight": ("F32", (256, 128), rng.standard_normal((256, 128), dtype=np.float32).tobytes()),
        "model.layer0.weight": ("F16", (128, 128), rng.standard_normal((128, 128)).astype(np.float16).tobytes()),
        "model.layer0.bias": ("F32", (128,), rng.standard_normal(128, dtype=np.float32).tobytes()),
    }
    write_safetensors(directory / "model.safetensors", tensors, metadata={"format": "pt"})
    (directory / "config.json").write_text(json.dumps({"hidden_size": 128, "seed": seed}))
    (directory / "tokenizer").mkdir(exist_ok=True)
    (directory / "tokenizer" / "tokenizer.json").write_text(json.dumps({"vocab": {"a": 0, "b": 1}}))


@dataclass
class World:
    ctx: ServiceContext
    plan_dir: Path
    commit: str

    def licensee(self, name: str, email: str) -> tuple[str, Actor]:
        """A licensee token (what goes in HF_TOKEN) and the actor it authenticates as."""
        t = principals.create(self.ctx, Actor(name="admin", role="admin"), name=name, role="licensee", email=email)
        with self.ctx.db.read() as session:
            return t["token"], principals.authenticate(session, t["token"])


