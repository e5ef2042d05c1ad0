"""Request helpers: prompt text/token counting, the deterministic echo completion, fake
embeddings, and the parsed-request holder."""

from __future__ import annotations

import hashlib
import itertools
from typing import Any

_ECHO_LIMIT = 200  # characters of the last user message echoed back
_FILLER = ("lorem", "ipsum", "dolor", "sit", "amet", "consectetur", "adipiscing", "elit")


def _words(text: str) -> int:
    return len(text.split())


def _text_of(content: Any) -> str:
    """Text of an OpenAI message ``content``: a string or a list of content parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for part in content:
            if isinstance(part, str):
                parts.append(part)
            elif isinstance(part, dict):
                text = part.get("text")
                if isinstance(text, str):
                    parts.append(text)
        return " ".join(parts)
    return ""


def _prompt_of_chat(messages: Any) -> tuple[str, int]:
    last_user = ""
    total = 0
    if isinstance(messages, list):
        for m in messages:
            if not isinstance(m, dict):
                continue
            text = _text_of(m.get("content"))
            total += _words(text)
            if m.get("role") == "user":
                last_user = text
    return last_user, total


def _prompt_of_completion(prompt: Any) -> tuple[str, int]:
    if isinstance(prompt, str):
        return prompt, _words(prompt)
    if isinstance(prompt, list) and prompt:
        if all(isinstance(p, int) for p in prompt):
            return f"<{len(prompt)} tokens>", len(prompt)
        texts = [p if isinstance(p, str) else f"<{len(p)} tokens>" for p in prompt]
        total = sum(_words(p) if isinstance(p, str) else len(p) for p in prompt)
        return texts[-1], total
    return "", 0


def _prompt_of_responses(body: dict[str, Any]) -> tuple[str, int]:
    total = 0
    instructions = body.get("instructions")
    if isinstance(instructions, str):
        total += _words(instructions)
    inp = body.get("input")
    if isinstance(inp, str):
        return inp, total + _words(inp)
    last_user = ""
    if isinstance(inp, list):
        for item in inp:
            if not isinstance(item, dict):
                continue
            text = _text_of(item.get("content"))
            total += _words(text)
            if item.get("role", "user") == "user":
                last_user = text
    return last_user, total


def _completion_words(
    model: str, said: str, n_words: int | None, max_tokens: Any
) -> tuple[list[str], str]:
    """Deterministic completion as a list of word pieces (" word" after the first) + finish."""
    said = " ".join(said.split())
    if len(said) > _ECHO_LIMIT:
        said = said[:_ECHO_LIMIT] + "..."
    words = f"[mock {model}] you said: {said}".split()
    if n_words is not None:
        n_words = max(n_words, 1)
        if len(words) >= n_words:
            words = words[:n_words]
        else:
            words.extend(itertools.islice(itertools.cycle(_FILLER), n_words - len(words)))
    finish = "stop"
    if (
        isinstance(max_tokens, int)
        and not isinstance(max_tokens, bool)
        and 0 < max_tokens < len(words)
    ):
        words = words[:max_tokens]
        finish = "length"
    pieces = [words[0]] + [" " + w for w in words[1:]]
    return pieces, finish


def _embedding(text_key: bytes, dims: int) -> list[float]:
    raw = hashlib.shake_256(text_key).digest(dims)
    vec = [(b - 127.5) / 127.5 for b in raw]
    norm = sum(v * v for v in vec) ** 0.5 or 1.0
    return [v / norm for v in vec]


class _Req:
    __slots__ = ("body", "headers", "method", "path", "query", "request_id")

    def __init__(self, method: str, path: str, query: str, headers: dict[str, str]) -> None:
        self.method = method
        self.path = path
        self.query = query
        self.headers = headers
        self.body: Any = None
        self.request_id: str | None = headers.get("x-request-id")
