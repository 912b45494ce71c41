"""Ollama's native API (/api/chat, /api/generate, /api/embed, /api/tags, /api/show) <-> the gateway's API.

`chat_to_chat` and `generate_to_chat` turn Ollama requests into chat completions bodies (`format` "json"
or a schema becomes `response_format`; `options` temperature/top_p/seed/stop/num_predict map to their chat
fields; `images` become data: URL parts; tool calls carry their arguments as objects). `from_chat` renders
a chat completion as Ollama's answer, `OllamaStream` the chat stream as NDJSON lines ending in one
`"done": true` line with `done_reason` and the token counts; `embed_to_embeddings` / `from_embeddings` do
the same for /api/embed; `tags` and `show` describe the models a snapshot routes. Errors are `{"error": "..."}`.

Ollama's server streams when `stream` is absent (the Python client sends `false` explicitly): absent means
stream, here too. Options with no chat counterpart (`num_ctx`, `top_k`, `keep_alive`...) are accepted and
do not reach a chat backend.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable, Mapping
from typing import Any

import orjson

from nexus.core.gateway_errors import BadRequest
from nexus.core.inbound.common import ChatRenderer, need, obj, usage_of
from nexus.core.usage import Usage

__all__ = ["OllamaStream", "chat_to_chat", "embed_to_embeddings", "error_body", "from_chat", "from_embeddings",
           "generate_to_chat", "show", "tags", "wants_stream"]

_DONE_REASON = {"stop": "stop", "length": "length", "tool_calls": "stop", "content_filter": "stop"}
_OPTIONS = {"temperature": "temperature", "top_p": "top_p", "seed": "seed", "stop": "stop",
            "num_predict": "max_tokens", "presence_penalty": "presence_penalty",
            "frequency_penalty": "frequency_penalty"}
_MAGIC = ((b"\x89PNG", "image/png"), (b"\xff\xd8\xff", "image/jpeg"), (b"GIF8", "image/gif"),
          (b"RIFF", "image/webp"))


def wants_stream(body: Mapping[str, Any]) -> bool:
    return body.get("stream") is not False


def error_body(message: str) -> bytes:
    return orjson.dumps({"error": message})


def _common(body: Mapping[str, Any], messages: list[dict[str, Any]]) -> dict[str, Any]:
    need(isinstance(body.get("model"), str) and bool(body["model"]), "must be a non-empty string", "model")
    out: dict[str, Any] = {"model": body["model"], "messages": messages}
    options = body.get("options")
    need(options is None or isinstance(options, Mapping), "must be an object", "options")
    for key, target in _OPTIONS.items():
        value = obj(options).get(key)
        if key == "num_predict" and isinstance(value, int | float) and value < 0:
            continue  # -1: no limit
        if value is not None:
            out[target] = [value] if key == "stop" and isinstance(value, str) else value
    fmt = body.get("format")
    if fmt == "json":
        out["response_format"] = {"type": "json_object"}
    elif isinstance(fmt, Mapping):
        out["response_format"] = {"type": "json_schema", "json_schema": {"name": "format", "schema": dict(fmt)}}
    else:
        need(fmt in (None, ""), "must be \"json\" or a JSON schema", "format")
    if wants_stream(body):
        out["stream"] = True
        out["stream_options"] = {"include_usage": True}
    return out


def _image(data: Any, at: str) -> dict[str, Any]:
    need(isinstance(data, str), "must be base64 image data", at)
    try:
        head = base64.b64decode(data[:16] + "=" * (-len(data[:16]) % 4))
    except (binascii.Error, ValueError):
        raise BadRequest(f"{at}: must be base64 image data", param=at) from None
    media = next((m for magic, m in _MAGIC if head.startswith(magic)), "image/png")
    return {"type": "image_url", "image_url": {"url": f"data:{media};base64,{data}"}}


def _content(text: Any, images: Any, at: str) -> Any:
    need(text is None or isinstance(text, str), "must be a string", f"{at}.content")
    if not images:
        return text or ""
    need(isinstance(images, list), "must be a list", f"{at}.images")
    parts: list[dict[str, Any]] = [{"type": "text", "text": text}] if text else []
    return parts + [_image(img, f"{at}.images.{k}") for k, img in enumerate(images)]


def chat_to_chat(body: Mapping[str, Any]) -> dict[str, Any]:
    need(isinstance(msgs := body.get("messages"), list) and bool(msgs), "must be a non-empty list", "messages")
    messages: list[dict[str, Any]] = []
    calls_seen = 0
    for i, m in enumerate(msgs):
        at = f"messages.{i}"
        need(isinstance(m, Mapping), "must be an object", at)
        role = m.get("role")
        need(role in ("system", "user", "assistant", "tool"), "must be system, user, assistant or tool", f"{at}.role")
        out: dict[str, Any] = {"role": role, "content": _content(m.get("content"), m.get("images"), at)}
        if role == "assistant" and m.get("tool_calls"):
            need(isinstance(m["tool_calls"], list), "must be a list", f"{at}.tool_calls")
            out["tool_calls"] = []
            for k, call in enumerate(m["tool_calls"]):
                fn = obj(obj(call).get("function"))
                need(isinstance(fn.get("name"), str), "must be a string", f"{at}.tool_calls.{k}.function.name")
                args = fn.get("arguments") or {}
                out["tool_calls"].append({"id": f"call_{calls_seen}", "type": "function", "function": {
                    "name": fn["name"], "arguments": args if isinstance(args, str) else orjson.dumps(args).decode()}})
                calls_seen += 1
        if role == "tool":  # Ollama answers tools in order; the chat API names the call answered
            out["tool_call_id"] = f"call_{sum(1 for x in messages if x['role'] == 'tool')}"
        messages.append(out)
    result = _common(body, messages)
    if tools := body.get("tools"):
        need(isinstance(tools, list), "must be a list", "tools")
        result["tools"] = [dict(t) for t in tools if isinstance(t, Mapping)]
    return result


def generate_to_chat(body: Mapping[str, Any]) -> dict[str, Any]:
    need(isinstance(body.get("prompt"), str), "must be a string", "prompt")
    need(body.get("suffix") in (None, ""), "fill-in-the-middle needs a backend's native API", "suffix")
    messages: list[dict[str, Any]] = []
    if isinstance(system := body.get("system"), str) and system:
        messages.append({"role": "system", "content": system})
    messages.append({"role": "user", "content": _content(body["prompt"], body.get("images"), "prompt")})
    return _common(body, messages)


def _counts(usage: Usage | None) -> dict[str, Any]:
    u = usage or Usage()
    return {"total_duration": 0, "load_duration": 0, "prompt_eval_count": u.prompt_tokens,
            "prompt_eval_duration": 0, "eval_count": u.completion_tokens, "eval_duration": 0}


def _calls(tool_calls: Any) -> list[dict[str, Any]]:
    out = []
    for call in tool_calls or ():
        fn = obj(obj(call).get("function"))
        try:
            args = orjson.loads(fn.get("arguments") or "{}")
        except (orjson.JSONDecodeError, TypeError):
            args = {}
        out.append({"function": {"name": fn.get("name"), "arguments": args if isinstance(args, dict) else {}}})
    return out


def from_chat(chat: Mapping[str, Any], model: str, created_at: str, generate: bool) -> dict[str, Any]:
    choice = obj((chat.get("choices") or [{}])[0])
    message = obj(choice.get("message"))
    text = message.get("content") if isinstance(message.get("content"), str) else ""
    out: dict[str, Any] = {"model": model, "created_at": created_at}
    if generate:
        out["response"] = text
    else:
        msg: dict[str, Any] = {"role": "assistant", "content": text}
        if calls := _calls(message.get("tool_calls")):
            msg["tool_calls"] = calls
        out["message"] = msg
    reason = _DONE_REASON.get(str(choice.get("finish_reason")), "stop")
    return {**out, "done": True, "done_reason": reason, **_counts(usage_of(chat))}


def embed_to_embeddings(body: Mapping[str, Any]) -> dict[str, Any]:
    need(isinstance(body.get("model"), str) and bool(body["model"]), "must be a non-empty string", "model")
    data = body.get("input")
    need(isinstance(data, str) or (isinstance(data, list) and bool(data) and all(isinstance(x, str) for x in data)),
         "must be a string or a non-empty list of strings", "input")
    out: dict[str, Any] = {"model": body["model"], "input": data}
    if body.get("dimensions") is not None:
        out["dimensions"] = body["dimensions"]
    return out


def from_embeddings(resp: Mapping[str, Any], model: str) -> dict[str, Any]:
    items = sorted((obj(d) for d in resp.get("data") or ()), key=lambda d: d.get("index") or 0)
    usage = obj(resp.get("usage"))
    return {"model": model, "embeddings": [d.get("embedding") for d in items], "total_duration": 0,
            "load_duration": 0, "prompt_eval_count": usage.get("prompt_tokens") or 0}


def _details() -> dict[str, Any]:
    return {"parent_model": "", "format": "", "family": "", "families": None, "parameter_size": "",
            "quantization_level": ""}


def tags(models: list[str], modified_at: str) -> dict[str, Any]:
    return {"models": [{"name": m, "model": m, "modified_at": modified_at, "size": 0, "digest": "",
                        "details": _details()} for m in models]}


def show(model: str, context_length: int | None, capabilities: list[str], modified_at: str) -> dict[str, Any]:
    info: dict[str, Any] = {"general.architecture": "nexus", "general.name": model}
    if context_length is not None:
        info["nexus.context_length"] = context_length
    return {"modelfile": "", "parameters": "", "template": "", "details": _details(), "model_info": info,
            "capabilities": capabilities, "modified_at": modified_at}


class OllamaStream(ChatRenderer):
    """The gateway's chat stream as Ollama's NDJSON: one line per content delta, then the `done` line."""

    __slots__ = ("_calls", "_cost_of", "_created_at", "_finish", "_generate", "_model")

    def __init__(self, model: str, created_at: str, generate: bool,
                 cost_of: Callable[[Usage], float] | None = None) -> None:
        super().__init__()
        self._model, self._created_at, self._generate, self._cost_of = model, created_at, generate, cost_of
        self._calls: dict[int, dict[str, Any]] = {}
        self._finish: Any = None

    def _line(self, payload: dict[str, Any]) -> bytes:
        return orjson.dumps({"model": self._model, "created_at": self._created_at, **payload}) + b"\n"

    def _piece(self, text: str, calls: list[dict[str, Any]] | None = None) -> dict[str, Any]:
        if self._generate:
            return {"response": text}
        msg: dict[str, Any] = {"role": "assistant", "content": text}
        if calls:
            msg["tool_calls"] = calls
        return {"message": msg}

    def fail(self, message: str) -> bytes:
        self.done = True
        return orjson.dumps({"error": message}) + b"\n"

    def _chunk(self, event: dict[str, Any]) -> bytes:
        out = bytearray()
        for choice in event.get("choices") or ():
            delta = obj(obj(choice).get("delta"))
            if isinstance(text := delta.get("content"), str) and text:
                out += self._line({**self._piece(text), "done": False})
            for call in delta.get("tool_calls") or ():  # Ollama sends whole calls: gather the argument pieces
                c = obj(call)
                entry = self._calls.setdefault(c.get("index") if isinstance(c.get("index"), int) else 0,
                                               {"id": None, "name": "", "arguments": ""})
                fn = obj(c.get("function"))
                entry["name"] += fn.get("name") or ""
                entry["arguments"] += fn.get("arguments") or ""
            if reason := obj(choice).get("finish_reason"):
                self._finish = reason
        return bytes(out)

    def _end(self) -> bytes:
        self.done = True
        out = b""
        if self._calls and not self._generate:
            calls = _calls({"function": c} for _, c in sorted(self._calls.items()))
            out = self._line({**self._piece("", calls), "done": False})
        last = {**self._piece(""), "done": True, "done_reason": _DONE_REASON.get(str(self._finish), "stop"),
                **_counts(self.usage)}
        if self._cost_of is not None and self.usage is not None:
            last["nexus_cost_usd"] = round(self._cost_of(self.usage), 10)
        return out + self._line(last)
