"""OpenAI chat completions <-> Anthropic Messages API: requests, replies, errors and usage, as pure functions.

For an Anthropic backend the gateway translates the request (`to_anthropic`), the reply
(`from_anthropic` for JSON; nexus/core/adapters/anthropic_stream.py for SSE) and upstream errors
(`from_anthropic_error`); nexus/core/adapters/anthropic.py is the adapter built from these.

Invariants:
- Pure: no I/O, no clock, no randomness; `model` and `created` come in as arguments.
- Only fields with a known mapping are forwarded; the rest is dropped, never passed through. A
  malformed or inexpressible request raises `TranslationError` (a ValueError carrying the OpenAI
  `param`, for a 400); no input makes these functions raise anything else.
- Output obeys Anthropic's rules: system messages go to top-level `system` (joined by a blank line);
  roles alternate (same-role neighbours merge, tool results first in a user turn); `max_tokens` is
  always set (default 4096); temperature is clamped to 0..1; empty text blocks/messages are dropped.
- JSON mode is emulated faithfully: `response_format` json_object / json_schema becomes one forced tool
  (`JSON_TOOL`, its input_schema the requested schema) whose input comes back as the message's JSON text
  (`finish_reason` stop), in JSON and in streams (`input_json_delta` becomes content deltas). With tools of
  its own the request cannot be emulated (the forced tool would disable them): a 400 naming response_format.
- `tool_choice: "none"` keeps the tools and sends Anthropic's `{"type": "none"}`.
- `prompt_tokens` counts all input tokens (input + cache writes + cache reads; reads also appear
  as `prompt_tokens_details.cached_tokens`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson

from nexus.core.adapters.base import TranslationError
from nexus.core.usage import Usage, count

__all__ = [
    "DEFAULT_MAX_TOKENS",
    "FINISH_REASONS",
    "JSON_TOOL",
    "USAGE_KEYS",
    "as_object",
    "check_message",
    "error_object",
    "from_anthropic",
    "from_anthropic_error",
    "json_emulated",
    "loads",
    "message_usage",
    "to_anthropic",
    "to_usage",
    "usage_problem",
]

DEFAULT_MAX_TOKENS = 4096
JSON_TOOL = "json_response"  # the forced tool that carries an emulated JSON mode answer
_EMPTY: Mapping[str, Any] = {}
FINISH_REASONS = {"end_turn": "stop", "stop_sequence": "stop", "pause_turn": "stop", "max_tokens": "length",
                  "tool_use": "tool_calls", "refusal": "content_filter"}
_INVALID = "invalid_request_error"
_ERRORS: dict[str, tuple[str, str | None]] = {  # Anthropic error type -> (OpenAI type, code)
    _INVALID: (_INVALID, None), "authentication_error": (_INVALID, "invalid_api_key"),
    "permission_error": (_INVALID, "permission_denied"), "not_found_error": (_INVALID, "model_not_found"),
    "request_too_large": (_INVALID, "request_too_large"), "api_error": ("server_error", None),
    "rate_limit_error": ("rate_limit_error", "rate_limit_exceeded"), "overloaded_error": ("server_error", "overloaded")}
USAGE_KEYS = ("input_tokens", "output_tokens", "cache_creation_input_tokens", "cache_read_input_tokens")


def _need(ok: bool, message: str, param: str) -> None:
    if not ok:
        raise TranslationError(message, param)


def _count(value: Any) -> int:
    return count(value) or 0


def usage_problem(raw: Any) -> str | None:
    """Why an Anthropic usage object cannot be billed (a count that is not one), or None."""
    if raw is None:
        return None
    if not isinstance(raw, Mapping):
        return f"usage is {type(raw).__name__}, not an object"
    for key in USAGE_KEYS:
        if raw.get(key) is not None and count(raw[key]) is None:
            return f"usage.{key} is {str(raw[key])[:40]!r}, not a token count"
    return None


def to_usage(raw: Mapping[str, Any]) -> Usage:
    cached = _count(raw.get("cache_read_input_tokens"))
    prompt = _count(raw.get("input_tokens")) + _count(raw.get("cache_creation_input_tokens")) + cached
    return Usage(prompt, _count(raw.get("output_tokens")), cached)


def message_usage(message: Mapping[str, Any]) -> Usage | None:
    """The billable usage of an Anthropic message, None when absent or invalid."""
    raw = message.get("usage")
    return to_usage(raw) if isinstance(raw, Mapping) and usage_problem(raw) is None else None


def check_message(payload: bytes) -> tuple[dict[str, Any] | None, str | None]:
    """(the parsed message, None) when `payload` is an Anthropic message, else (None, what is wrong)."""
    obj = loads(payload)
    if not isinstance(obj, dict):
        head = payload[:40].decode("utf-8", "replace")
        return None, f"answered 200 with a body that is not a JSON object (starts {head!r})"
    if obj.get("type") != "message" or not isinstance(obj.get("content"), list):
        return None, "answered 200 with an object that is not a message"
    return obj, None


def as_object(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else _EMPTY


def loads(raw: str | bytes) -> Any:  # None when `raw` is not JSON
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None


# ---- request: OpenAI -> Anthropic -------------------------------------------------------------
def to_anthropic(body: Mapping[str, Any], model: str) -> dict[str, Any]:
    """An OpenAI chat completion request as an Anthropic Messages request for `model`."""
    _need(isinstance(messages := body.get("messages"), list), "'messages' must be a list", "messages")
    system: list[str] = []
    turns: list[dict[str, Any]] = []
    for i, m in enumerate(messages):
        where = f"messages[{i}]"
        _need(isinstance(m, Mapping), f"{where} must be an object", where)
        role = m.get("role")
        if role in ("system", "developer"):
            system += [b["text"] for b in _blocks(m.get("content"), where, images=False)]
            continue
        if role == "user":
            blocks = _blocks(m.get("content"), where)
        elif role == "assistant":
            blocks = _blocks(m.get("content"), where, images=False) + _tool_uses(m.get("tool_calls"), where)
        elif role == "tool":
            role, blocks = "user", [_tool_result(m, where)]
        else:
            raise TranslationError(f"{where}.role: unsupported role {role!r}", f"{where}.role")
        if blocks and turns and turns[-1]["role"] == role:
            turns[-1]["content"] += blocks
        elif blocks:
            turns.append({"role": role, "content": blocks})
    _need(bool(turns), "at least one non-empty user or assistant message is required", "messages")
    for turn in turns:  # Anthropic wants a user turn's tool_result blocks before anything else
        if turn["role"] == "user":
            turn["content"].sort(key=lambda b: b["type"] != "tool_result")
    max_tokens = _number(body, "max_completion_tokens", True) or _number(body, "max_tokens", True)
    out: dict[str, Any] = {"model": model, "messages": turns, "max_tokens": max_tokens or DEFAULT_MAX_TOKENS}
    if system:
        out["system"] = "\n\n".join(system)
    if (temperature := _number(body, "temperature")) is not None:
        out["temperature"] = min(max(temperature, 0.0), 1.0)
    if (top_p := _number(body, "top_p")) is not None:
        out["top_p"] = top_p
    stop = body.get("stop")
    stops = [stop] if isinstance(stop, str) else [] if stop is None else stop
    _need(isinstance(stops, list) and all(isinstance(s, str) for s in stops),
          "'stop' must be a string or a list of strings", "stop")
    if stops := [s for s in stops if s]:
        out["stop_sequences"] = stops
    if body.get("stream") is True:
        out["stream"] = True
    _tools(body, out)
    _json_mode(body, out)
    if isinstance(user := body.get("user"), str) and user:
        out["metadata"] = {"user_id": user}
    return out


def _number(body: Mapping[str, Any], key: str, positive_int: bool = False) -> Any:
    """`body[key]`, which must be absent, null, a non-negative number or (when asked) a positive integer."""
    value, lowest, what = body.get(key), *((1, "positive integer") if positive_int else (0, "non-negative number"))
    ok = isinstance(value, int if positive_int else int | float) and not isinstance(value, bool) and value >= lowest
    _need(value is None or ok, f"'{key}' must be a {what}", key)
    return value


def _blocks(content: Any, where: str, images: bool = True) -> list[dict[str, Any]]:
    """Content blocks of a message's content (a string or a list of parts); unknown parts are dropped."""
    if content is None or isinstance(content, str):
        return [{"type": "text", "text": content}] if content else []
    _need(isinstance(content, list), f"{where}.content must be a string or a list of parts", f"{where}.content")
    blocks: list[dict[str, Any]] = []
    for j, part in enumerate(content):
        kind, at = as_object(part).get("type"), f"{where}.content[{j}]"
        if kind == "text" and isinstance(text := part.get("text"), str) and text:
            blocks.append({"type": "text", "text": text})
        elif kind == "image_url" and images:
            blocks.append(_image(part.get("image_url"), f"{at}.image_url"))
    return blocks


