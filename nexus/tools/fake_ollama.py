"""A stand-in for an Ollama server: its native model-lifecycle API and its OpenAI-compatible chat endpoint.

Endpoints, with the wire formats of Ollama's published API reference:
- `GET /api/tags`: installed models; `GET /api/ps`: loaded models (`name`, `model`, `size`, `size_vram`,
  `expires_at`, `digest`, `details`); `GET /api/version`.
- `POST /api/generate {model, keep_alive}` with no prompt: load (answers once loaded, `done_reason: "load"`);
  with `keep_alive: 0`: unload (`done_reason: "unload"`), deferred until the model's requests in flight end.
- `POST /api/pull {model, stream}`: installs a model; streams NDJSON status lines (`pulling manifest`, ...,
  `success`) or answers one `{"status": "success"}`.
- `POST /v1/chat/completions`, `GET /v1/models`: OpenAI-compatible; a chat for an installed model that is
  not loaded loads it first (as Ollama does), so it is slow, never failed.

Strict like the real server where Nexus could go wrong: unknown body fields are refused (400), roles must
be system/user/assistant/tool with at least one message, an unknown model is 404 `model "x" not found`.
Loading takes `load_seconds`; concurrent requests for a loading model wait for the same load.
`GET /_fake/log` lists the lifecycle calls received, in order (tests assert the order of a migrate).
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from aiohttp import web

from nexus.core.shutdown import stop_on_signals

__all__ = ["FakeOllama", "add_arguments", "run_forever"]

_GENERATE_FIELDS = frozenset({"model", "prompt", "keep_alive", "stream", "options", "suffix", "images", "format",
                              "system", "template", "raw", "context", "think"})
_PULL_FIELDS = frozenset({"model", "name", "stream", "insecure"})
_CHAT_FIELDS = frozenset({"model", "messages", "stream", "temperature", "max_tokens", "top_p", "stop", "seed",
                          "stream_options", "tools", "tool_choice", "response_format", "n", "user", "frequency_penalty",
                          "presence_penalty", "max_completion_tokens"})
_ROLES = frozenset({"system", "user", "assistant", "tool"})
_SIZE = 4_000_000_000


@dataclass(slots=True)
class _Model:
    name: str
    loaded: bool = False
    loading: asyncio.Task[None] | None = None
    expires_at: float = 0.0
    inflight: int = 0
    unload_pending: bool = False
    idle: asyncio.Event = field(default_factory=asyncio.Event)


def _duration(value: Any) -> float | None:
    """Ollama's keep_alive: seconds, or a Go duration string ("5m", "1h", "-1"); None: forever."""
    if value is None:
        return 300.0
    if isinstance(value, int | float) and not isinstance(value, bool):
        return None if value < 0 else float(value)
    if isinstance(value, str):
        v = value.strip()
        units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
        for unit in ("ms", "s", "m", "h"):
            if v.endswith(unit) and v[: -len(unit)].lstrip("-").isdigit():
                n = int(v[: -len(unit)])
                return None if n < 0 else n * units[unit]
        if v.lstrip("-").isdigit():
            return None if int(v) < 0 else float(v)
    raise ValueError(f"invalid keep_alive {value!r}")


