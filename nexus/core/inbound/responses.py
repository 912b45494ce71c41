"""OpenAI Responses (POST /v1/responses, stateless) <-> chat completions.

`to_chat` turns a Responses request (`input` a string or a list of items, `instructions`, function tools,
`text.format`, `max_output_tokens`) into a chat completions body; `from_chat` a chat completion into a
`response` object; `ResponsesStream` the gateway's chat stream into the Responses event sequence, every
event with its `type` and a `sequence_number` counting from 0: response.created, response.in_progress,
per output item output_item.added, (for a message) content_part.added, output_text.delta...,
output_text.done, content_part.done, (for a function call) function_call_arguments.delta...,
function_call_arguments.done, then output_item.done, and response.completed (or response.incomplete
when the answer hit max_output_tokens) with the whole response.

Stateless: `previous_response_id`, `conversation`, `background` and built-in tools are refused (400 naming
the field); `store` is accepted and nothing is stored. Unknown fields are refused.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import orjson

from nexus.core.gateway_errors import BadRequest
from nexus.core.inbound.common import ChatRenderer, need, obj, positive_int, usage_of
from nexus.core.usage import Usage

__all__ = ["ResponsesStream", "from_chat", "to_chat"]

_KNOWN = frozenset({"model", "input", "instructions", "tools", "tool_choice", "parallel_tool_calls", "text",
                    "max_output_tokens", "temperature", "top_p", "stream", "store", "metadata", "user",
                    "include", "truncation", "reasoning", "stream_options", "safety_identifier", "prompt_cache_key"})
_STATEFUL = ("previous_response_id", "conversation", "background", "prompt")


# ---- request ----------------------------------------------------------------------------------
def to_chat(body: Mapping[str, Any]) -> dict[str, Any]:
    for key in _STATEFUL:
        need(body.get(key) is None, "this gateway's Responses API is stateless; send the whole input", key)
    for key in body:
        need(key in _KNOWN or key in _STATEFUL, "unknown field", str(key))
    need(isinstance(body.get("model"), str) and bool(body["model"]), "must be a non-empty string", "model")
    messages: list[dict[str, Any]] = []
    if (instructions := body.get("instructions")) is not None:
        need(isinstance(instructions, str), "must be a string", "instructions")
        messages.append({"role": "system", "content": instructions})
    raw = body.get("input")
    if isinstance(raw, str):
        messages.append({"role": "user", "content": raw})
    else:
        need(isinstance(raw, list) and bool(raw), "must be a string or a non-empty list of items", "input")
        for i, item in enumerate(raw):
            _item(item, f"input.{i}", messages)
    out: dict[str, Any] = {"model": body["model"], "messages": messages}
    if (limit := body.get("max_output_tokens")) is not None:
        need(positive_int(limit), "must be a positive integer", "max_output_tokens")
        out["max_tokens"] = limit
    for key in ("temperature", "top_p", "parallel_tool_calls", "user"):
        if body.get(key) is not None:
            out[key] = body[key]
    if body.get("stream") is True:
        out["stream"] = True
        out["stream_options"] = {"include_usage": True}
    _format(obj(body.get("text")).get("format"), out)
    _tools(body, out)
    return out


def _parts(content: Any, where: str) -> Any:
    if isinstance(content, str):
        return content
    need(isinstance(content, list), "must be a string or a list of parts", where)
    parts: list[dict[str, Any]] = []
    for j, part in enumerate(content):
        p, at = obj(part), f"{where}.{j}"
        kind = p.get("type")
        if kind in ("input_text", "output_text", "text"):
            need(isinstance(p.get("text"), str), "must be a string", f"{at}.text")
            parts.append({"type": "text", "text": p["text"]})
        elif kind == "input_image":
            need(isinstance(p.get("image_url"), str), "must be a URL (file ids need stored files)", f"{at}.image_url")
            image = {"url": p["image_url"], **({"detail": p["detail"]} if isinstance(p.get("detail"), str) else {})}
            parts.append({"type": "image_url", "image_url": image})
        else:
            raise BadRequest(f"{at}.type: part type {kind!r} is not supported", param=f"{at}.type")
    if all(p["type"] == "text" for p in parts):
        return "".join(p["text"] for p in parts)
    return parts


def _item(item: Any, where: str, messages: list[dict[str, Any]]) -> None:
    it = obj(item)
    kind = it.get("type", "message")
    if kind == "message":
        role = it.get("role")
        need(role in ("user", "assistant", "system", "developer"), "must be user, assistant, system or developer",
             f"{where}.role")
        messages.append({"role": role, "content": _parts(it.get("content"), f"{where}.content")})
    elif kind == "function_call":
        for key in ("call_id", "name", "arguments"):
            need(isinstance(it.get(key), str), "must be a string", f"{where}.{key}")
        call = {"id": it["call_id"], "type": "function", "function": {"name": it["name"], "arguments": it["arguments"]}}
        last = messages[-1] if messages else None
        if last is not None and last["role"] == "assistant" and "tool_calls" in last:
            last["tool_calls"].append(call)
        else:
            messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
    elif kind == "function_call_output":
        need(isinstance(it.get("call_id"), str), "must be a string", f"{where}.call_id")
        output = it.get("output")
        text = output if isinstance(output, str) else _parts(output, f"{where}.output")
        need(isinstance(text, str), "must be a string or text parts", f"{where}.output")
        messages.append({"role": "tool", "tool_call_id": it["call_id"], "content": text})
    elif kind == "reasoning":
        return  # earlier reasoning summaries are not conversation content for a chat backend
    else:
        raise BadRequest(f"{where}.type: item type {kind!r} is not supported", param=f"{where}.type")


def _format(fmt: Any, out: dict[str, Any]) -> None:
    if fmt is None:
        return
    f = obj(fmt)
    kind = f.get("type")
    if kind == "text":
        return
    if kind == "json_object":
        out["response_format"] = {"type": "json_object"}
    elif kind == "json_schema":
        need(isinstance(f.get("name"), str) and isinstance(f.get("schema"), Mapping), "needs a name and a schema",
             "text.format")
        spec = {"name": f["name"], "schema": dict(f["schema"])}
        spec.update({k: f[k] for k in ("strict", "description") if f.get(k) is not None})
        out["response_format"] = {"type": "json_schema", "json_schema": spec}
    else:
        raise BadRequest("text.format.type: must be text, json_object or json_schema", param="text.format.type")


def _tools(body: Mapping[str, Any], out: dict[str, Any]) -> None:
    tools = body.get("tools")
    if tools:
        need(isinstance(tools, list), "must be a list", "tools")
        specs = []
        for i, tool in enumerate(tools):
            t = obj(tool)
            need(t.get("type") == "function", "only function tools can be served statelessly", f"tools.{i}.type")
            need(isinstance(t.get("name"), str) and bool(t["name"]), "must be a non-empty string", f"tools.{i}.name")
            fn = {"name": t["name"],
                  **{k: t[k] for k in ("description", "parameters", "strict") if t.get(k) is not None}}
            specs.append({"type": "function", "function": fn})
        out["tools"] = specs
    choice = body.get("tool_choice")
    if choice is None or not tools:
        return
    if choice in ("auto", "none", "required"):
        out["tool_choice"] = choice
    elif obj(choice).get("type") == "function" and isinstance(choice.get("name"), str):
        out["tool_choice"] = {"type": "function", "function": {"name": choice["name"]}}
    else:
        raise BadRequest("tool_choice: must be auto, none, required or a function", param="tool_choice")


# ---- answer -----------------------------------------------------------------------------------
def _usage(u: Usage | None) -> dict[str, Any] | None:
    if u is None:
        return None
    return {"input_tokens": u.prompt_tokens, "input_tokens_details": {"cached_tokens": 0},
            "output_tokens": u.completion_tokens, "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": u.prompt_tokens + u.completion_tokens}


def _envelope(resp_id: str, model: str, created: int, request: Mapping[str, Any]) -> dict[str, Any]:
    """The response object's fields other than output/status/usage, echoing the request as OpenAI does."""
    fmt = obj(request.get("text")).get("format") or {"type": "text"}
    return {"id": resp_id, "object": "response", "created_at": created, "model": model, "status": "in_progress",
            "error": None, "incomplete_details": None, "instructions": request.get("instructions"),
            "max_output_tokens": request.get("max_output_tokens"), "metadata": request.get("metadata") or {},
            "output": [], "parallel_tool_calls": request.get("parallel_tool_calls", True),
            "temperature": request.get("temperature"), "top_p": request.get("top_p"),
            "tool_choice": request.get("tool_choice", "auto"), "tools": request.get("tools") or [],
            "text": {"format": fmt}, "truncation": request.get("truncation") or "disabled", "store": False,
            "usage": None}


