"""Calls to inference backends: one pooled aiohttp session per process, and per-type adapters.

`Upstream.open` performs one attempt against one backend and returns an `Exchange` only once the
backend has produced its first bytes (the whole body for JSON, the first events for a stream), so every
failure up to that point is an `UpstreamError` the caller may retry on the next candidate without the
client having seen anything. After that, failures surface from `Exchange.rest()` as `MidStreamError`.

Adapters translate per backend type: OpenAI-compatible types (vllm, llamacpp, lmstudio, openai, google,
generic, and ollama through its OpenAI-compatible path) pass bodies through, rewriting only the model
name (aliases) and asking streams for usage so billing uses reported tokens; Anthropic is translated
to and from the Messages API. Keys come from the backend's declared secret at call time, only for a host
that secret lists (`controlplane.config.key_for`), and never leave this module.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson

from controlplane.config import ServerConfig, key_for
from controlplane.model import Backend, BackendType
from controlplane.secrets import SecretConfig, SecretRefused
from router_node.errors import UpstreamError

__all__ = ["Exchange", "MidStreamError", "Upstream", "Usage", "endpoint_url"]

RETRYABLE_STATUS = frozenset({429, 500, 502, 503, 504, 529})  # 529: Anthropic overloaded
ANTHROPIC_VERSION = "2023-06-01"


class MidStreamError(Exception):
    """The backend failed after the client received the first bytes. `reported` means the translated
    stream already carried an error event to the client, so the gateway must not send another."""

    def __init__(self, message: str, *, reported: bool = False) -> None:
        super().__init__(message)
        self.reported = reported


@dataclass(slots=True)
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0


def endpoint_url(backend: Backend, path: str) -> str:
    """`path` is OpenAI-style (`/v1/chat/completions`); a base URL that already ends in a version
    segment (`/v1`, or Gemini's `/v1beta/openai`) keeps it instead of gaining a second one."""
    base = backend.url
    if base.endswith(("/v1", "/openai")):
        return base + path.removeprefix("/v1")
    return base + path


class _OpenAIStream:
    """Pass OpenAI SSE events through at event boundaries; note usage; drop the usage-only event
    when Nexus asked for it and the client did not."""

    __slots__ = ("_buf", "_drop_usage_event", "done", "usage")

    def __init__(self, drop_usage_event: bool) -> None:
        self._buf = b""
        self._drop_usage_event = drop_usage_event
        self.usage: Usage | None = None
        self.done = False

    def feed(self, chunk: bytes) -> bytes:
        buf = self._buf + chunk if self._buf else chunk
        end = buf.rfind(b"\n\n")
        if end < 0:
            self._buf = buf
            return b""
        complete, self._buf = buf[: end + 2], buf[end + 2 :]
        if b"[DONE]" in complete:
            self.done = True
        if b'"usage":{' not in complete and b'"usage": {' not in complete:
            return complete  # most events: no usage object (OpenAI sends "usage":null until the end)
        kept = []
        for event in complete.split(b"\n\n"):
            if not event:
                continue
            if (b'"usage":{' in event or b'"usage": {' in event) and event.startswith(b"data:"):
                try:
                    data = orjson.loads(event[5:])
                except orjson.JSONDecodeError:
                    data = None
                if isinstance(data, dict):
                    usage = data.get("usage")
                    if isinstance(usage, dict):
                        self.usage = Usage(
                            int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0)
                        )
                    if self._drop_usage_event and data.get("choices") == []:
                        continue
            kept.append(event)
        return b"".join(e + b"\n\n" for e in kept)

    def flush(self) -> bytes:
        rest, self._buf = self._buf, b""
        return rest


