"""Helpers for running releasegate components in tests, demos and benchmarks (pytest-free)."""
