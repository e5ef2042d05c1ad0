"""releasegate: release an AI model step by step and stay in control of who uses it."""

__version__ = "0.1.0"