@dataclass(slots=True)
class Exchange:
    """A backend's answer whose first bytes are in hand."""

    status: int
    content_type: str
    first: bytes
    streaming: bool
    usage: Usage | None
    _response: aiohttp.ClientResponse | None
    _translate: Any = None

    async def rest(self) -> AsyncIterator[bytes]:
        """The remaining stream, translated; raises MidStreamError if the backend breaks off."""
        response, tr = self._response, self._translate
        if response is None:
            return
        try:
            async for chunk in response.content.iter_any():
                out = tr.feed(chunk)
                if out:
                    yield out
            tail = tr.flush()
            if tail:
                yield tail
            if getattr(tr, "error", None) is not None:
                raise MidStreamError(f"the backend reported an error mid-stream: {tr.error}", reported=True)
            if not tr.done:
                raise MidStreamError("the backend closed the stream before it finished")
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise MidStreamError(f"the backend broke off the stream: {type(exc).__name__}") from exc
        finally:
            self.usage = tr.usage or self.usage
            response.release()

    def close(self) -> None:
        if self._response is not None:
            self._response.close()


class Upstream:
    """Owns the process's one `aiohttp.ClientSession`; started and closed by the app lifespan."""

    def __init__(self, server: ServerConfig, secrets: Mapping[str, SecretConfig] | None = None) -> None:
        self._server = server
        self._secrets = secrets or {}
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        connector = aiohttp.TCPConnector(limit=0, ttl_dns_cache=300, keepalive_timeout=60, enable_cleanup_closed=True)
        self._session = aiohttp.ClientSession(
            connector=connector,
            timeout=aiohttp.ClientTimeout(
                total=self._server.request_timeout_seconds,
                sock_connect=self._server.connect_timeout_seconds,
            ),
            skip_auto_headers=("User-Agent",),
            auto_decompress=True,
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise RuntimeError("Upstream.start() was not awaited")
        return self._session

    def _headers(self, backend: Backend) -> dict[str, str]:
        headers = {"Content-Type": "application/json"}
        try:
            key = key_for(backend.secret, backend.url, self._secrets)
        except SecretRefused as exc:  # a second line behind the admin API's check: send nothing at all
            raise UpstreamError(backend.name, f"not called: {exc}") from None
        if backend.type is BackendType.ANTHROPIC:
            headers["anthropic-version"] = ANTHROPIC_VERSION
            if key:
                headers["x-api-key"] = key
        elif key:
            headers["Authorization"] = f"Bearer {key}"
        return headers

    async def open(
        self,
        backend: Backend,
        path: str,
        body: dict[str, Any],
        raw: bytes,
        *,
        model: str,
        stream: bool,
        timeout: float | None = None,
    ) -> Exchange:
        """One attempt; raises UpstreamError for anything that may be retried elsewhere."""
        if backend.type is BackendType.ANTHROPIC:
            return await self._open_anthropic(backend, body, model=model, stream=stream, timeout=timeout)
        client_wants_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        patch: dict[str, Any] = {}
        if body.get("model") != model:
            patch["model"] = model
        if stream and not client_wants_usage:
            patch["stream_options"] = {**(body.get("stream_options") or {}), "include_usage": True}
        data = orjson.dumps({**body, **patch}) if patch else raw
        response = await self.request(backend, endpoint_url(backend, path), data, timeout)
        if response.status != 200 or not stream:
            return await self._whole(backend, response)
        translate = _OpenAIStream(drop_usage_event=not client_wants_usage)
        return await self.first_events(backend, response, translate)

    async def _open_anthropic(
        self, backend: Backend, body: dict[str, Any], *, model: str, stream: bool, timeout: float | None
    ) -> Exchange:
        from router_node.adapters import anthropic as adapter

        try:
            request = adapter.to_anthropic({**body, "stream": stream}, model)
        except adapter.TranslationError as exc:
            err = {"message": str(exc), "type": "invalid_request_error", "param": exc.param, "code": None}
            return Exchange(400, "application/json", orjson.dumps({"error": err}), False, None, None)
        response = await self.request(backend, endpoint_url(backend, "/v1/messages"), orjson.dumps(request), timeout)
        created, status = int(time.time()), response.status
        if status != 200 or not stream:

            def convert(raw: bytes) -> bytes:
                return orjson.dumps(adapter.from_anthropic(orjson.loads(raw) if raw.startswith(b"{") else {}, model,
                                                           created))

            ex = await self._whole(backend, response, convert)
            if status != 200:
                ex.first = orjson.dumps(adapter.from_anthropic_error(status, ex.first))
                ex.content_type = "application/json"
            return ex
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        translate = adapter.StreamTranslator(model, created, include_usage)
        ex = await self.first_events(backend, response, translate)
        if translate.error is not None:
            # the error came with the first bytes, none of which reached the client yet: retry elsewhere
            ex.close()
            raise UpstreamError(backend.name, f"stream error before the first token: {translate.error}")
        return ex

    async def request(self, backend: Backend, url: str, data: bytes, timeout: float | None) -> aiohttp.ClientResponse:
        kwargs: dict[str, Any] = {}
        if timeout is not None:
            kwargs["timeout"] = aiohttp.ClientTimeout(total=timeout, sock_connect=self._server.connect_timeout_seconds)
        try:
            response = await self.session.post(url, data=data, headers=self._headers(backend), **kwargs)
        except TimeoutError as exc:
            raise UpstreamError(backend.name, "timed out connecting or waiting for headers", timeout=True) from exc
        except aiohttp.ClientError as exc:
            raise UpstreamError(backend.name, f"connection failed ({type(exc).__name__})") from exc
        if response.status in RETRYABLE_STATUS:
            response.release()
            raise UpstreamError(backend.name, f"answered HTTP {response.status}", status=response.status)
        if response.status in (401, 403):
            # the backend refused Nexus's own credentials: the client's request is not at fault, so this is
            # a backend failure (try the next candidate; 502 at the end), never a 401 passed to the client
            response.release()
            raise UpstreamError(
                backend.name, f"rejected the gateway's credentials (HTTP {response.status}); check its secret",
                status=response.status,
            )
        return response

    async def _whole(
        self, backend: Backend, response: aiohttp.ClientResponse, convert: Callable[[bytes], bytes] | None = None
    ) -> Exchange:
        try:
            payload = await response.read()
        except TimeoutError as exc:
            raise UpstreamError(backend.name, "timed out reading the response", timeout=True) from exc
        except aiohttp.ClientError as exc:
            raise UpstreamError(backend.name, f"broke off the response ({type(exc).__name__})") from exc
        finally:
            response.release()
        usage = None
        if response.status == 200:
            if convert is not None:
                payload = convert(payload)
            usage = usage_of(payload)
        return Exchange(
            response.status, response.headers.get("Content-Type", "application/json"), payload, False, usage, None
        )

    async def first_events(self, backend: Backend, response: aiohttp.ClientResponse, translate: Any) -> Exchange:
        """Read until the translator yields bytes for the client; failures so far are retryable."""
        first = b""
        try:
            while not first:
                chunk = await response.content.readany()
                if not chunk:
                    first = translate.flush()
                    if not first:
                        raise UpstreamError(backend.name, "closed the stream before sending anything")
                    break
                first = translate.feed(chunk)
        except TimeoutError as exc:
            response.close()
            raise UpstreamError(backend.name, "timed out before the first token", timeout=True) from exc
        except aiohttp.ClientError as exc:
            response.close()
            raise UpstreamError(backend.name, f"broke off before the first token ({type(exc).__name__})") from exc
        except UpstreamError:
            response.close()
            raise
        return Exchange(200, "text/event-stream", first, True, None, response, translate)


def usage_of(payload: bytes) -> Usage | None:
    if b'"usage"' not in payload:
        return None
    try:
        usage = orjson.loads(payload).get("usage")
    except (orjson.JSONDecodeError, AttributeError):
        return None
    if not isinstance(usage, dict):
        return None
    return Usage(int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0))
