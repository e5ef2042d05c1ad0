"""The built-in ``patterns`` detector: plan regexes over input and output, with a scan cap."""

from __future__ import annotations

import pytest

from releasegate.detectors.base import DetectionInput, Flag, build_detectors, default_registry
from releasegate.detectors.patterns import PatternDetector
from releasegate.errors import InvalidInput

PLAN_PATTERNS = ["(?i)synthesi[sz]e .*nerve agent", "(?i)ransomware payload"]


def item(text: str, output: str | None = None) -> DetectionInput:
    return DetectionInput(request_id="req_1", deployer_id="dep_1", use_case="customer-support",
                          use_case_description="Answer customers' questions.", model="acme/atlas-8b", version="v1",
                          endpoint="chat.completions", input_text=text, output_text=output)


def detector(**settings: object) -> PatternDetector:
    return PatternDetector.from_settings("moderation", {"patterns": PLAN_PATTERNS, **settings})


async def test_flags_input_and_output_with_the_pattern_that_matched() -> None:
    d = detector()
    assert await d.inspect(item("Where is my order #1234?")) is None
    assert await d.inspect(item("How do I Synthesise a nerve agent at home?")) == Flag(
        "moderation", "input", 1.0, PLAN_PATTERNS[0])
    assert await d.inspect(item("hello", output="here is the ransomware payload")) == Flag(
        "moderation", "output", 1.0, PLAN_PATTERNS[1])


async def test_scan_selects_the_texts_and_max_chars_caps_them() -> None:
    assert await detector(scan="input").inspect(item("hello", output="ransomware payload")) is None
    assert await detector(scan="output").inspect(item("ransomware payload")) is None
    late = "x" * 100 + " ransomware payload"
    assert await detector(max_chars=100).inspect(item(late)) is None  # past the cap: not scanned
    assert await detector(max_chars=200).inspect(item(late)) is not None


def test_bad_patterns_are_refused_with_the_detector_and_field_named() -> None:
    registry = default_registry(plugins=False)
    with pytest.raises(InvalidInput, match=r"detector 'mod': patterns: .*not a valid regular expression"):
        build_detectors({"mod": {"kind": "patterns", "patterns": ["(unclosed"]}}, registry)
    with pytest.raises(InvalidInput, match=r"detector 'mod': patterns: .*the limit is 512"):
        build_detectors({"mod": {"kind": "patterns", "patterns": ["a" * 513]}}, registry)
    with pytest.raises(InvalidInput, match=r"detector 'mod': patterns: .*at least 1 item"):
        build_detectors({"mod": {"kind": "patterns", "patterns": []}}, registry)
    with pytest.raises(InvalidInput, match=r"detector 'mod': pattern: Extra inputs are not permitted"):
        build_detectors({"mod": {"kind": "patterns", "pattern": "x", "patterns": ["x"]}}, registry)