def _image(spec: Any, where: str) -> dict[str, Any]:
    url = spec.get("url") if isinstance(spec, Mapping) else spec
    if isinstance(url, str):
        head, comma, data = url.partition(",")
        lowered = head.lower()
        if comma and lowered.startswith("data:") and lowered.endswith(";base64") and "/" in lowered:
            return {"type": "image", "source": {"type": "base64", "media_type": lowered[5:-7], "data": data}}
        if url[:8].lower().startswith(("http://", "https://")):
            return {"type": "image", "source": {"type": "url", "url": url}}
    raise TranslationError(f"{where}: an image must be a base64 data: URL or an http(s) URL", where)


def _tool_uses(calls: Any, where: str) -> list[dict[str, Any]]:
    calls = [] if calls is None else calls
    _need(isinstance(calls, list), f"{where}.tool_calls must be a list", f"{where}.tool_calls")
    blocks = []
    for j, call in enumerate(calls):
        at, fn = f"{where}.tool_calls[{j}]", as_object(as_object(call).get("function"))
        call_id, name, args = as_object(call).get("id"), fn.get("name"), fn.get("arguments")
        _need(isinstance(call_id, str) and isinstance(name, str), f"{at} needs a string id and function.name", at)
        parsed = loads(args) if isinstance(args, str) and args.strip() else args or {}
        _need(isinstance(parsed, Mapping), f"{at}.function.arguments must be a JSON object", f"{at}.function.arguments")
        blocks.append({"type": "tool_use", "id": call_id, "name": name, "input": dict(parsed)})
    return blocks


