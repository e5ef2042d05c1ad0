"""The text detectors read: what a request asks and what its answer says, in the OpenAI shapes.

Both functions are cheap, never raise on odd bodies (anything unexpected is skipped) and cap
their result at ``limit`` characters: past it, the first and the last ``limit / 2`` characters
are kept, because misuse hides at either end (a planted instruction first, the real question last).
"""

from __future__ import annotations

from typing import Any

MAX_TEXT_CHARS = 32_768


def _cap(parts: list[str], limit: int) -> str:
    text = "\n".join(p for p in parts if p)
    if len(text) <= limit:
        return text
    half = limit // 2
    return text[:half] + "\n…\n" + text[-half:]


def _content(value: Any, out: list[str]) -> None:
    """Text of a message's ``content``: a string, or a list of parts with ``text``."""
    if isinstance(value, str):
        out.append(value)
    elif isinstance(value, list):
        for part in value:
            if isinstance(part, dict) and isinstance(part.get("text"), str):
                out.append(part["text"])
            elif isinstance(part, str):
                out.append(part)


def input_text(endpoint: str, body: dict[str, Any], limit: int = MAX_TEXT_CHARS) -> str:
    """The request's text: chat messages, a completion prompt, embeddings or responses input."""
    out: list[str] = []
    if endpoint == "chat.completions":
        messages = body.get("messages")
        if isinstance(messages, list):
            for m in messages:
                if isinstance(m, dict):
                    _content(m.get("content"), out)
    elif endpoint == "completions":
        _content(body.get("prompt"), out)
    elif endpoint == "embeddings":
        _content(body.get("input"), out)
    elif endpoint == "responses":
        if isinstance(body.get("instructions"), str):
            out.append(body["instructions"])
        value = body.get("input")
        if isinstance(value, list):
            for item in value:
                if isinstance(item, dict):
                    _content(item.get("content"), out)
                elif isinstance(item, str):
                    out.append(item)
        else:
            _content(value, out)
    return _cap(out, limit)


def output_text(endpoint: str, response: Any, limit: int = MAX_TEXT_CHARS) -> str | None:
    """The answer's text (None when the endpoint has none, e.g. embeddings, or the body is odd)."""
    if not isinstance(response, dict):
        return None
    out: list[str] = []
    if endpoint in ("chat.completions", "completions"):
        choices = response.get("choices")
        if not isinstance(choices, list):
            return None
        for c in choices:
            if not isinstance(c, dict):
                continue
            if isinstance(c.get("text"), str):
                out.append(c["text"])
            message = c.get("message")
            if isinstance(message, dict):
                _content(message.get("content"), out)
    elif endpoint == "responses":
        items = response.get("output")
        if isinstance(items, list):
            for item in items:
                if isinstance(item, dict):
                    _content(item.get("content"), out)
        elif isinstance(response.get("output_text"), str):
            out.append(response["output_text"])
    else:
        return None
    return _cap(out, limit)