class FakeOllama:
    def __init__(self, models: Sequence[str] = ("llama3:8b",), *, load_seconds: float = 2.0,
                 pullable: Sequence[str] = (), reply: str = "ok") -> None:
        self.models = {m: _Model(m) for m in models}
        self.pullable = set(pullable)
        self.load_seconds = load_seconds
        self.reply = reply
        self.log: list[dict[str, Any]] = []
        self._runner: web.AppRunner | None = None
        self.port = 0

    # -- state -------------------------------------------------------------------------------------------
    async def _load(self, m: _Model) -> None:
        if m.loaded:
            return
        if m.loading is None:
            m.loading = asyncio.create_task(asyncio.sleep(self.load_seconds))
        task = m.loading
        await asyncio.shield(task)
        if m.loading is task:
            m.loading, m.loaded = None, True

    async def _unload_when_idle(self, m: _Model) -> None:
        m.unload_pending = True
        while m.inflight:
            m.idle.clear()
            await m.idle.wait()
        if m.unload_pending:
            m.loaded, m.unload_pending = False, False

    def _ps_entry(self, m: _Model) -> dict[str, Any]:
        forever = datetime.now(UTC) + timedelta(days=3650)
        expires = datetime.fromtimestamp(m.expires_at, UTC) if m.expires_at else forever
        return {"name": m.name, "model": m.name, "size": _SIZE, "size_vram": _SIZE, "digest": "0" * 64,
                "details": {"format": "gguf", "family": "llama", "parameter_size": "8B", "quantization_level": "Q4_0"},
                "expires_at": expires.isoformat(), "context_length": 4096}

    # -- handlers ----------------------------------------------------------------------------------------
    @staticmethod
    def _json(payload: Any, status: int = 200) -> web.Response:
        return web.Response(body=orjson.dumps(payload), status=status, content_type="application/json")

    async def _body(self, request: web.Request, allowed: frozenset[str]) -> dict[str, Any] | web.Response:
        try:
            body = orjson.loads(await request.read())
        except orjson.JSONDecodeError:
            return self._json({"error": "invalid JSON body"}, 400)
        if not isinstance(body, dict):
            return self._json({"error": "body must be a JSON object"}, 400)
        unknown = sorted(set(body) - allowed)
        if unknown:
            return self._json({"error": f"unknown fields {unknown}"}, 400)
        return body

    async def _tags(self, _r: web.Request) -> web.Response:
        models = [{"name": m, "model": m, "size": _SIZE, "digest": "0" * 64, "modified_at": "2026-01-01T00:00:00Z",
                   "details": {"format": "gguf", "family": "llama"}} for m in sorted(self.models)]
        return self._json({"models": models})

    async def _ps(self, _r: web.Request) -> web.Response:
        return self._json({"models": [self._ps_entry(m) for m in self.models.values() if m.loaded]})

    async def _generate(self, request: web.Request) -> web.Response:
        body = await self._body(request, _GENERATE_FIELDS)
        if isinstance(body, web.Response):
            return body
        name = body.get("model")
        if not isinstance(name, str) or name not in self.models:
            return self._json({"error": f"model {name!r} not found, try pulling it first"}, 404)
        if body.get("prompt"):
            return self._json({"error": "this stand-in serves load and unload only"}, 400)
        try:
            keep = _duration(body.get("keep_alive"))
        except ValueError as exc:
            return self._json({"error": str(exc)}, 400)
        m = self.models[name]
        self.log.append({"op": "unload" if keep == 0 else "load", "model": name, "at": time.time()})
        if keep == 0:
            await self._unload_when_idle(m)
            reason = "unload"
        else:
            m.unload_pending = False
            await self._load(m)
            m.expires_at = 0.0 if keep is None else time.time() + keep
            reason = "load"
        now = datetime.now(UTC).isoformat()
        return self._json({"model": name, "created_at": now, "response": "", "done": True, "done_reason": reason})

    async def _pull(self, request: web.Request) -> web.StreamResponse:
        body = await self._body(request, _PULL_FIELDS)
        if isinstance(body, web.Response):
            return body
        name = body.get("model") or body.get("name")
        if not isinstance(name, str) or (name not in self.pullable and name not in self.models):
            return self._json({"error": "pull model manifest: file does not exist"}, 500)
        self.log.append({"op": "pull", "model": name, "at": time.time()})
        self.models.setdefault(name, _Model(name))
        if body.get("stream") is False:
            return self._json({"status": "success"})
        resp = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
        await resp.prepare(request)
        for line in ({"status": "pulling manifest"}, {"status": "pulling 0", "total": 10, "completed": 10},
                     {"status": "verifying sha256 digest"}, {"status": "writing manifest"}, {"status": "success"}):
            await resp.write(orjson.dumps(line) + b"\n")
        await resp.write_eof()
        return resp

    async def _chat(self, request: web.Request) -> web.Response:
        body = await self._body(request, _CHAT_FIELDS)
        if isinstance(body, web.Response):
            return body
        msgs = body.get("messages")
        if not isinstance(msgs, list) or not msgs or any(
            not isinstance(x, dict) or x.get("role") not in _ROLES for x in msgs
        ):
            return self._json({"error": {"message": "messages: a non-empty list with known roles", "type": "invalid"}},
                              400)
        name = body.get("model")
        if not isinstance(name, str) or name not in self.models:
            return self._json({"error": {"message": f'model "{name}" not found, try pulling it first',
                                         "type": "api_error"}}, 404)
        m = self.models[name]
        loaded_at_arrival = m.loaded
        m.inflight += 1
        try:
            m.unload_pending = False  # a request keeps it (Ollama reloads on demand)
            await self._load(m)
            await asyncio.sleep(0.005)
        finally:
            m.inflight -= 1
            if not m.inflight:
                m.idle.set()
        self.log.append({"op": "chat", "model": name, "at": time.time(), "loaded_at_arrival": loaded_at_arrival})
        return self._json({
            "id": "chatcmpl-1", "object": "chat.completion", "created": int(time.time()), "model": name,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": self.reply}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4},
        })

    async def _models(self, _r: web.Request) -> web.Response:
        return self._json({"object": "list", "data": [{"id": m, "object": "model", "created": 0, "owned_by": "library"}
                                                      for m in sorted(self.models)]})

    async def _version(self, _r: web.Request) -> web.Response:
        return self._json({"version": "0.9.0"})

    async def _fake_log(self, _r: web.Request) -> web.Response:
        return self._json({"log": self.log, "loaded": sorted(m.name for m in self.models.values() if m.loaded)})

    # -- lifecycle ---------------------------------------------------------------------------------------
    async def start(self, host: str = "127.0.0.1", port: int = 0) -> int:
        app = web.Application()
        r = app.router
        r.add_get("/api/tags", self._tags)
        r.add_get("/api/ps", self._ps)
        r.add_get("/api/version", self._version)
        r.add_post("/api/generate", self._generate)
        r.add_post("/api/pull", self._pull)
        r.add_post("/v1/chat/completions", self._chat)
        r.add_get("/v1/models", self._models)
        r.add_get("/_fake/log", self._fake_log)
        runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=0.25)
        await runner.setup()
        await web.TCPSite(runner, host, port).start()
        self._runner, self.port = runner, runner.addresses[0][1]
        return self.port

    async def stop(self) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    async def __aenter__(self) -> FakeOllama:
        await self.start()
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.stop()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--model", dest="models", action="append", metavar="MODEL")
    parser.add_argument("--pullable", action="append", default=[], metavar="MODEL")
    parser.add_argument("--load-seconds", type=float, default=2.0)


def run_forever(ns: argparse.Namespace) -> None:
    """Serve until SIGINT/SIGTERM; prints `fake ollama listening on http://host:port` once bound."""

    async def main() -> None:
        stop = stop_on_signals()
        fake = FakeOllama(ns.models or ["llama3:8b"], load_seconds=ns.load_seconds, pullable=ns.pullable)
        port = await fake.start(ns.host, ns.port)
        try:
            print(f"fake ollama listening on http://{ns.host}:{port}", flush=True)
            await stop.wait()
        finally:
            await fake.stop()

    asyncio.run(main())