def _tool_result(m: Mapping[str, Any], where: str) -> dict[str, Any]:
    tool_use_id, at = m.get("tool_call_id"), f"{where}.tool_call_id"
    _need(isinstance(tool_use_id, str) and bool(tool_use_id), f"{at} must be a non-empty string", at)
    content = m.get("content")
    content = content if isinstance(content, str) else _blocks(content, where)
    return {"type": "tool_result", "tool_use_id": tool_use_id, **({"content": content} if content else {})}


def json_emulated(request: Mapping[str, Any]) -> bool:
    """The translated request forces `JSON_TOOL`: its answer is JSON text, not a tool call."""
    choice = request.get("tool_choice")
    return isinstance(choice, Mapping) and choice.get("type") == "tool" and choice.get("name") == JSON_TOOL


def _json_mode(body: Mapping[str, Any], out: dict[str, Any]) -> None:
    fmt = as_object(body.get("response_format"))
    kind = fmt.get("type")
    if kind not in ("json_object", "json_schema"):
        _need(kind in (None, "text"), "'response_format.type' must be text, json_object or json_schema",
              "response_format.type")
        return
    _need("tools" not in out, "response_format cannot be combined with tools on an Anthropic backend",
          "response_format")
    schema: Any = {"type": "object"}
    if kind == "json_schema":
        spec = as_object(fmt.get("json_schema"))
        schema = spec.get("schema")
        _need(isinstance(schema, Mapping) and schema.get("type", "object") == "object",
              "response_format.json_schema.schema must be an object schema", "response_format.json_schema.schema")
    out["tools"] = [{"name": JSON_TOOL, "description": "Answer with the JSON value the user asked for.",
                     "input_schema": dict(schema)}]
    out["tool_choice"] = {"type": "tool", "name": JSON_TOOL}


