"""The Anthropic Messages API as a backend adapter.

Every client request is translated (nexus/core/adapters/anthropic_messages.py) and sent to `/v1/messages`
whatever OpenAI path it came on; replies, errors and streams (nexus/core/adapters/anthropic_stream.py) are
translated back. The key goes in `x-api-key`, with `anthropic-version` on every request, probes included;
a probe lists `GET /v1/models` (authenticated and free; it lists the models the key may use).
"""

from __future__ import annotations

from typing import Any

import orjson

from nexus.core.adapters.anthropic_messages import (
    DEFAULT_MAX_TOKENS,
    check_message,
    from_anthropic,
    from_anthropic_error,
    json_emulated,
    to_anthropic,
    usage_problem,
)
from nexus.core.adapters.anthropic_stream import StreamTranslator
from nexus.core.adapters.base import Answer, BackendAdapter, Call, InvalidAnswer, TranslationError
from nexus.core.adapters.openai import completion_chars
from nexus.core.usage import Usage, openai_usage

__all__ = [
    "ANTHROPIC",
    "ANTHROPIC_VERSION",
    "DEFAULT_MAX_TOKENS",
    "AnthropicAdapter",
    "StreamTranslator",
    "TranslationError",
    "Usage",
    "from_anthropic",
    "from_anthropic_error",
    "to_anthropic",
]

ANTHROPIC_VERSION = "2023-06-01"


class AnthropicAdapter(BackendAdapter):
    name = "anthropic"

    def auth_headers(self, key: str | None) -> dict[str, str]:
        return {"anthropic-version": ANTHROPIC_VERSION, **({"x-api-key": key} if key else {})}

    def encode(self, body: dict[str, Any], raw: bytes, *, path: str, model: str, stream: bool,
               ask_usage: bool) -> Call:
        request = to_anthropic({**body, "stream": stream}, model)
        return Call("/v1/messages", orjson.dumps(request), json_answer=json_emulated(request))

    def answer(self, payload: bytes, *, model: str, created: int, embeddings: bool,
               json_answer: bool = False) -> Answer:
        message, problem = check_message(payload)
        if message is None:
            raise InvalidAnswer(problem or "answered 200 with something that is not a message")
        reply = from_anthropic(message, model, created, json_answer)
        usage, _ = openai_usage(reply.get("usage"))  # the translation leaves invalid usage out
        return Answer(orjson.dumps(reply), usage, usage_problem(message.get("usage")), completion_chars(reply))

    def error_body(self, status: int, payload: bytes, backend: str) -> bytes:
        return orjson.dumps(from_anthropic_error(status, payload))

    def stream(self, *, model: str, created: int, asked_usage: bool, client_wants_usage: bool,
               json_answer: bool = False) -> StreamTranslator:
        return StreamTranslator(model, created, client_wants_usage, json_answer)


ANTHROPIC = AnthropicAdapter()
