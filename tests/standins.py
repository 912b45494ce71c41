"""Strict stand-in upstreams for the protocol tests: OpenAI chat/completions/embeddings, Anthropic Messages and
Gemini's OpenAI-compatible endpoint, over real HTTP on 127.0.0.1.

OpenAI's Responses API (`/v1/responses`) is there too, for the native path of `openai` backends.
Strict as the real APIs are: unknown fields are refused (400 naming them), roles are checked (OpenAI: a `tool`
message answers a preceding assistant tool call by id; Anthropic: turns alternate from `user`, every
`tool_result` answers a `tool_use` of the turn before, `max_tokens` and `anthropic-version` required), and
answers follow the wire formats field by field (Anthropic streams: message_start, content_block_start, ping,
deltas incl. input_json_delta, content_block_stop, message_delta with usage, message_stop; Gemini errors are
JSON arrays). Replies are a pure function of the request (`script`): a tool call when tools are offered and the
user spoke last, the tool's answer echoed after a tool result, JSON when JSON was asked, else an echo.

`pace` seconds pass between stream events; with `lockstep`, the event after content event k (the k-th text or
argument delta) is only sent once the test confirmed (`received(k)`) that its client saw that content, so a
gateway that buffered would stall the upstream (`stalled`); `sent_at` holds each content event's send time.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson
from aiohttp import web

__all__ = ["Reply", "StandIn", "script"]

_CHAT_FIELDS = {"model", "messages", "stream", "stream_options", "max_tokens", "max_completion_tokens", "temperature",
                "top_p", "n", "stop", "tools", "tool_choice", "parallel_tool_calls", "response_format", "logprobs",
                "top_logprobs", "user", "seed", "presence_penalty", "frequency_penalty"}
_COMPLETION_FIELDS = {"model", "prompt", "stream", "stream_options", "max_tokens", "temperature", "top_p", "n",
                      "stop", "logprobs", "echo", "suffix", "user", "seed"}
_RESPONSES_FIELDS = {"model", "input", "instructions", "tools", "tool_choice", "max_output_tokens", "temperature",
                     "top_p", "stream", "text", "store", "metadata", "parallel_tool_calls", "user", "include",
                     "truncation", "reasoning"}
_ANTHROPIC_FIELDS = {"model", "messages", "max_tokens", "system", "stream", "temperature", "top_p", "top_k",
                     "stop_sequences", "tools", "tool_choice", "metadata", "thinking", "service_tier"}


@dataclass(frozen=True, slots=True)
class Reply:
    text: str
    tool: tuple[str, str, dict[str, Any]] | None = None  # (call id, name, arguments)


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    return " ".join(p.get("text", "") for p in content or () if isinstance(p, dict) and p.get("type") == "text")


def script(last_role: str, last_text: str, tools: list[str], json_wanted: bool, images: int) -> Reply:
    if last_role == "tool":
        return Reply(f"the tool said: {last_text}")
    if tools:
        return Reply("", ("call_standin_1", tools[0], {"city": "Paris"}))
    if json_wanted:
        return Reply('{"answer": "' + last_text.replace('"', "'")[:40] + '"}')
    seen = f" [{images} image(s)]" if images else ""
    return Reply(f"echo: {last_text}{seen}")


def _tokens(text: str) -> int:
    return (len(text) + 3) // 4


class _Bad(Exception):
    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise _Bad(message)


class StandIn:
    """One server with every stand-in API; `requests` logs (path, headers, body) of every API call."""

    def __init__(self, models: tuple[str, ...] = ("m",), *, pace: float = 0.0, lockstep: bool = False) -> None:
        self.models = models
        self.pace = pace
        self.lockstep = lockstep
        self.requests: list[tuple[str, dict[str, str], Any]] = []
        self.versions: list[str] = []  # anthropic-version of each Messages call
        self.stalled = False
        self.sent_at: list[float] = []
        self._received: dict[int, asyncio.Event] = {}
        self._runner: web.AppRunner | None = None
        self.url = ""

    def received(self, k: int) -> None:
        self._received.setdefault(k, asyncio.Event()).set()

    async def start(self) -> StandIn:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_post("/v1/completions", self._completions)
        app.router.add_post("/v1/embeddings", self._embeddings)
        app.router.add_post("/v1/messages", self._messages)
        app.router.add_post("/v1/responses", self._responses)
        app.router.add_post("/v1beta/openai/chat/completions", self._gemini)
        app.router.add_get("/v1/models", self._models)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=0.25)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}"
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # ---- plumbing --------------------------------------------------------------------------------
    async def _body(self, request: web.Request) -> dict[str, Any]:
        body = orjson.loads(await request.read())
        self.requests.append((request.path, dict(request.headers), body))
        _check(isinstance(body, dict), "body must be an object")
        return body

    async def _events(self, request: web.Request, events: list[tuple[bytes, bool]]) -> web.StreamResponse:
        """Send (event, is content) pairs, paced and (with lockstep) gated on the client seeing each content."""
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await resp.prepare(request)
        self.sent_at = []
        self._received = {}
        for k, (event, content) in enumerate(events):
            if k and self.pace:
                await asyncio.sleep(self.pace)
            await resp.write(event)
            if not content:
                continue
            j = len(self.sent_at)
            self.sent_at.append(time.monotonic())
            if self.lockstep and not self.stalled:
                try:
                    await asyncio.wait_for(self._received.setdefault(j, asyncio.Event()).wait(), 5)
                except TimeoutError:
                    self.stalled = True
        await resp.write_eof()
        return resp

    def _model(self, body: Mapping[str, Any]) -> str:
        model = body.get("model")
        if model not in self.models:
            raise _Bad(f"The model '{model}' does not exist", 404)
        return str(model)

    async def _models(self, request: web.Request) -> web.Response:
        data = [{"id": m, "object": "model", "created": 1700000000, "owned_by": "standin"} for m in self.models]
        return web.json_response({"object": "list", "data": data})

    # ---- OpenAI ----------------------------------------------------------------------------------
    def _openai_reply(self, body: dict[str, Any]) -> Reply:
        unknown = sorted(set(body) - _CHAT_FIELDS)
        _check(not unknown, f"Unrecognized request argument supplied: {', '.join(unknown)}")
        messages = body.get("messages")
        _check(isinstance(messages, list) and bool(messages), "messages must be a non-empty list")
        pending: set[str] = set()
        images = 0
        for i, m in enumerate(messages):
            role = m.get("role")
            _check(role in ("system", "developer", "user", "assistant", "tool"), f"messages[{i}].role is invalid")
            if role == "tool":
                _check(m.get("tool_call_id") in pending, f"messages[{i}].tool_call_id answers no pending tool call")
                pending.discard(m["tool_call_id"])
                continue
            _check(not pending, f"messages[{i}]: tool calls {sorted(pending)} were not answered")
            if role == "assistant":
                pending = {c["id"] for c in m.get("tool_calls") or ()}
            if isinstance(m.get("content"), list):
                for part in m["content"]:
                    _check(part.get("type") in ("text", "image_url"), f"messages[{i}]: unknown part {part}")
                    images += part.get("type") == "image_url"
        last = messages[-1]
        tools = [t["function"]["name"] for t in body.get("tools") or ()] if body.get("tool_choice") != "none" else []
        fmt = (body.get("response_format") or {}).get("type")
        return script(last["role"], _text(last.get("content")), tools, fmt in ("json_object", "json_schema"), images)

    def _prompt_tokens(self, body: Mapping[str, Any]) -> int:
        return sum(_tokens(_text(m.get("content"))) + 3 for m in body.get("messages") or ())

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        return await self._chat_answer(request, await self._body(request))

    async def _chat_answer(self, request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
        try:
            reply = self._openai_reply(body)
            model = self._model(body)
        except _Bad as exc:
            return web.json_response({"error": {"message": str(exc), "type": "invalid_request_error",
                                                "param": None, "code": None}}, status=exc.status)
        usage = {"prompt_tokens": self._prompt_tokens(body), "completion_tokens": _tokens(reply.text) + 1}
        usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
        finish = "tool_calls" if reply.tool else "stop"
        calls = [{"id": reply.tool[0], "type": "function",
                  "function": {"name": reply.tool[1], "arguments": orjson.dumps(reply.tool[2]).decode()}}
                 ] if reply.tool else None
        base = {"id": "chatcmpl-standin", "created": 1700000000, "model": model, "system_fingerprint": None}
        if not body.get("stream"):
            message = {"role": "assistant", "content": reply.text or None, "refusal": None,
                       **({"tool_calls": calls} if calls else {})}
            choices = [{"index": i, "message": message, "logprobs": None, "finish_reason": finish}
                       for i in range(body.get("n") or 1)]
            return web.json_response({**base, "object": "chat.completion", "choices": choices, "usage": usage})
        with_usage = (body.get("stream_options") or {}).get("include_usage") is True

        def chunk(delta: dict[str, Any], fin: str | None = None) -> bytes:
            payload = {**base, "object": "chat.completion.chunk",
                       "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": fin}]}
            return b"data: " + orjson.dumps({**payload, **({"usage": None} if with_usage else {})}) + b"\n\n"
        events = [(chunk({"role": "assistant", "content": ""}), False)]
        if reply.text:
            events += [(chunk({"content": w}), True) for w in _words(reply.text)]
        if calls:
            args, name = calls[0]["function"]["arguments"], calls[0]["function"]["name"]
            events.append((chunk({"tool_calls": [{"index": 0, "id": calls[0]["id"], "type": "function",
                                                  "function": {"name": name, "arguments": ""}}]}), False))
            events += [(chunk({"tool_calls": [{"index": 0, "function": {"arguments": args[i:i + 8]}}]}), True)
                       for i in range(0, len(args), 8)]
        events.append((chunk({}, finish), False))
        if with_usage:
            events.append((b"data: " + orjson.dumps({**base, "object": "chat.completion.chunk", "choices": [],
                                                      "usage": usage}) + b"\n\n", False))
        return await self._events(request, [*events, (b"data: [DONE]\n\n", False)])

    async def _completions(self, request: web.Request) -> web.StreamResponse:
        try:
            body = await self._body(request)
            unknown = sorted(set(body) - _COMPLETION_FIELDS)
            _check(not unknown, f"Unrecognized request argument supplied: {', '.join(unknown)}")
            _check(isinstance(body.get("prompt"), str), "prompt must be a string")
            model = self._model(body)
        except _Bad as exc:
            return web.json_response({"error": {"message": str(exc), "type": "invalid_request_error"}},
                                     status=exc.status)
        text = f" and then: {body['prompt'][-20:]}"
        usage = {"prompt_tokens": _tokens(body["prompt"]), "completion_tokens": _tokens(text)}
        usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
        base = {"id": "cmpl-standin", "object": "text_completion", "created": 1700000000, "model": model}
        if not body.get("stream"):
            choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": "stop"}
            return web.json_response({**base, "choices": [choice], "usage": usage})
        events = [(b"data: " + orjson.dumps({**base, "choices": [
            {"index": 0, "text": w, "logprobs": None, "finish_reason": None}]}) + b"\n\n", True) for w in _words(text)]
        events.append((b"data: " + orjson.dumps({**base, "choices": [
            {"index": 0, "text": "", "logprobs": None, "finish_reason": "stop"}]}) + b"\n\n", False))
        if (body.get("stream_options") or {}).get("include_usage"):
            events.append((b"data: " + orjson.dumps({**base, "choices": [], "usage": usage}) + b"\n\n", False))
        return await self._events(request, [*events, (b"data: [DONE]\n\n", False)])

    async def _embeddings(self, request: web.Request) -> web.Response:
        body = await self._body(request)
        items = [body["input"]] if isinstance(body["input"], str) else body["input"]
        data = [{"object": "embedding", "index": i, "embedding": [len(t) / 10, 0.5, -0.25]} for i, t in
                enumerate(items)]
        n = sum(_tokens(t) for t in items)
        return web.json_response({"object": "list", "data": data, "model": body["model"],
                                  "usage": {"prompt_tokens": n, "total_tokens": n}})

    async def _gemini(self, request: web.Request) -> web.StreamResponse:
        """Gemini's OpenAI-compatible chat: OpenAI's wire format, but errors are JSON arrays."""
        body = await self._body(request)
        if body.get("model") not in self.models:
            error = {"code": 404, "message": f"models/{body.get('model')} is not found", "status": "NOT_FOUND"}
            return web.Response(body=orjson.dumps([{"error": error}]), status=404, content_type="application/json")
        return await self._chat_answer(request, body)

    async def _responses(self, request: web.Request) -> web.StreamResponse:
        try:
            body = await self._body(request)
            unknown = sorted(set(body) - _RESPONSES_FIELDS)
            _check(not unknown, f"Unknown parameter: '{', '.join(unknown)}'.")
            model = self._model(body)
            raw = body.get("input")
            items = [{"role": "user", "content": raw}] if isinstance(raw, str) else raw
            last = items[-1]
            if last.get("type") == "function_call_output":
                reply = script("tool", last["output"], [], False, 0)
            else:
                tools = [t["name"] for t in body.get("tools") or ()]
                reply = script("user", last["content"] if isinstance(last["content"], str) else " ".join(
                    p["text"] for p in last["content"]), tools, False, 0)
        except _Bad as exc:
            return web.json_response({"error": {"message": str(exc), "type": "invalid_request_error"}},
                                     status=exc.status)
        usage = {"input_tokens": 9, "output_tokens": _tokens(reply.text) + 1}
        usage["total_tokens"] = usage["input_tokens"] + usage["output_tokens"]
        item: dict[str, Any] = {"type": "message", "id": "msg_standin", "status": "completed", "role": "assistant",
                                "content": [{"type": "output_text", "text": reply.text, "annotations": []}]}
        if reply.tool:
            item = {"type": "function_call", "id": "fc_standin", "call_id": reply.tool[0], "name": reply.tool[1],
                    "arguments": orjson.dumps(reply.tool[2]).decode(), "status": "completed"}
        resp = {"id": "resp_standin", "object": "response", "created_at": 1700000000, "status": "completed",
                "model": model, "output": [item], "usage": usage, "error": None, "incomplete_details": None,
                "tools": body.get("tools") or [], "tool_choice": body.get("tool_choice", "auto"),
                "parallel_tool_calls": True}
        if not body.get("stream"):
            return web.json_response(resp)
        seq = iter(range(1000))

        def ev(kind: str, content: bool = False, **fields: Any) -> tuple[bytes, bool]:
            payload = {"type": kind, "sequence_number": next(seq), **fields}
            return b"event: " + kind.encode() + b"\ndata: " + orjson.dumps(payload) + b"\n\n", content
        started = {**resp, "status": "in_progress", "output": [], "usage": None}
        events = [ev("response.created", response=started), ev("response.in_progress", response=started)]
        if reply.tool:
            events.append(ev("response.output_item.added", output_index=0, item={**item, "arguments": ""}))
            events.append(ev("response.function_call_arguments.delta", True, item_id=item["id"], output_index=0,
                             delta=item["arguments"]))
            events.append(ev("response.function_call_arguments.done", item_id=item["id"], output_index=0,
                             arguments=item["arguments"]))
        else:
            part = {"type": "output_text", "text": "", "annotations": []}
            events.append(ev("response.output_item.added", output_index=0, item={**item, "content": []}))
            events.append(ev("response.content_part.added", item_id=item["id"], output_index=0, content_index=0,
                             part=part))
            events += [ev("response.output_text.delta", True, item_id=item["id"], output_index=0, content_index=0,
                          delta=w, logprobs=[]) for w in _words(reply.text)]
            events.append(ev("response.output_text.done", item_id=item["id"], output_index=0, content_index=0,
                             text=reply.text, logprobs=[]))
            events.append(ev("response.content_part.done", item_id=item["id"], output_index=0, content_index=0,
                             part={**part, "text": reply.text}))
        events.append(ev("response.output_item.done", output_index=0, item=item))
        events.append(ev("response.completed", response=resp))
        return await self._events(request, events)

    # ---- Anthropic -------------------------------------------------------------------------------
    def _anthropic_reply(self, request: web.Request, body: dict[str, Any]) -> Reply:
        if not request.headers.get("x-api-key") and not request.headers.get("Authorization", "").startswith("Bearer "):
            raise _Bad("an x-api-key or Authorization: Bearer header is required", 401)
        _check(bool(request.headers.get("anthropic-version")), "anthropic-version header is required")
        self.versions.append(request.headers["anthropic-version"])
        unknown = sorted(set(body) - _ANTHROPIC_FIELDS)
        _check(not unknown, f"{', '.join(unknown)}: Extra inputs are not permitted")
        _check(isinstance(body.get("max_tokens"), int), "max_tokens: Field required")
        messages = body.get("messages")
        _check(isinstance(messages, list) and bool(messages), "messages: at least one message is required")
        uses: set[str] = set()
        images = 0
        for i, m in enumerate(messages):
            want = "user" if i % 2 == 0 else "assistant"
            _check(m.get("role") == want, f"messages.{i}: roles must alternate between user and assistant")
            blocks = m["content"] if isinstance(m["content"], list) else [{"type": "text", "text": m["content"]}]
            for j, b in enumerate(blocks):
                kind = b.get("type")
                if kind == "tool_result":
                    _check(want == "user" and b.get("tool_use_id") in uses,
                           f"messages.{i}.content.{j}: tool_result answers no tool_use of the previous turn")
                elif kind == "tool_use":
                    _check(want == "assistant", f"messages.{i}.content.{j}: tool_use in a user turn")
                else:
                    _check(kind in ("text", "image"), f"messages.{i}.content.{j}: unknown block type {kind}")
                    images += kind == "image"
            uses = {b["id"] for b in blocks if b.get("type") == "tool_use"}
        last = messages[-1]["content"]
        blocks = last if isinstance(last, list) else [{"type": "text", "text": last}]
        result = next((b for b in blocks if b.get("type") == "tool_result"), None)
        if result is not None:
            content = result.get("content")
            return script("tool", content if isinstance(content, str) else _text(content), [], False, 0)
        choice = body.get("tool_choice") or {}
        tools = [t["name"] for t in body.get("tools") or ()] if choice.get("type") != "none" else []
        return script("user", _text(blocks), tools, False, images)

    async def _messages(self, request: web.Request) -> web.StreamResponse:
        try:
            body = await self._body(request)
            reply = self._anthropic_reply(request, body)
            model = self._model(body)
        except _Bad as exc:
            kind = {401: "authentication_error", 404: "not_found_error"}.get(exc.status, "invalid_request_error")
            return web.json_response({"type": "error", "error": {"type": kind, "message": str(exc)}},
                                     status=exc.status)
        prompt = sum(_tokens(_text(m["content"])) + 3 for m in body["messages"]) + _tokens(_text(body.get("system")))
        out_tokens = _tokens(reply.text) + 1
        content: list[dict[str, Any]] = [{"type": "text", "text": reply.text}] if reply.text else []
        if reply.tool:
            content.append({"type": "tool_use", "id": "toolu_standin_1", "name": reply.tool[1],
                            "input": reply.tool[2]})
        stop = "tool_use" if reply.tool else "end_turn"
        msg = {"id": "msg_standin", "type": "message", "role": "assistant", "model": model, "content": content,
               "stop_reason": stop, "stop_sequence": None,
               "usage": {"input_tokens": prompt, "output_tokens": out_tokens}}
        if not body.get("stream"):
            return web.json_response(msg)

        def ev(payload: dict[str, Any]) -> tuple[bytes, bool]:
            data = b"event: " + payload["type"].encode() + b"\ndata: " + orjson.dumps(payload) + b"\n\n"
            return data, payload["type"] == "content_block_delta"
        start = {**msg, "content": [], "stop_reason": None, "usage": {"input_tokens": prompt, "output_tokens": 1}}
        events = [ev({"type": "message_start", "message": start})]
        for i, block in enumerate(content):
            empty = {"type": "text", "text": ""} if block["type"] == "text" else {**block, "input": {}}
            events.append(ev({"type": "content_block_start", "index": i, "content_block": empty}))
            if i == 0:
                events.append(ev({"type": "ping"}))
            if block["type"] == "text":
                events += [ev({"type": "content_block_delta", "index": i, "delta": {"type": "text_delta", "text": w}})
                           for w in _words(block["text"])]
            else:
                args = orjson.dumps(block["input"]).decode()
                events += [ev({"type": "content_block_delta", "index": i,
                               "delta": {"type": "input_json_delta", "partial_json": args[k:k + 8]}})
                           for k in range(0, len(args), 8)]
            events.append(ev({"type": "content_block_stop", "index": i}))
        events.append(ev({"type": "message_delta", "delta": {"stop_reason": stop, "stop_sequence": None},
                          "usage": {"output_tokens": out_tokens}}))
        events.append(ev({"type": "message_stop"}))
        return await self._events(request, events)


def _words(text: str) -> list[str]:
    words = text.split(" ")
    return [w + (" " if i < len(words) - 1 else "") for i, w in enumerate(words)]