def _tools(body: Mapping[str, Any], out: dict[str, Any]) -> None:
    tools, choice = body.get("tools"), body.get("tool_choice")
    if tools is None:
        return
    _need(isinstance(tools, list), "'tools' must be a list", "tools")
    specs = []
    for i, tool in enumerate(tools):
        _need(isinstance(tool, Mapping), f"tools[{i}] must be an object", f"tools[{i}]")
        if tool.get("type", "function") != "function":
            continue  # built-in OpenAI tools have no Anthropic counterpart
        fn, at = as_object(tool.get("function")), f"tools[{i}].function.name"
        _need(isinstance(name := fn.get("name"), str) and bool(name), f"{at} must be a non-empty string", at)
        spec: dict[str, Any] = {"name": name}
        if isinstance(description := fn.get("description"), str) and description:
            spec["description"] = description
        params = fn.get("parameters")
        spec["input_schema"] = dict(params) if isinstance(params, Mapping) else {"type": "object", "properties": {}}
        specs.append(spec)
    if not specs:
        return
    out["tools"] = specs
    if choice is None or choice == "auto":
        tc: dict[str, Any] = {"type": "auto"}
    elif choice == "none":
        tc = {"type": "none"}
    elif choice == "required":
        tc = {"type": "any"}
    elif as_object(choice).get("type") == "function" and isinstance(
            name := as_object(choice.get("function")).get("name"), str):
        tc = {"type": "tool", "name": name}
    else:
        raise TranslationError("'tool_choice' must be none, auto, required or a function", "tool_choice")
    if body.get("parallel_tool_calls") is False and tc["type"] != "none":
        tc["disable_parallel_tool_use"] = True
    if choice is not None or len(tc) > 1:
        out["tool_choice"] = tc


# ---- response and errors: Anthropic -> OpenAI -------------------------------------------------
def from_anthropic(resp: Mapping[str, Any], model: str, created: int, json_tool: bool = False) -> dict[str, Any]:
    """An Anthropic message as an OpenAI `chat.completion` (usage only when Anthropic reported it);
    `json_tool`: the request emulated JSON mode, so the forced tool's input is the answer's text."""
    resp = as_object(resp)
    texts: list[str] = []
    calls: list[dict[str, Any]] = []
    content = resp.get("content")
    for block in content if isinstance(content, list) else ():
        kind = as_object(block).get("type")
        if kind == "text" and isinstance(text := block.get("text"), str):
            texts.append(text)
        elif kind == "tool_use" and json_tool and block.get("name") == JSON_TOOL:
            texts.append(orjson.dumps(block.get("input") or {}).decode())
        elif kind == "tool_use":
            arguments = orjson.dumps(block.get("input") or {}).decode()
            calls.append({"id": block.get("id"), "type": "function",
                          "function": {"name": block.get("name"), "arguments": arguments}})
    text = "".join(texts)
    message = {"role": "assistant", "content": text if text or not calls else None,
               **({"tool_calls": calls} if calls else {})}
    finish = FINISH_REASONS.get(str(resp.get("stop_reason")), "stop")
    finish = "stop" if json_tool and finish == "tool_calls" and not calls else finish
    choice = {"index": 0, "message": message, "logprobs": None, "finish_reason": finish}
    out = {"id": resp.get("id"), "object": "chat.completion", "created": created, "model": model, "choices": [choice]}
    if isinstance(usage := resp.get("usage"), Mapping) and usage_problem(usage) is None:
        out["usage"] = to_usage(usage).to_openai()  # invalid usage is left out: billed from the estimate
    return out


def from_anthropic_error(status: int, body: bytes) -> dict[str, Any]:
    """An Anthropic error response as the OpenAI error envelope (the HTTP status is the caller's)."""
    err = as_object(as_object(loads(body)).get("error"))
    kind, message = err.get("type"), err.get("message")
    if not isinstance(message, str) or not message:
        text = body.decode("utf-8", "replace").strip()[:500]
        message = f"upstream error (HTTP {status})" + (f": {text}" if text else "")
    return {"error": error_object(message, kind, status)}


def error_object(message: str, kind: Any, status: int) -> dict[str, Any]:
    if isinstance(kind, str) and kind in _ERRORS:
        etype, code = _ERRORS[kind]
    else:
        etype = "rate_limit_error" if status == 429 else "server_error" if status >= 500 else _INVALID
        code = kind if isinstance(kind, str) else None
    return {"message": message, "type": etype, "param": None, "code": code}
