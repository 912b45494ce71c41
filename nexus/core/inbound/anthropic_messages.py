"""Anthropic Messages (POST /v1/messages) <-> chat completions, for clients that speak Anthropic's API.

`to_chat` turns a Messages request into a chat completions body, `from_chat` a chat completion into a
Messages `message`, `MessagesStream` the gateway's chat stream into Anthropic's event sequence
(`event:` + `data:` lines: message_start, content_block_start, ping, content_block_delta with text_delta
or input_json_delta, content_block_stop, message_delta with stop_reason and usage, message_stop), and
`error_body` any error into Anthropic's envelope `{"type": "error", "error": {"type", "message"}}`.
An Anthropic backend is not served through this translation: it gets the request as sent (the gateway's
native path), so nothing is translated twice.

Translation rules: `system` becomes the first message; user `tool_result` blocks become `tool` messages
(before the turn's other content), assistant `tool_use` blocks `tool_calls`; images become `image_url`
parts (base64 as data: URLs); `tool_choice` any/tool/none map to required/function/none; `stop_sequences`
to `stop`; `metadata.user_id` to `user`. Fields with no chat counterpart that change nothing about the
answer's content (`top_k`, `thinking`, `service_tier`, `cache_control` marks, earlier `thinking` blocks)
are dropped on this path; documents, server tools and unknown fields are refused (400 naming the field).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import orjson

from nexus.core.gateway_errors import BadRequest
from nexus.core.inbound.common import ChatRenderer, need, obj, positive_int, usage_of
from nexus.core.usage import Usage

__all__ = ["MessagesStream", "error_body", "error_type", "from_chat", "to_chat"]

_KNOWN = frozenset({"model", "messages", "max_tokens", "system", "stream", "temperature", "top_p", "top_k",
                    "stop_sequences", "tools", "tool_choice", "metadata", "thinking", "service_tier"})
_STOP = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use", "function_call": "tool_use",
         "content_filter": "refusal"}
_ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
                404: "not_found_error", 413: "request_too_large", 415: "invalid_request_error",
                429: "rate_limit_error", 500: "api_error", 502: "api_error", 503: "overloaded_error",
                504: "api_error", 529: "overloaded_error"}


# ---- request ----------------------------------------------------------------------------------
def to_chat(body: Mapping[str, Any]) -> dict[str, Any]:
    """A Messages request as a chat completions body (validated further by the gateway's chat schema)."""
    for key in body:
        need(key in _KNOWN, "unknown field (not a Messages API field this gateway can translate)", str(key))
    need(isinstance(body.get("model"), str) and bool(body["model"]), "must be a non-empty string", "model")
    need(positive_int(body.get("max_tokens")), "must be a positive integer", "max_tokens")
    need(isinstance(messages := body.get("messages"), list) and bool(messages), "must be a non-empty list",
         "messages")
    out_messages = _system(body.get("system"))
    for i, m in enumerate(messages):
        out_messages += _message(m, f"messages.{i}")
    out: dict[str, Any] = {"model": body["model"], "messages": out_messages, "max_tokens": body["max_tokens"]}
    for key in ("temperature", "top_p"):
        if body.get(key) is not None:
            out[key] = body[key]
    if (stops := body.get("stop_sequences")) is not None:
        need(isinstance(stops, list) and all(isinstance(s, str) for s in stops), "must be a list of strings",
             "stop_sequences")
        if stops:
            out["stop"] = stops
    if body.get("stream") is True:
        out["stream"] = True
        out["stream_options"] = {"include_usage": True}  # message_delta carries usage
    if isinstance(user := obj(body.get("metadata")).get("user_id"), str) and user:
        out["user"] = user
    _tools(body, out)
    return out


def _system(system: Any) -> list[dict[str, Any]]:
    if system is None or system == "":
        return []
    if isinstance(system, str):
        return [{"role": "system", "content": system}]
    need(isinstance(system, list), "must be a string or a list of text blocks", "system")
    texts = []
    for j, block in enumerate(system):
        need(obj(block).get("type") == "text" and isinstance(block.get("text"), str), "must be a text block",
             f"system.{j}")
        texts.append(block["text"])
    return [{"role": "system", "content": "\n\n".join(texts)}] if texts else []


def _message(m: Any, where: str) -> list[dict[str, Any]]:
    need(isinstance(m, Mapping), "must be an object", where)
    role, content = m.get("role"), m.get("content")
    need(role in ("user", "assistant"), "must be 'user' or 'assistant'", f"{where}.role")
    if isinstance(content, str):
        return [{"role": role, "content": content}]
    need(isinstance(content, list), "must be a string or a list of content blocks", f"{where}.content")
    tool_msgs, parts, calls = [], [], []
    for j, block in enumerate(content):
        at = f"{where}.content.{j}"
        kind = obj(block).get("type")
        if kind == "text":
            need(isinstance(block.get("text"), str), "must be a string", f"{at}.text")
            parts.append({"type": "text", "text": block["text"]})
        elif kind == "image" and role == "user":
            parts.append({"type": "image_url", "image_url": {"url": _image_url(block.get("source"), at)}})
        elif kind == "tool_result" and role == "user":
            tool_msgs.append(_tool_result(block, at))
        elif kind == "tool_use" and role == "assistant":
            need(isinstance(block.get("id"), str) and isinstance(block.get("name"), str),
                 "needs a string id and name", at)
            need(isinstance(block.get("input"), Mapping), "must be an object", f"{at}.input")
            calls.append({"id": block["id"], "type": "function",
                          "function": {"name": block["name"], "arguments": orjson.dumps(block["input"]).decode()}})
        elif kind in ("thinking", "redacted_thinking") and role == "assistant":
            continue  # earlier reasoning: not part of the conversation's content for another model
        else:
            raise BadRequest(f"{at}.type: block type {kind!r} cannot be sent in a {role} turn to this backend",
                             param=f"{at}.type")
    out: list[dict[str, Any]] = list(tool_msgs)
    if role == "assistant":
        text = "".join(p["text"] for p in parts)
        if text or calls:
            out.append({"role": "assistant", "content": text or None, **({"tool_calls": calls} if calls else {})})
    elif parts:
        only_text = all(p["type"] == "text" for p in parts)
        out.append({"role": "user", "content": "".join(p["text"] for p in parts) if only_text else parts})
    return out


def _image_url(source: Any, at: str) -> str:
    src = obj(source)
    if src.get("type") == "base64" and isinstance(src.get("media_type"), str) and isinstance(src.get("data"), str):
        return f"data:{src['media_type']};base64,{src['data']}"
    if src.get("type") == "url" and isinstance(src.get("url"), str):
        return src["url"]
    raise BadRequest(f"{at}.source: must be a base64 or url image source", param=f"{at}.source")


def _tool_result(block: Mapping[str, Any], at: str) -> dict[str, Any]:
    need(isinstance(block.get("tool_use_id"), str) and bool(block["tool_use_id"]), "must be a non-empty string",
         f"{at}.tool_use_id")
    content = block.get("content")
    if isinstance(content, list):
        need(all(obj(b).get("type") == "text" for b in content), "only text blocks can go to this backend",
             f"{at}.content")
        content = "".join(b.get("text") or "" for b in content)
    need(content is None or isinstance(content, str), "must be a string or a list of text blocks", f"{at}.content")
    text = content or ""
    if block.get("is_error") is True:
        text = f"Error: {text}" if text else "Error"
    return {"role": "tool", "tool_call_id": block["tool_use_id"], "content": text}


def _tools(body: Mapping[str, Any], out: dict[str, Any]) -> None:
    tools, choice = body.get("tools"), body.get("tool_choice")
    if tools is not None:
        need(isinstance(tools, list), "must be a list", "tools")
        specs = []
        for i, tool in enumerate(tools):
            t = obj(tool)
            need(t.get("type", "custom") == "custom", "server tools need an Anthropic backend", f"tools.{i}.type")
            need(isinstance(t.get("name"), str) and bool(t["name"]), "must be a non-empty string", f"tools.{i}.name")
            need(isinstance(t.get("input_schema"), Mapping), "must be an object", f"tools.{i}.input_schema")
            fn: dict[str, Any] = {"name": t["name"], "parameters": dict(t["input_schema"])}
            if isinstance(t.get("description"), str):
                fn["description"] = t["description"]
            specs.append({"type": "function", "function": fn})
        if specs:
            out["tools"] = specs
    if choice is None:
        return
    c = obj(choice)
    kind = c.get("type")
    if kind == "auto":
        mapped: Any = "auto"
    elif kind == "any":
        mapped = "required"
    elif kind == "none":
        mapped = "none"
    elif kind == "tool" and isinstance(c.get("name"), str):
        mapped = {"type": "function", "function": {"name": c["name"]}}
    else:
        raise BadRequest("tool_choice: must be auto, any, tool (with a name) or none", param="tool_choice")
    if "tools" in out:
        out["tool_choice"] = mapped
        if c.get("disable_parallel_tool_use") is True and mapped != "none":
            out["parallel_tool_calls"] = False


# ---- answer -----------------------------------------------------------------------------------
def _usage(usage: Usage | None) -> dict[str, int]:
    u = usage or Usage()
    return {"input_tokens": u.prompt_tokens, "output_tokens": u.completion_tokens}


def from_chat(chat: Mapping[str, Any], model: str, msg_id: str) -> dict[str, Any]:
    """A chat completion (its first choice) as an Anthropic message for `model`."""
    choices = chat.get("choices") or [{}]
    choice = obj(choices[0])
    message = obj(choice.get("message"))
    content: list[dict[str, Any]] = []
    if isinstance(text := message.get("content"), str) and text:
        content.append({"type": "text", "text": text})
    for call in message.get("tool_calls") or ():
        fn = obj(obj(call).get("function"))
        try:
            args = orjson.loads(fn.get("arguments") or "{}")
        except (orjson.JSONDecodeError, TypeError):
            args = {}
        content.append({"type": "tool_use", "id": obj(call).get("id"), "name": fn.get("name"),
                        "input": args if isinstance(args, dict) else {}})
    stop = _STOP.get(str(choice.get("finish_reason")), "end_turn")
    return {"id": msg_id, "type": "message", "role": "assistant", "model": model, "content": content,
            "stop_reason": stop, "stop_sequence": None, "usage": _usage(usage_of(chat))}


def error_type(status: int) -> str:
    return _ERROR_TYPES.get(status, "api_error" if status >= 500 else "invalid_request_error")


def error_body(status: int, message: str) -> bytes:
    return orjson.dumps({"type": "error", "error": {"type": error_type(status), "message": message}})


# ---- stream -----------------------------------------------------------------------------------
def _event(payload: dict[str, Any]) -> bytes:
    return b"event: " + payload["type"].encode() + b"\ndata: " + orjson.dumps(payload) + b"\n\n"


class MessagesStream(ChatRenderer):
    """The gateway's chat stream as Anthropic's event sequence. `feed` returns what to send now; after the
    chat stream's `[DONE]` (or an error event) the sequence is complete and `done` is set. `cost_of` (the
    gateway's price of a usage) puts `nexus_cost_usd` on the message_delta event."""

    __slots__ = ("_block", "_blocks", "_cost_of", "_model", "_msg_id", "_started", "_stop", "_tools")

    def __init__(self, model: str, msg_id: str, cost_of: Callable[[Usage], float] | None = None) -> None:
        super().__init__()
        self._model, self._msg_id, self._cost_of = model, msg_id, cost_of
        self._started = False
        self._block: int | None = None  # the open content block
        self._blocks = 0  # blocks started so far
        self._tools: dict[int, int] = {}  # chat tool_calls index -> content block index
        self._stop: str | None = None

    def fail(self, message: str) -> bytes:
        """End the stream with Anthropic's error event (after what was sent so far)."""
        self.done = True
        return _event({"type": "error", "error": {"type": "api_error", "message": message}})

    def _chunk(self, event: dict[str, Any]) -> bytes:
        out = self._start()
        for choice in event.get("choices") or ():
            delta = obj(obj(choice).get("delta"))
            if isinstance(text := delta.get("content"), str) and text:
                out += self._text(text)
            for call in delta.get("tool_calls") or ():
                out += self._tool(obj(call))
            if reason := obj(choice).get("finish_reason"):
                self._stop = _STOP.get(str(reason), "end_turn")
        return out

    def _start(self) -> bytes:
        if self._started:
            return b""
        self._started = True
        message = {"id": self._msg_id, "type": "message", "role": "assistant", "model": self._model, "content": [],
                   "stop_reason": None, "stop_sequence": None, "usage": {"input_tokens": 0, "output_tokens": 0}}
        return _event({"type": "message_start", "message": message})

    def _open(self, block: dict[str, Any]) -> bytes:
        out = self._close()
        self._block, self._blocks = self._blocks, self._blocks + 1
        out += _event({"type": "content_block_start", "index": self._block, "content_block": block})
        if self._block == 0:
            out += _event({"type": "ping"})
        return out

    def _close(self) -> bytes:
        if self._block is None:
            return b""
        index, self._block = self._block, None
        return _event({"type": "content_block_stop", "index": index})

    def _text(self, text: str) -> bytes:
        out = b""
        if self._block is None or self._block in self._tools.values():
            out = self._open({"type": "text", "text": ""})
        return out + _event({"type": "content_block_delta", "index": self._block,
                             "delta": {"type": "text_delta", "text": text}})

    def _tool(self, call: Mapping[str, Any]) -> bytes:
        n = call.get("index") if isinstance(call.get("index"), int) else len(self._tools)
        fn = obj(call.get("function"))
        out = b""
        if n not in self._tools:
            out = self._open({"type": "tool_use", "id": call.get("id") or f"toolu_{self._msg_id}_{n}",
                              "name": fn.get("name") or "", "input": {}})
            self._tools[n] = self._block  # type: ignore[assignment]
        args = fn.get("arguments")
        if isinstance(args, str) and args:
            out += _event({"type": "content_block_delta", "index": self._tools[n],
                           "delta": {"type": "input_json_delta", "partial_json": args}})
        return out

    def _end(self) -> bytes:
        out = self._start() + self._close()
        delta: dict[str, Any] = {"type": "message_delta",
                                 "delta": {"stop_reason": self._stop or "end_turn", "stop_sequence": None},
                                 "usage": _usage(self.usage)}
        if self._cost_of is not None and self.usage is not None:
            delta["nexus_cost_usd"] = round(self._cost_of(self.usage), 10)
        self.done = True
        return out + _event(delta) + _event({"type": "message_stop"})