def _message_item(item_id: str, text: str, status: str = "completed") -> dict[str, Any]:
    return {"type": "message", "id": item_id, "status": status, "role": "assistant",
            "content": [{"type": "output_text", "text": text, "annotations": [], "logprobs": []}]}


def _call_item(item_id: str, call_id: str, name: str, args: str, status: str = "completed") -> dict[str, Any]:
    return {"type": "function_call", "id": item_id, "call_id": call_id, "name": name, "arguments": args,
            "status": status}


def _finished(resp: dict[str, Any], finish: Any) -> None:
    if finish == "length":
        resp["status"], resp["incomplete_details"] = "incomplete", {"reason": "max_output_tokens"}
    elif finish == "content_filter":
        resp["status"], resp["incomplete_details"] = "incomplete", {"reason": "content_filter"}
    else:
        resp["status"] = "completed"


def from_chat(chat: Mapping[str, Any], model: str, resp_id: str, created: int,
              request: Mapping[str, Any]) -> dict[str, Any]:
    choice = obj((chat.get("choices") or [{}])[0])
    message = obj(choice.get("message"))
    resp = _envelope(resp_id, model, created, request)
    if isinstance(text := message.get("content"), str) and (text or not message.get("tool_calls")):
        resp["output"].append(_message_item(f"msg_{resp_id}", text))
    for n, call in enumerate(message.get("tool_calls") or ()):
        fn = obj(obj(call).get("function"))
        resp["output"].append(_call_item(f"fc_{resp_id}_{n}", str(obj(call).get("id")), str(fn.get("name")),
                                         str(fn.get("arguments") or "")))
    _finished(resp, choice.get("finish_reason"))
    resp["usage"] = _usage(usage_of(chat))
    return resp


