"""Reading what an OpenAI-style request asks for: the facts the scope rules of a use case judge.

One pass over the parsed JSON body. Fields of the wrong type are an ``invalid_request`` (400) naming
the field, so a malformed request never reaches the policy (or the upstream) half-understood.
"""

from __future__ import annotations

from typing import Any

from releasegate.policy.access import RequestFacts

ENDPOINT_PATHS: dict[str, str] = {
    "/v1/chat/completions": "chat.completions",
    "/v1/completions": "completions",
    "/v1/embeddings": "embeddings",
    "/v1/responses": "responses",
}
# Where each endpoint carries the completion-size bound.
MAX_TOKENS_FIELD: dict[str, str] = {
    "chat.completions": "max_tokens",
    "completions": "max_tokens",
    "responses": "max_output_tokens",
}
_IMAGE_PARTS = frozenset({"image_url", "input_image", "image"})


class BadRequest(ValueError):
    """A body field has the wrong type or value; ``param`` names it."""

    def __init__(self, message: str, param: str) -> None:
        super().__init__(message)
        self.message = message
        self.param = param


def _int(body: dict[str, Any], name: str) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise BadRequest(f"'{name}' must be an integer, got {type(value).__name__}", name)
    return value


def _number(body: dict[str, Any], name: str) -> float | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise BadRequest(f"'{name}' must be a number, got {type(value).__name__}", name)
    return float(value)


def _bool(body: dict[str, Any], name: str) -> bool:
    value = body.get(name)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise BadRequest(f"'{name}' must be true or false, got {type(value).__name__}", name)
    return value


def _content(content: Any, param: str) -> tuple[int, bool]:
    """(characters, has image) of a message content: a string or a list of parts."""
    if content is None:
        return 0, False
    if isinstance(content, str):
        return len(content), False
    if isinstance(content, list):
        chars, image = 0, False
        for part in content:
            if isinstance(part, str):
                chars += len(part)
            elif isinstance(part, dict):
                kind = part.get("type")
                if kind in _IMAGE_PARTS:
                    image = True
                text = part.get("text")
                if isinstance(text, str):
                    chars += len(text)
            else:
                raise BadRequest(f"'{param}' parts must be objects", param)
        return chars, image
    raise BadRequest(f"'{param}' must be a string or a list of parts", param)


def _messages(messages: Any, param: str) -> tuple[int, bool]:
    if not isinstance(messages, list):
        raise BadRequest(f"'{param}' must be a list of messages", param)
    chars, image = 0, False
    for m in messages:
        if isinstance(m, str):  # responses: input may mix strings
            chars += len(m)
            continue
        if not isinstance(m, dict):
            raise BadRequest(f"'{param}' must be a list of message objects", param)
        c, i = _content(m.get("content"), f"{param}.content")
        chars += c
        image = image or i
    return chars, image


def _texts(value: Any, param: str) -> int:
    """Characters of a prompt / embedding input: a string, a list of strings, or token arrays."""
    if isinstance(value, str):
        return len(value)
    if isinstance(value, list):
        total = 0
        for item in value:
            if isinstance(item, str):
                total += len(item)
            elif isinstance(item, int) and not isinstance(item, bool):
                total += 1
            elif isinstance(item, list):
                total += len(item)
            else:
                raise BadRequest(f"'{param}' must be a string, a list of strings or token arrays", param)
        return total
    raise BadRequest(f"'{param}' must be a string or a list of strings", param)


def request_facts(endpoint: str, body: dict[str, Any]) -> RequestFacts:
    """The facts of one request body for ``endpoint``; BadRequest on a field of the wrong type."""
    model = body.get("model")
    if model is not None and not isinstance(model, str):
        raise BadRequest("'model' must be a string", "model")
    stream = _bool(body, "stream")
    n = _int(body, "n")
    if n is not None and n < 1:
        raise BadRequest("'n' must be at least 1", "n")
    temperature = _number(body, "temperature")
    top_p = _number(body, "top_p")
    tools = bool(body.get("tools") or body.get("functions"))
    logprobs = False
    images = False
    response_format = False
    max_tokens: int | None = None
    if endpoint == "chat.completions":
        chars, images = _messages(body.get("messages"), "messages")
        logprobs = _bool(body, "logprobs") or bool(body.get("top_logprobs"))
        a, b = _int(body, "max_tokens"), _int(body, "max_completion_tokens")
        max_tokens = a if b is None else b if a is None else max(a, b)
        rf = body.get("response_format")
        response_format = isinstance(rf, dict) and rf.get("type") not in (None, "text")
    elif endpoint == "completions":
        if "prompt" not in body:
            raise BadRequest("'prompt' is required", "prompt")
        chars = _texts(body.get("prompt"), "prompt")
        lp = body.get("logprobs")
        logprobs = lp is not None and lp is not False and lp != 0
        max_tokens = _int(body, "max_tokens")
    elif endpoint == "embeddings":
        if "input" not in body:
            raise BadRequest("'input' is required", "input")
        chars = _texts(body.get("input"), "input")
    else:  # responses
        raw = body.get("input")
        if isinstance(raw, str):
            chars = len(raw)
        elif raw is None:
            chars = 0
        else:
            chars, images = _messages(raw, "input")
        instructions = body.get("instructions")
        if isinstance(instructions, str):
            chars += len(instructions)
        max_tokens = _int(body, "max_output_tokens")
        include = body.get("include")
        logprobs = bool(body.get("top_logprobs")) or (isinstance(include, list) and any(
            isinstance(x, str) and "logprobs" in x for x in include))
        text = body.get("text")
        fmt = text.get("format") if isinstance(text, dict) else None
        response_format = isinstance(fmt, dict) and fmt.get("type") not in (None, "text")
    if max_tokens is not None and max_tokens < 1:
        raise BadRequest("the token bound must be at least 1", "max_tokens")
    return RequestFacts(
        endpoint=endpoint, model=model, stream=stream, tools=tools, images=images, logprobs=logprobs,
        n=1 if n is None else n, response_format=response_format, max_tokens=max_tokens,
        temperature=temperature, top_p=top_p, input_chars=chars,
    )


def estimate_tokens(facts: RequestFacts, *, default_bound: int | None = None) -> int:
    """A reservation for the rate limiter (input chars / 4 + the completion bound x n), corrected to the
    real usage when the response ends. ``default_bound`` is the bound sent when the client set none."""
    bound = facts.max_tokens if facts.max_tokens is not None else default_bound
    return facts.input_chars // 4 + 1 + (bound or 0) * max(facts.n, 1)
