"""Extract a request's `Requirements` from an OpenAI chat-completions body.

Runs once per request, before the pipeline, on an already-validated body. The token estimate is the
usual heuristic (about 4 characters a token, plus a few tokens of framing per message, plus a fixed
cost per image); it feeds the context-length check and the cost estimate, and the backend's reported
usage replaces it for billing.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from nexus.core.pipeline.intent import Requirements

__all__ = ["CHARS_PER_TOKEN", "IMAGE_TOKENS", "completion_requirements", "estimate_text_tokens",
           "extract_requirements"]

CHARS_PER_TOKEN = 4
MESSAGE_OVERHEAD_TOKENS = 4
IMAGE_TOKENS = 765
_IMAGE_PART_TYPES = frozenset({"image_url", "image", "input_image"})


def estimate_text_tokens(text: str) -> int:
    return (len(text) + CHARS_PER_TOKEN - 1) // CHARS_PER_TOKEN


def _content_tokens(content: Any) -> tuple[int, bool]:
    """(tokens, has_image) for a message's content: a string or a list of parts."""
    if isinstance(content, str):
        return estimate_text_tokens(content), False
    tokens, vision = 0, False
    if isinstance(content, list):
        for part in content:
            if not isinstance(part, Mapping):
                continue
            kind = part.get("type")
            if kind in _IMAGE_PART_TYPES:
                vision = True
                tokens += IMAGE_TOKENS
            else:
                text = part.get("text")
                if isinstance(text, str):
                    tokens += estimate_text_tokens(text)
    return tokens, vision


def extract_requirements(body: Mapping[str, Any]) -> Requirements:
    tokens, vision = 0, False
    for message in body.get("messages") or ():
        if not isinstance(message, Mapping):
            continue
        t, v = _content_tokens(message.get("content"))
        tokens += t + MESSAGE_OVERHEAD_TOKENS
        vision = vision or v
    tools = bool(body.get("tools") or body.get("functions"))
    fmt = body.get("response_format")
    kind = fmt.get("type") if isinstance(fmt, Mapping) else None
    return Requirements(
        vision=vision,
        tools=tools,
        json_mode=kind in ("json_object", "json_schema"),
        input_tokens=tokens,
        max_output_tokens=_max_tokens(body),
        stream=bool(body.get("stream")),
        json_schema=kind == "json_schema",
        choices=_choices(body),
        logprobs=body.get("logprobs") is True or _positive(body.get("top_logprobs")),
    )


def completion_requirements(body: Mapping[str, Any]) -> Requirements:
    """A legacy text completion (`prompt` a string or a list of strings); `logprobs` there is a count."""
    prompt = body.get("prompt")
    texts = [prompt] if isinstance(prompt, str) else [p for p in prompt if isinstance(p, str)] \
        if isinstance(prompt, list) else []
    return Requirements(
        input_tokens=sum(estimate_text_tokens(t) for t in texts),
        max_output_tokens=_max_tokens(body),
        stream=bool(body.get("stream")),
        choices=_choices(body),
        logprobs=_positive(body.get("logprobs")),
        completions=True,
    )


def _positive(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _choices(body: Mapping[str, Any]) -> int:
    n = body.get("n")
    return n if _positive(n) else 1


def _max_tokens(body: Mapping[str, Any]) -> int | None:
    max_tokens = body.get("max_completion_tokens")
    if max_tokens is None:
        max_tokens = body.get("max_tokens")
    if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 0:
        return None
    return max_tokens