# ---- stream -----------------------------------------------------------------------------------
class ResponsesStream(ChatRenderer):
    """The gateway's chat stream as Responses events (see the module docstring for the sequence)."""

    __slots__ = ("_calls", "_cost_of", "_finish", "_items", "_open", "_resp", "_seq", "_text")

    def __init__(self, model: str, resp_id: str, created: int, request: Mapping[str, Any],
                 cost_of: Callable[[Usage], float] | None = None) -> None:
        super().__init__()
        self._resp = _envelope(resp_id, model, created, request)
        self._cost_of = cost_of
        self._seq = -1  # nothing sent yet: response.created goes out with the first event
        self._items: list[dict[str, Any]] = []  # output items, finished ones completed
        self._open: int | None = None  # output index of the item being streamed
        self._text = ""
        self._calls: dict[int, int] = {}  # chat tool_calls index -> output index
        self._finish: Any = None

    def _emit(self, kind: str, **fields: Any) -> bytes:
        self._seq += 1
        payload = {"type": kind, "sequence_number": self._seq, **fields}
        return b"event: " + kind.encode() + b"\ndata: " + orjson.dumps(payload) + b"\n\n"

    def fail(self, message: str) -> bytes:
        self.done = True
        out = self._begin()
        self._resp.update(status="failed", error={"code": "server_error", "message": message})
        return out + self._emit("response.failed", response={**self._resp, "output": self._items})

    def _begin(self) -> bytes:
        if self._seq >= 0:
            return b""
        return self._emit("response.created", response=self._resp) + self._emit("response.in_progress",
                                                                                  response=self._resp)

    def _chunk(self, event: dict[str, Any]) -> bytes:
        out = bytearray(self._begin())
        for choice in event.get("choices") or ():
            delta = obj(obj(choice).get("delta"))
            if isinstance(text := delta.get("content"), str) and text:
                out += self._delta_text(text)
            for call in delta.get("tool_calls") or ():
                out += self._delta_call(obj(call))
            if reason := obj(choice).get("finish_reason"):
                self._finish = reason
        return bytes(out)

    def _delta_text(self, text: str) -> bytes:
        out = b""
        if self._open is None or self._items[self._open]["type"] != "message":
            out = self._close()
            item = _message_item(f"msg_{self._resp['id']}_{len(self._items)}", "", "in_progress")
            item["content"] = []
            out += self._add(item)
            out += self._emit("response.content_part.added", item_id=item["id"], output_index=self._open,
                              content_index=0, part={"type": "output_text", "text": "", "annotations": [],
                                                     "logprobs": []})
        self._text += text
        return out + self._emit("response.output_text.delta", item_id=self._items[self._open]["id"],
                                output_index=self._open, content_index=0, delta=text, logprobs=[])

    def _delta_call(self, call: Mapping[str, Any]) -> bytes:
        n = call.get("index") if isinstance(call.get("index"), int) else len(self._calls)
        fn = obj(call.get("function"))
        out = b""
        if n not in self._calls:
            out = self._close()
            call_id = call.get("id") or f"call_{self._resp['id']}_{n}"
            out += self._add(_call_item(f"fc_{self._resp['id']}_{n}", call_id, fn.get("name") or "", "",
                                        "in_progress"))
            self._calls[n] = self._open  # type: ignore[assignment]
        item = self._items[self._calls[n]]
        if isinstance(args := fn.get("arguments"), str) and args:
            item["arguments"] += args
            out += self._emit("response.function_call_arguments.delta", item_id=item["id"],
                              output_index=self._calls[n], delta=args)
        return out

    def _add(self, item: dict[str, Any]) -> bytes:
        self._open = len(self._items)
        self._items.append(item)
        return self._emit("response.output_item.added", output_index=self._open, item=dict(item))

    def _close(self) -> bytes:
        if self._open is None:
            return b""
        index, self._open = self._open, None
        item = self._items[index]
        out = b""
        if item["type"] == "message":
            part = {"type": "output_text", "text": self._text, "annotations": [], "logprobs": []}
            out += self._emit("response.output_text.done", item_id=item["id"], output_index=index, content_index=0,
                              text=self._text, logprobs=[])
            out += self._emit("response.content_part.done", item_id=item["id"], output_index=index,
                              content_index=0, part=part)
            item["content"], self._text = [part], ""
        else:
            out += self._emit("response.function_call_arguments.done", item_id=item["id"], output_index=index,
                              name=item["name"], arguments=item["arguments"])
        item["status"] = "completed"
        return out + self._emit("response.output_item.done", output_index=index, item=dict(item))

    def _end(self) -> bytes:
        out = self._begin() + self._close()
        _finished(self._resp, self._finish)
        self._resp.update(output=self._items, usage=_usage(self.usage))
        if self._cost_of is not None and self.usage is not None:
            self._resp["nexus_cost_usd"] = round(self._cost_of(self.usage), 10)
        self.done = True
        kind = "response.completed" if self._resp["status"] == "completed" else "response.incomplete"
        return out + self._emit(kind, response=self._resp)
