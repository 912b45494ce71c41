"""A fake OpenAI-compatible inference backend for tests, the demo and benchmarks.

One aiohttp server speaks the wire formats Nexus proxies to: OpenAI (`/v1/chat/completions` JSON
and SSE, `/v1/embeddings`, `/v1/models`), Ollama's `GET /api/tags`, llama.cpp-style `GET /health`
and a minimal Anthropic Messages API (`POST /v1/messages`, JSON and SSE). Behaviour is set by a
frozen `FakeBackendOptions` and can be changed at runtime (`configure()` / `POST /_fake/config`).

Invariants:
- Deterministic: the reply is a pure function of (options, request body); embeddings hash the
  input; injected random failures draw from `random.Random(seed)` in request order.
- Cheap per request: no middleware, no access log, payloads pre-encoded where static, orjson.
- While loading (`loading_seconds` after start, or after a runtime change of it) every API
  endpoint (not `/_fake/*`) answers 503 with an error whose message contains "loading".
- `fail_mode` ("500" | "close" | "midstream") breaks every API endpoint; `error_rate` only makes
  inference endpoints (chat, embeddings, messages) answer 500. Order of checks on inference
  endpoints: loading 503 -> api_key 401 -> fail_mode 500/close -> malformed 400 -> unknown model
  404 -> `latency_ms` -> error_rate 500 -> reply (midstream aborts inside the reply).
- Every API request is recorded (bounded log) in `FakeBackend.requests` and at `GET /_fake/requests`.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import hashlib
import itertools
import math
import random
import struct
import time
from collections import deque
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

import orjson
from aiohttp import web

from nexus.core.shutdown import stop_on_signals

__all__ = ["FAIL_MODES", "FakeBackend", "FakeBackendOptions", "add_arguments", "options_from_args",
           "run_forever"]

FAIL_MODES = ("none", "500", "close", "midstream")
_JSON = {"Content-Type": "application/json"}
_SSE = {"Content-Type": "text/event-stream; charset=utf-8", "Cache-Control": "no-cache"}
_LOGGED_HEADERS = frozenset({"authorization", "x-api-key", "anthropic-version", "content-type", "user-agent"})
_ANTHROPIC_TYPES = {400: "invalid_request_error", 401: "authentication_error", 404: "not_found_error",
                    500: "api_error", 503: "overloaded_error"}
_OPENAI_TYPES = {400: "invalid_request_error", 401: "invalid_request_error", 404: "invalid_request_error",
                 500: "server_error", 503: "server_error"}
_MAX_REPLY = 200
_NUM = (int, float)
_TYPES: dict[str, tuple[type, ...]] = {
    "name": (str,), "models": (list, tuple), "latency_ms": _NUM, "stream_chunks": (int,),
    "chunk_delay_ms": _NUM, "error_rate": _NUM, "seed": (int,), "fail_mode": (str,),
    "midstream_after_chunks": (int,), "loading_seconds": _NUM, "report_usage": (bool,),
    "reply": (str, type(None)), "context_length": (int,), "embedding_dim": (int,),
    "api_key": (str, type(None)), "request_log_size": (int,)}
_MINIMA = {"latency_ms": 0, "stream_chunks": 1, "chunk_delay_ms": 0, "error_rate": 0,
           "midstream_after_chunks": 0, "loading_seconds": 0, "context_length": 1, "embedding_dim": 1,
           "request_log_size": 1}


@dataclass(frozen=True)
class FakeBackendOptions:
    name: str = "fake"                      # for logs and the X-Fake-Backend response header
    models: tuple[str, ...] = ("fake-model",)  # a list is accepted and stored as a tuple
    latency_ms: float = 0                   # delay before the first byte of an inference reply
    stream_chunks: int = 5                  # content chunks per streamed reply
    chunk_delay_ms: float = 0               # delay between streamed chunks
    error_rate: float = 0.0                 # fraction of inference requests answered 500
    seed: int = 0                           # seeds the error_rate draws
    fail_mode: str = "none"                 # none | 500 | close | midstream
    midstream_after_chunks: int = 2         # content chunks sent before a midstream abort
    loading_seconds: float = 0              # answer 503 "loading" for this long after start
    report_usage: bool = True               # include usage in replies (and stream, when asked)
    reply: str | None = None                # fixed reply text; default "echo: <last user text>"
    context_length: int = 8192              # reported per model by /v1/models
    embedding_dim: int = 8                  # default embedding size (`dimensions` overrides)
    api_key: str | None = None              # when set, other keys get 401 (Bearer or x-api-key)
    request_log_size: int = 10_000          # the request log keeps the newest N entries

    def __post_init__(self) -> None:
        for f in fields(self):
            value, types = getattr(self, f.name), _TYPES[f.name]
            if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
                raise TypeError(f"{f.name}: expected {'/'.join(t.__name__ for t in types)}, got {value!r}")
            if f.name in _MINIMA and value < _MINIMA[f.name]:
                raise ValueError(f"{f.name} must be >= {_MINIMA[f.name]}, got {value!r}")
        object.__setattr__(self, "models", tuple(self.models))
        if not self.models or not all(isinstance(m, str) and m for m in self.models):
            raise ValueError("models must be a non-empty list of non-empty strings")
        if self.error_rate > 1:
            raise ValueError(f"error_rate must be within 0..1, got {self.error_rate!r}")
        if self.fail_mode not in FAIL_MODES:
            raise ValueError(f"fail_mode must be one of {', '.join(FAIL_MODES)}, got {self.fail_mode!r}")


def _text(content: Any) -> str:
    """Text of an OpenAI/Anthropic message content: a string or a list of parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(p["text"] for p in content if isinstance(p, dict) and isinstance(p.get("text"), str))
    return ""


