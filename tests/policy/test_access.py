"""The pure access decision against the shared vectors (tests/vectors/access.yaml), plus its building blocks."""

from __future__ import annotations

import dataclasses
import importlib.util
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from releasegate.plan.schema import Limits
from releasegate.policy.access import (
    REASONS,
    Decision,
    decide,
    model_names,
    pick_weighted,
    sticky_point,
    stricter,
)

VECTORS_DIR = Path(__file__).resolve().parents[1] / "vectors"


def access_world() -> ModuleType:
    """tests/vectors/access_world.py (shared with the gateway's vector test)."""
    if "access_world" not in sys.modules:
        spec = importlib.util.spec_from_file_location("access_world", VECTORS_DIR / "access_world.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules["access_world"] = module
        spec.loader.exec_module(module)
    return sys.modules["access_world"]


WORLD = access_world().load()


def check(vector: dict[str, Any], d: Decision, expect: dict[str, Any]) -> None:
    where = vector["name"]
    assert d.allowed is expect["allowed"], f"{where}: {d}"
    if "code" in expect:
        assert d.code == expect["code"], f"{where}: {d.code} {d.message}"
    if "param" in expect:
        assert d.param == expect["param"], where
    if "version" in expect:
        assert d.version is not None and d.version.version == expect["version"], f"{where}: {d.version}"
    if "message_contains" in expect:
        assert expect["message_contains"] in d.message, f"{where}: {d.message}"
    if not d.allowed:
        assert d.code in REASONS and d.message, where


@pytest.mark.parametrize("vector", WORLD.vectors, ids=[v["name"] for v in WORLD.vectors])
def test_vector(vector: dict[str, Any]) -> None:
    d = decide(WORLD.snapshot.view, WORLD.token(vector), access_world().facts(vector["request"]), time.time())
    check(vector, d, vector["expect"])


@pytest.mark.parametrize("vector", WORLD.vectors, ids=[v["name"] for v in WORLD.vectors])
def test_vector_without_the_key_hash_index(vector: dict[str, Any]) -> None:
    """Keys are found by their hash first; a view without that index decides the same by lookup id."""
    view = dataclasses.replace(WORLD.snapshot.view, keys_by_hash={})
    assert WORLD.snapshot.view.keys_by_hash  # the compiled snapshot has the index ...
    d = decide(view, WORLD.token(vector), access_world().facts(vector["request"]), time.time())
    check(vector, d, vector["expect"])  # ... and the answers do not depend on it


@pytest.mark.parametrize("vector", WORLD.vectors, ids=[v["name"] for v in WORLD.vectors])
def test_vector_without_body(vector: dict[str, Any]) -> None:
    """What an edge proxy check decides: the same, except rules that need the body.

    Without a model header the decision endpoint asks about the key's model name (its default target).
    """
    request = {**vector["request"], "model": vector["request"].get("model") or "acme/atlas-8b"}
    d = decide(WORLD.snapshot.view, WORLD.token(vector), access_world().facts(request, body_seen=False), time.time())
    check(vector, d, vector.get("edge", vector["expect"]))


def test_allowed_decision_carries_the_stricter_of_stage_and_tier_limits() -> None:
    d = decide(WORLD.snapshot.view, WORLD.tokens["int-cs"], access_world().facts({"model": "v1"}), time.time())
    assert d.allowed and d.limits == Limits(rpm=500, tpm=100_000)  # tier rpm 500 beats stage 600; stage tpm stays


def test_stricter() -> None:
    assert stricter(Limits(rpm=5), Limits(rpm=3, tpm=9)) == Limits(rpm=3, tpm=9)
    assert stricter(None, Limits(concurrency=2)) == Limits(concurrency=2)
    assert stricter(Limits(daily_tokens=7), None) == Limits(daily_tokens=7)


def test_weighted_pick_is_sticky_and_proportional() -> None:
    targets = (("v1", 90), ("v2", 10))
    picks = [pick_weighted(targets, sticky_point("atlas", f"dep_{i}")) for i in range(4000)]
    share = picks.count("v2") / len(picks)
    assert 0.07 < share < 0.13
    assert all(pick_weighted(targets, sticky_point("atlas", f"dep_{i}")) == picks[i] for i in range(50))
    # Moving weight only moves the deployers in between: nobody on v2 goes back to v1.
    wider = [pick_weighted((("v1", 80), ("v2", 20)), sticky_point("atlas", f"dep_{i}")) for i in range(4000)]
    assert all(w == "v2" for p, w in zip(picks, wider, strict=True) if p == "v2")
    assert pick_weighted((("v1", 0),), 0.5) is None


def test_models_listing_shows_only_usable_names() -> None:
    view = WORLD.snapshot.view
    m = view.models["acme/atlas-8b"]
    internal = model_names(m, view.deployers["dep_int"])
    assert "acme/atlas-8b:v1" in internal and "acme/atlas-8b:v4" in internal
    assert not any(n.endswith((":v3", ":v5", ":v6")) for n in internal)
    bank = model_names(m, view.deployers["dep_bank"])
    assert bank == ["acme/atlas-8b", "acme/atlas-8b:atlas", "acme/atlas-8b:v2"]


def test_decision_is_fast() -> None:
    """A loose guard (the benchmark measures properly): well under 100 µs per decision even on a busy CI box."""
    view, token = WORLD.snapshot.view, WORLD.tokens["int-cs"]
    f = access_world().facts({"model": "acme/atlas-8b:v1", "max_tokens": 100})
    n = 2000
    start = time.perf_counter()
    for _ in range(n):
        decide(view, token, f, 1.0)
    assert (time.perf_counter() - start) / n < 100e-6
