"""The plug-in interface: a user's kind registers like the built-ins, settings are checked, sampling is stable."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from releasegate.detectors.base import (
    DetectionInput,
    Detector,
    DetectorRegistry,
    Flag,
    build_detectors,
    default_registry,
    register_builtins,
)
from releasegate.errors import InvalidInput
from releasegate.plan.loader import PlanError, load_plan_text

EXAMPLE = Path(__file__).resolve().parents[2] / "src" / "releasegate" / "examples" / "atlas" / "plan.yaml"
EXAMPLE_DETECTORS = ('  moderation: {kind: patterns, sample: 1.0, patterns: ["(?i)synthesi[sz]e .*nerve agent", '
                     '"(?i)ransomware payload"]}')


class Shouting(Detector):
    """A user's detector: flags requests written in capitals."""

    def __init__(self, name: str, settings: dict[str, Any]) -> None:
        self.name = name
        self.min_length = int(settings.get("min_length", 5))

    async def inspect(self, item: DetectionInput) -> Flag | None:
        text = item.input_text
        if len(text) >= self.min_length and text.isupper():
            return Flag(self.name, "shouting", 1.0)
        return None


def test_builtins_and_a_users_kind_go_through_the_same_door() -> None:
    registry = DetectorRegistry()
    register_builtins(registry)
    registry.register("shouting", Shouting)
    assert registry.kinds() == ["moderation", "patterns", "scope_drift", "shouting"]
    with pytest.raises(InvalidInput, match="already registered"):
        registry.register("patterns", Shouting)
    registry.register("patterns", Shouting, replace=True)  # a user may replace a built-in, explicitly
    built = build_detectors({"caps": {"kind": "shouting", "sample": 0.5, "mode": "inline", "min_length": 3},
                             "words": {"kind": "patterns", "whatever": True}}, registry)
    assert built["caps"].mode == "inline" and built["caps"].sample == 0.5 and built["caps"].kind == "shouting"
    assert isinstance(built["caps"].detector, Shouting) and built["caps"].detector.min_length == 3
    assert isinstance(built["words"].detector, Shouting)  # replaced kinds bring their own settings


def test_common_settings_and_unknown_kinds_are_refused_by_name() -> None:
    registry = default_registry(plugins=False)
    with pytest.raises(InvalidInput, match=r"detector 'x': kind: Field required"):
        build_detectors({"x": {"patterns": ["a"]}}, registry)
    with pytest.raises(InvalidInput, match=r"detector 'x': sample: Input should be less than or equal to 1"):
        build_detectors({"x": {"kind": "patterns", "patterns": ["a"], "sample": 2}}, registry)
    with pytest.raises(InvalidInput, match=r"detector 'x': mode: Input should be 'async' or 'inline'"):
        build_detectors({"x": {"kind": "patterns", "patterns": ["a"], "mode": "blocking"}}, registry)
    with pytest.raises(InvalidInput, match=r"detector 'x': unknown kind 'regex'; known kinds: moderation, patterns"):
        build_detectors({"x": {"kind": "regex"}}, registry)
    with pytest.raises(InvalidInput, match=r"detector 'x': base_url"):
        build_detectors({"x": {"kind": "moderation", "base_url": "ftp://nope"}}, registry)


def test_sampling_is_stable_per_request_and_close_to_the_share() -> None:
    registry = DetectorRegistry()
    registry.register("shouting", Shouting)
    built = build_detectors({"half": {"kind": "shouting", "sample": 0.25}, "all": {"kind": "shouting"},
                             "none": {"kind": "shouting", "sample": 0}}, registry)
    ids = [f"req_{i:06x}" for i in range(4000)]
    chosen = [rid for rid in ids if built["half"].sampled(rid)]
    assert 900 < len(chosen) < 1100
    assert chosen == [rid for rid in ids if built["half"].sampled(rid)]  # same ids, same answer
    assert all(built["all"].sampled(rid) for rid in ids[:100])
    assert not any(built["none"].sampled(rid) for rid in ids[:100])


def test_plan_loading_checks_built_in_settings_and_warns_on_unknown_kinds() -> None:
    text = EXAMPLE.read_text()
    assert EXAMPLE_DETECTORS in text
    with pytest.raises(PlanError) as err:
        load_plan_text(text.replace(EXAMPLE_DETECTORS, "  moderation: {kind: patterns, sample: 1.5, patterns: ['(x']}"))
    message = str(err.value)
    assert "detectors.moderation.sample: detector 'moderation': Input should be less than or equal to 1" in message
    assert "detectors.moderation.patterns: detector 'moderation'" in message and "not a valid regular expression" in message
    loaded = load_plan_text(text.replace(EXAMPLE_DETECTORS, "  moderation: {kind: patern, patterns: [x]}"))
    assert [(w.code, w.path, w.hint) for w in loaded.warnings] == [
        ("unknown_detector_kind", "detectors.moderation.kind", "did you mean 'patterns'?")]
    ok = load_plan_text(text.replace(EXAMPLE_DETECTORS, "  drift: {kind: scope_drift, threshold: 0.12, mode: async}\n"
                                     "  moderation: {kind: moderation, base_url: 'http://127.0.0.1:9/v1', sample: 0.1}"))
    assert ok.warnings == [] and set(ok.plan.detectors) == {"drift", "moderation"}


def test_plugins_register_through_the_entry_point_group(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                       caplog: pytest.LogCaptureFixture) -> None:
    """A real installed distribution (a dist-info on sys.path) adds a kind; a broken one is logged and skipped."""
    (tmp_path / "rg_caps_plugin.py").write_text(
        "from releasegate.detectors import Detector, Flag\n\n"
        "class Caps(Detector):\n"
        "    def __init__(self, name, settings):\n"
        "        self.name = name\n\n"
        "    async def inspect(self, item):\n"
        "        return Flag(self.name, 'caps') if item.input_text.isupper() else None\n\n"
        "def register(registry):\n"
        "    registry.register('caps', Caps)\n\n"
        "def broken(registry):\n"
        "    raise RuntimeError('plugin bug')\n")
    dist = tmp_path / "rg_caps_plugin-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: rg-caps-plugin\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[releasegate.detectors]\ncaps = rg_caps_plugin:register\n"
                                           "broken = rg_caps_plugin:broken\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    registry = default_registry()
    assert "caps" in registry.kinds() and "patterns" in registry.kinds()
    assert "rg_caps_plugin:broken could not be registered: plugin bug" in caplog.text
    assert "caps" not in default_registry(plugins=False).kinds()