def _tokens(text: str) -> int:
    return (len(text) + 3) // 4


def _split(text: str, n: int) -> list[str]:
    """`n` pieces (some may be empty) whose concatenation is `text`."""
    k, r = divmod(len(text), n)
    bounds = list(itertools.accumulate([0] + [k + (i < r) for i in range(n)]))
    return [text[a:b] for a, b in itertools.pairwise(bounds)]


def _embed(text: str, dim: int) -> list[float]:
    seed, raw = text.encode(), b""
    for i in itertools.count():
        if len(raw) >= dim * 4:
            break
        raw += hashlib.sha256(seed + i.to_bytes(4, "little")).digest()
    vec = [v / 2**31 - 1.0 for v in struct.unpack(f"<{dim}I", raw[: dim * 4])]
    norm = math.sqrt(sum(v * v for v in vec)) or 1.0
    return [v / norm for v in vec]


def _sse(obj: Any) -> bytes:
    """One SSE event; Anthropic events (objects with a "type") also get an `event:` line."""
    head = b"event: " + obj["type"].encode() + b"\n" if "type" in obj else b""
    return head + b"data: " + orjson.dumps(obj) + b"\n\n"


class FakeBackend:
    """The fake server. `async with FakeBackend(opts) as fb:` starts it on a free loopback port."""

    def __init__(self, options: FakeBackendOptions | None = None) -> None:
        self._runner: web.AppRunner | None = None
        self._port = 0
        self._host = "127.0.0.1"
        self._ids = itertools.count(1)
        self._log: deque[dict[str, Any]] = deque()
        self._apply(options or FakeBackendOptions(), restart_loading=True, reseed=True)

    # ---- configuration and state -------------------------------------------------------------
    @property
    def options(self) -> FakeBackendOptions:
        return self._opts

    @property
    def url(self) -> str:
        if not self._port:
            raise RuntimeError("FakeBackend is not started")
        return f"http://{self._host}:{self._port}"

    @property
    def requests(self) -> list[dict[str, Any]]:
        """Recorded requests, oldest first: {method, path, model, headers, body, ts}."""
        return list(self._log)

    def reset(self) -> None:
        self._log.clear()

    def configure(self, **changes: Any) -> FakeBackendOptions:
        """Change options at runtime. Raises ValueError/TypeError (options unchanged) on bad input.
        Changing `loading_seconds` restarts the loading window; changing `seed` restarts the draws."""
        unknown = sorted(set(changes) - set(_TYPES))
        if unknown:
            raise ValueError(f"unknown option(s): {', '.join(unknown)}")
        self._apply(replace(self._opts, **changes), "loading_seconds" in changes, "seed" in changes)
        return self._opts

    def _apply(self, opts: FakeBackendOptions, restart_loading: bool, reseed: bool) -> None:
        self._opts = opts
        self._models = frozenset(opts.models)
        if restart_loading:
            self._loading_until = time.monotonic() + opts.loading_seconds
        if reseed:
            self._rng = random.Random(opts.seed)
        if self._log.maxlen != opts.request_log_size:
            self._log = deque(self._log, maxlen=opts.request_log_size)
        self._json_headers = {**_JSON, "X-Fake-Backend": opts.name}
        self._sse_headers = {**_SSE, "X-Fake-Backend": opts.name}
        self._models_body = orjson.dumps({"object": "list", "data": [
            {"id": m, "object": "model", "created": 1700000000, "owned_by": opts.name,
             "context_length": opts.context_length} for m in opts.models]})
        self._tags_body = orjson.dumps({"models": [
            {"name": m, "model": m, "modified_at": "2024-01-01T00:00:00Z", "size": 1_000_000,
             "digest": hashlib.sha256(m.encode()).hexdigest(),
             "details": {"format": "gguf", "family": "fake", "parameter_size": "1B",
                         "quantization_level": "Q4_0"}} for m in opts.models]})

    # ---- lifecycle ---------------------------------------------------------------------------
    async def start(self, host: str = "127.0.0.1", port: int = 0) -> int:
        if self._runner is not None:
            raise RuntimeError("FakeBackend already started")
        app = web.Application(client_max_size=64 * 1024 * 1024)
        r = app.router
        r.add_post("/v1/chat/completions", self._chat)
        r.add_post("/v1/embeddings", self._embeddings)
        r.add_post("/v1/messages", self._messages)
        r.add_get("/v1/models", self._static(lambda: self._models_body))
        r.add_get("/api/tags", self._static(lambda: self._tags_body))
        r.add_get("/health", self._static(lambda: b'{"status":"ok"}'))
        r.add_get("/_fake/requests", self._http_requests)
        r.add_post("/_fake/reset", self._http_reset)
        r.add_get("/_fake/config", self._http_config)
        r.add_post("/_fake/config", self._http_config)
        runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=0.25)
        await runner.setup()
        try:
            await web.TCPSite(runner, host, port, backlog=2048).start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner, self._host, self._port = runner, host, runner.addresses[0][1]
        self._apply(self._opts, restart_loading=True, reseed=False)
        return self._port

    async def stop(self) -> None:
        runner, self._runner, self._port = self._runner, None, 0
        if runner is not None:
            await runner.cleanup()

    async def __aenter__(self) -> FakeBackend:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # ---- helpers -----------------------------------------------------------------------------
    def _json(self, payload: Any, status: int = 200) -> web.Response:
        return web.Response(body=orjson.dumps(payload), status=status, headers=_JSON)

    def _error(self, status: int, message: str, code: str | None = None, anthropic: bool = False,
               param: str | None = None) -> web.Response:
        if anthropic:
            payload: dict[str, Any] = {"type": "error", "error": {"type": _ANTHROPIC_TYPES[status],
                                                                  "message": message}}
        else:
            payload = {"error": {"message": message, "type": _OPENAI_TYPES[status], "param": param,
                                 "code": code}}
        resp = self._json(payload, status)
        if status == 503:
            resp.headers["Retry-After"] = str(max(1, math.ceil(self._loading_until - time.monotonic())))
        resp.headers["X-Fake-Backend"] = self._opts.name
        return resp

    def _abort(self, request: web.Request) -> web.Response:
        """Close the connection; aiohttp then fails to write the returned response and drops it."""
        if request.transport is not None:
            request.transport.close()
        return web.Response()

    def _record(self, request: web.Request, body: Any) -> None:
        headers = {k.lower(): v for k, v in request.headers.items()
                   if k.lower() in _LOGGED_HEADERS or k.lower().startswith("x-")}
        model = body.get("model") if isinstance(body, dict) else None
        self._log.append({"method": request.method, "path": request.path, "model": model,
                          "headers": headers, "body": body, "ts": time.time()})

    def _gate(self, request: web.Request, anthropic: bool = False) -> web.Response | None:
        """Loading, auth and fail_mode checks shared by every API endpoint."""
        opts = self._opts
        if time.monotonic() < self._loading_until:
            return self._error(503, f"model is loading ({opts.name})", "model_loading", anthropic)
        if opts.api_key is not None:
            auth = request.headers.get("Authorization", "")
            key = auth[7:] if auth.startswith("Bearer ") else request.headers.get("x-api-key")
            if key != opts.api_key:
                return self._error(401, "invalid api key", "invalid_api_key", anthropic)
        if opts.fail_mode == "500":
            return self._error(500, "injected failure (fail_mode=500)", "internal_error", anthropic)
        if opts.fail_mode == "close":
            return self._abort(request)
        return None

    def _static(self, body: Any) -> Any:
        async def handler(request: web.Request) -> web.StreamResponse:
            self._record(request, None)
            err = self._gate(request)
            return err if err is not None else await self._send(request, [body()], 0, json=True)
        return handler

    async def _inference(self, request: web.Request, need: str, anthropic: bool = False
                         ) -> tuple[dict[str, Any], web.StreamResponse | None]:
        """Read, record and validate a POST; return (body, error response or None)."""
        raw = await request.read()
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError:
            body = None
        self._record(request, body)
        if (resp := self._gate(request, anthropic)) is not None:
            return {}, resp
        if not isinstance(body, dict):
            return {}, self._error(400, "request body must be a JSON object", None, anthropic)
        model = body.get("model")
        if not isinstance(model, str) or not model:
            return body, self._error(400, "'model' is required", None, anthropic, "model")
        if need == "messages" and not isinstance(body.get("messages"), list):
            return body, self._error(400, "'messages' must be a list", None, anthropic, "messages")
        if need == "input" and (not isinstance(body.get("input"), str | list) or body["input"] == []):
            return body, self._error(400, "'input' must be a string or non-empty list", None, False, "input")
        if model not in self._models:
            return body, self._error(404, f"The model '{model}' does not exist", "model_not_found",
                                     anthropic, "model")
        if self._opts.latency_ms:
            await asyncio.sleep(self._opts.latency_ms / 1000)
        if self._opts.error_rate and self._rng.random() < self._opts.error_rate:
            return body, self._error(500, "injected failure (error_rate)", "internal_error", anthropic)
        return body, None

    def _reply(self, body: dict[str, Any], *limit_keys: str) -> tuple[str, bool]:
        """(reply text, truncated by the request's token limit)."""
        text = self._opts.reply
        if text is None:
            users = [m for m in body.get("messages", ()) if isinstance(m, dict) and m.get("role") == "user"]
            last = _text(users[-1].get("content")) if users else ""
            text = f"echo: {last}"[:_MAX_REPLY] if last else f"hello from {body['model']}"
        limit = next((body[k] for k in limit_keys if body.get(k) is not None), None)
        if isinstance(limit, int) and not isinstance(limit, bool) and 0 < limit < _tokens(text):
            return text[: limit * 4], True
        return text, False

    def _prompt_tokens(self, body: dict[str, Any]) -> int:
        texts = [_text(m.get("content")) for m in body.get("messages", ()) if isinstance(m, dict)]
        return sum(_tokens(t) + 3 for t in texts) + _tokens(_text(body.get("system")))

    async def _send(self, request: web.Request, parts: list[bytes], lead: int, json: bool = False
                    ) -> web.StreamResponse:
        """Send `parts` (one JSON body, or SSE events of which the first `lead` are preamble),
        honouring chunk_delay_ms and the midstream failure."""
        opts = self._opts
        midstream = opts.fail_mode == "midstream"
        if json and not midstream:
            return web.Response(body=parts[0], headers=self._json_headers)
        if json:  # midstream on a JSON body: announce the full length, send half, drop
            headers = {**self._json_headers, "Content-Length": str(len(parts[0]))}
            parts, lead, cut = [parts[0][: len(parts[0]) // 2]], 0, 1
        else:
            headers = self._sse_headers
            cut = lead + min(opts.midstream_after_chunks, opts.stream_chunks) if midstream else len(parts)
        resp = web.StreamResponse(headers=headers)
        try:
            await resp.prepare(request)
            if not opts.chunk_delay_ms or json:
                await resp.write(b"".join(parts[:cut]))
            else:
                for i, part in enumerate(parts[:cut]):
                    if i > lead:
                        await asyncio.sleep(opts.chunk_delay_ms / 1000)
                    await resp.write(part)
            if midstream:
                return self._abort(request)
            await resp.write_eof()
        except ConnectionError:  # the client went away mid-reply: nothing left to do
            pass
        return resp

    # ---- endpoints ---------------------------------------------------------------------------
    async def _chat(self, request: web.Request) -> web.StreamResponse:
        body, err = await self._inference(request, "messages")
        if err is not None:
            return err
        opts, model = self._opts, body["model"]
        text, cut = self._reply(body, "max_completion_tokens", "max_tokens")
        finish = "length" if cut else "stop"
        prompt, completion = self._prompt_tokens(body), _tokens(text)
        usage = {"prompt_tokens": prompt, "completion_tokens": completion,
                 "total_tokens": prompt + completion}
        base = {"id": f"chatcmpl-fake{next(self._ids)}", "created": int(time.time()), "model": model}
        if not body.get("stream"):
            msg = {"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": None,
                   "finish_reason": finish}
            payload = {**base, "object": "chat.completion", "choices": [msg]}
            if opts.report_usage:
                payload["usage"] = usage
            return await self._send(request, [orjson.dumps(payload)], 0, json=True)
        so = body.get("stream_options")
        with_usage = opts.report_usage and isinstance(so, dict) and so.get("include_usage") is True
        extra = {"usage": None} if with_usage else {}

        def chunk(delta: dict[str, Any], fin: str | None = None) -> bytes:
            return _sse({**base, "object": "chat.completion.chunk", **extra,
                         "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": fin}]})
        events = [chunk({"role": "assistant", "content": ""})]
        events += [chunk({"content": piece}) for piece in _split(text, opts.stream_chunks)]
        events.append(chunk({}, finish))
        if with_usage:
            events.append(_sse({**base, "object": "chat.completion.chunk", "choices": [], "usage": usage}))
        events.append(b"data: [DONE]\n\n")
        return await self._send(request, events, 1)

    async def _embeddings(self, request: web.Request) -> web.StreamResponse:
        body, err = await self._inference(request, "input")
        if err is not None:
            return err
        raw = body["input"]
        items = [raw] if isinstance(raw, str) or all(isinstance(x, int) for x in raw) else raw
        texts = [x if isinstance(x, str) else orjson.dumps(x).decode() for x in items]
        dims = body.get("dimensions")
        ok = isinstance(dims, int) and not isinstance(dims, bool) and 0 < dims <= 65536
        dim = dims if ok else self._opts.embedding_dim
        b64 = body.get("encoding_format") == "base64"
        data = []
        for i, t in enumerate(texts):
            vec: Any = _embed(t, dim)
            if b64:
                vec = base64.b64encode(struct.pack(f"<{dim}f", *vec)).decode()
            data.append({"object": "embedding", "index": i, "embedding": vec})
        payload: dict[str, Any] = {"object": "list", "data": data, "model": body["model"]}
        if self._opts.report_usage:
            n = sum(_tokens(t) for t in texts)
            payload["usage"] = {"prompt_tokens": n, "total_tokens": n}
        return await self._send(request, [orjson.dumps(payload)], 0, json=True)

    async def _messages(self, request: web.Request) -> web.StreamResponse:
        """Minimal Anthropic Messages API."""
        body, err = await self._inference(request, "messages", anthropic=True)
        if err is not None:
            return err
        opts = self._opts
        text, cut = self._reply(body, "max_tokens")
        stop = "max_tokens" if cut else "end_turn"
        usage_in, usage_out = self._prompt_tokens(body), _tokens(text)
        msg: dict[str, Any] = {"id": f"msg_fake{next(self._ids)}", "type": "message", "role": "assistant",
                               "model": body["model"], "content": [{"type": "text", "text": text}],
                               "stop_reason": stop, "stop_sequence": None}
        if opts.report_usage:
            msg["usage"] = {"input_tokens": usage_in, "output_tokens": usage_out}
        if not body.get("stream"):
            return await self._send(request, [orjson.dumps(msg)], 0, json=True)
        start = {**msg, "content": [], "stop_reason": None}
        if opts.report_usage:
            start["usage"] = {"input_tokens": usage_in, "output_tokens": 0}
        delta: dict[str, Any] = {"type": "message_delta",
                                 "delta": {"stop_reason": stop, "stop_sequence": None}}
        if opts.report_usage:
            delta["usage"] = {"output_tokens": usage_out}
        block = {"type": "text", "text": ""}
        events = [_sse({"type": "message_start", "message": start}),
                  _sse({"type": "content_block_start", "index": 0, "content_block": block})]
        pieces = _split(text, opts.stream_chunks)
        events += [_sse({"type": "content_block_delta", "index": 0,
                         "delta": {"type": "text_delta", "text": p}}) for p in pieces]
        events += [_sse({"type": "content_block_stop", "index": 0}), _sse(delta),
                   _sse({"type": "message_stop"})]
        return await self._send(request, events, 2)

    async def _http_requests(self, request: web.Request) -> web.Response:
        return self._json(list(self._log))

    async def _http_reset(self, request: web.Request) -> web.Response:
        self.reset()
        return self._json({"ok": True})

    async def _http_config(self, request: web.Request) -> web.Response:
        if request.method == "GET":
            return self._json(asdict(self._opts))
        try:
            changes = orjson.loads(await request.read())
            if not isinstance(changes, dict):
                raise ValueError("body must be a JSON object of option names to values")
            opts = self.configure(**changes)
        except (ValueError, TypeError) as exc:  # orjson.JSONDecodeError is a ValueError
            return self._error(400, str(exc), "invalid_config")
        return self._json(asdict(opts))


