"""Misuse detectors run on gateway traffic: the plug-in interface, built-in kinds and the runner."""

from releasegate.detectors.base import (
    ConfiguredDetector,
    DetectionInput,
    Detector,
    DetectorRegistry,
    DetectorUnavailable,
    Flag,
    build_detectors,
    default_registry,
    register_builtins,
)

__all__ = [
    "ConfiguredDetector",
    "DetectionInput",
    "Detector",
    "DetectorRegistry",
    "DetectorUnavailable",
    "Flag",
    "build_detectors",
    "default_registry",
    "register_builtins",
]