# ---- CLI helpers (`nexus fake-backend`) ---------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the fake backend's options to an argparse parser (for `nexus fake-backend`)."""
    d = FakeBackendOptions()
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port (printed on start)")
    parser.add_argument("--name", default=d.name)
    parser.add_argument("--model", dest="models", action="append", metavar="MODEL",
                        help=f"model to serve (repeatable; default {d.models[0]})")
    parser.add_argument("--latency-ms", type=float, default=d.latency_ms)
    parser.add_argument("--stream-chunks", type=int, default=d.stream_chunks)
    parser.add_argument("--chunk-delay-ms", type=float, default=d.chunk_delay_ms)
    parser.add_argument("--error-rate", type=float, default=d.error_rate)
    parser.add_argument("--seed", type=int, default=d.seed)
    parser.add_argument("--fail-mode", choices=FAIL_MODES, default=d.fail_mode)
    parser.add_argument("--midstream-after-chunks", type=int, default=d.midstream_after_chunks)
    parser.add_argument("--loading-seconds", type=float, default=d.loading_seconds)
    parser.add_argument("--no-usage", dest="report_usage", action="store_false")
    parser.add_argument("--reply", default=d.reply, help="fixed reply text (default: echo of the user)")
    parser.add_argument("--context-length", type=int, default=d.context_length)
    parser.add_argument("--embedding-dim", type=int, default=d.embedding_dim)
    parser.add_argument("--api-key", default=d.api_key, help="require this key (Bearer or x-api-key)")


def options_from_args(ns: argparse.Namespace) -> FakeBackendOptions:
    """Build options from a namespace filled by `add_arguments` (raises ValueError/TypeError)."""
    values = {f.name: getattr(ns, f.name) for f in fields(FakeBackendOptions) if hasattr(ns, f.name)}
    if not values.get("models"):
        values.pop("models", None)
    return FakeBackendOptions(**values)


def run_forever(options: FakeBackendOptions, host: str = "127.0.0.1", port: int = 0) -> None:
    """Serve until SIGINT/SIGTERM. Prints `fake backend <name> listening on <url>` once bound."""

    async def main() -> None:
        stop = stop_on_signals()
        fb = FakeBackend(options)
        await fb.start(host, port)
        try:
            print(f"fake backend {options.name} listening on {fb.url}", flush=True)
            await stop.wait()
        finally:
            await fb.stop()

    factory = None
    with contextlib.suppress(ImportError):
        import uvloop

        factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        runner.run(main())
