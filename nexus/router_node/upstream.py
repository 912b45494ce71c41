"""Calls to inference backends: one pooled aiohttp session per process, and per-type adapters.

`Upstream.open` performs one attempt against one backend and returns an `Exchange` only once the
backend's answer has been checked up to what the client will see first (the whole body for JSON, the
first event for a stream), so every failure up to that point is an `UpstreamError` the caller may retry
on the next candidate without the client having seen anything. After that, failures surface from
`Exchange.rest()` as `MidStreamError`.

What a backend may not do (DESIGN.md section 8):
- redirect: redirects are never followed; a 3xx is an upstream failure (fail over);
- receive a key meant for another origin: a backend's key is only sent to its configured URL's origin;
- answer a 200 that is not the API's object (HTML, truncated JSON, an error object), or start a stream
  whose first event does not parse: upstream failures, counted as such, failed over;
- send an unbounded body: at most `server.max_response_bytes`;
- bill garbage: usage that is not non-negative bounded integers counts as missing (nexus/core/usage.py).

Adapters translate per backend type: OpenAI-compatible types (vllm, llamacpp, lmstudio, openai, google,
generic, and ollama through its OpenAI-compatible path) pass bodies through, rewriting only the model
name (aliases) and asking streams for usage (`stream_options.include_usage`) unless the backend is known
to refuse that field: a 400 naming it is retried once without it, and the answer is remembered
(`no_stream_options`, shared with other replicas through the node). Anthropic is translated to and from
the Messages API. Keys come from the backend's declared secret at call time, only for a host that secret
lists (`nexus.core.config.key_for`), and never leave this module.
"""

from __future__ import annotations

import email.utils
import functools
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import orjson

from nexus.core.config import ServerConfig, key_for
from nexus.core.gateway_errors import UpstreamError
from nexus.core.model import Backend, BackendType
from nexus.core.secrets import SecretConfig, SecretRefused
from nexus.core.usage import Usage, openai_usage
from nexus.router_node.adapters.openai import OpenAIStream, check_body, completion_chars, error_envelope

__all__ = ["Exchange", "MidStreamError", "Upstream", "Usage", "endpoint_url", "origin", "parse_retry_after"]

RETRYABLE_STATUS = frozenset({429, 500, 502, 503, 504, 529})  # 529: Anthropic overloaded
ANTHROPIC_VERSION = "2023-06-01"
MAX_RETRY_AFTER = 86400.0
_EVENT_STREAM = "text/event-stream"


class MidStreamError(Exception):
    """The backend failed after the client received the first bytes. `reported` means the translated
    stream already carried an error event to the client, so the gateway must not send another."""

    def __init__(self, message: str, *, reported: bool = False) -> None:
        super().__init__(message)
        self.reported = reported


def endpoint_url(backend: Backend, path: str) -> str:
    """`path` is OpenAI-style (`/v1/chat/completions`); a base URL that already ends in a version
    segment (`/v1`, or Gemini's `/v1beta/openai`) keeps it instead of gaining a second one."""
    base = backend.url
    if base.endswith(("/v1", "/openai")):
        return base + path.removeprefix("/v1")
    return base + path


@functools.lru_cache(maxsize=4096)
def origin(url: str) -> tuple[str, str, int]:
    """(scheme, host, port) of a URL, the unit a credential is bound to."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    return scheme, (parts.hostname or "").lower(), parts.port or (443 if scheme == "https" else 80)


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or an HTTP date), bounded; None when absent or bad."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        seconds = when.timestamp() - (time.time() if now is None else now)
    if seconds != seconds:  # NaN
        return None
    return min(max(seconds, 0.0), MAX_RETRY_AFTER)


@dataclass(slots=True)
class Exchange:
    """A backend's answer whose first bytes are in hand (and checked)."""

    status: int
    content_type: str
    first: bytes
    streaming: bool
    usage: Usage | None
    _response: aiohttp.ClientResponse | None
    _translate: Any = None
    usage_problem: str | None = None  # the backend sent usage that is not valid counts
    completion_chars: int = 0  # text length of the answer, for the estimate when usage is missing

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
                if tr.done:
                    break
            tail = tr.flush()
            if tail:
                yield tail
            if tr.error is not None:
                raise MidStreamError(f"the backend reported an error mid-stream: {tr.error}", reported=True)
            if not tr.done:
                raise MidStreamError("the backend closed the stream before it finished")
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise MidStreamError(f"the backend broke off the stream: {type(exc).__name__}") from exc
        finally:
            self.usage = tr.usage or self.usage
            self.usage_problem = getattr(tr, "usage_problem", None) or self.usage_problem
            self.completion_chars = getattr(tr, "completion_chars", 0)
            response.release()

    def close(self) -> None:
        if self._response is not None:
            self._response.close()


class Upstream:
    """Owns the process's one `aiohttp.ClientSession`; started and closed by the app lifespan."""

    def __init__(
        self,
        server: ServerConfig,
        secrets: Mapping[str, SecretConfig] | None = None,
        on_learned: Callable[[str], None] | None = None,
    ) -> None:
        self._server = server
        self._secrets = secrets or {}
        self._session: aiohttp.ClientSession | None = None
        self._on_learned = on_learned
        self.no_stream_options: set[str] = set()  # backends known to refuse stream_options

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

    def learn_no_stream_options(self, backend: str) -> None:
        if backend not in self.no_stream_options:
            self.no_stream_options.add(backend)
            if self._on_learned is not None:
                self._on_learned(backend)

    def _headers(self, backend: Backend, url: str) -> dict[str, str]:
        headers = {"Content-Type": "application/json"}
        if backend.secret is not None and origin(url) != origin(backend.url):
            raise UpstreamError(
                backend.name, "refused to send its credentials to an origin other than its configured URL's"
            )
        try:
            key = key_for(backend.secret, url, self._secrets)
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
        ask_usage = stream and not client_wants_usage and backend.name not in self.no_stream_options
        url = endpoint_url(backend, path)
        response = await self.request(backend, url, _encode(body, raw, model, ask_usage), timeout)
        if ask_usage and response.status == 400:
            payload = await self._read(backend, response)
            if b"stream_options" not in payload:
                return _error(backend, 400, payload)
            # an OpenAI-compatible server that refuses fields it does not know: once more without it
            self.learn_no_stream_options(backend.name)
            ask_usage = False
            response = await self.request(backend, url, _encode(body, raw, model, False), timeout)
        if response.status != 200:
            return _error(backend, response.status, await self._read(backend, response))
        if not stream:
            return _whole(backend, await self._read(backend, response), embeddings=path.endswith("/embeddings"))
        if not response.content_type.startswith(_EVENT_STREAM):
            await self._read(backend, response)
            raise UpstreamError(backend.name, f"answered a stream request with {response.content_type or 'no type'}",
                                invalid=True)
        translate = OpenAIStream(drop_usage_event=ask_usage, count_content=not (ask_usage or client_wants_usage))
        return await self.first_events(backend, response, translate)

    async def _open_anthropic(
        self, backend: Backend, body: dict[str, Any], *, model: str, stream: bool, timeout: float | None
    ) -> Exchange:
        from nexus.router_node.adapters import anthropic as adapter

        try:
            request = adapter.to_anthropic({**body, "stream": stream}, model)
        except adapter.TranslationError as exc:
            err = {"message": str(exc), "type": "invalid_request_error", "param": exc.param, "code": None}
            return Exchange(400, "application/json", orjson.dumps({"error": err}), False, None, None)
        response = await self.request(backend, endpoint_url(backend, "/v1/messages"), orjson.dumps(request), timeout)
        created, status = int(time.time()), response.status
        if status != 200:
            payload = await self._read(backend, response)
            return Exchange(status, "application/json", orjson.dumps(adapter.from_anthropic_error(status, payload)),
                            False, None, None)
        if not stream:
            obj, problem = adapter.check_message(await self._read(backend, response))
            if obj is None:
                raise UpstreamError(backend.name, problem or "answered 200 with something that is not a message",
                                    invalid=True)
            return _whole(backend, orjson.dumps(adapter.from_anthropic(obj, model, created)),
                          usage_problem=adapter.usage_problem(obj.get("usage")))
        if not response.content_type.startswith(_EVENT_STREAM):
            await self._read(backend, response)
            raise UpstreamError(backend.name, f"answered a stream request with {response.content_type or 'no type'}",
                                invalid=True)
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        return await self.first_events(backend, response, adapter.StreamTranslator(model, created, include_usage))

    async def request(self, backend: Backend, url: str, data: bytes, timeout: float | None) -> aiohttp.ClientResponse:
        kwargs: dict[str, Any] = {}
        if timeout is not None:
            kwargs["timeout"] = aiohttp.ClientTimeout(total=timeout, sock_connect=self._server.connect_timeout_seconds)
        headers = self._headers(backend, url)
        try:
            response = await self.session.post(url, data=data, headers=headers, allow_redirects=False, **kwargs)
        except TimeoutError as exc:
            raise UpstreamError(backend.name, "timed out connecting or waiting for headers", timeout=True) from exc
        except aiohttp.ClientError as exc:
            raise UpstreamError(backend.name, f"connection failed ({type(exc).__name__})") from exc
        status = response.status
        if status in RETRYABLE_STATUS:
            retry_after = parse_retry_after(response.headers.get("Retry-After"))
            response.release()
            raise UpstreamError(backend.name, f"answered HTTP {status}", status=status, retry_after=retry_after)
        if 300 <= status < 400:
            response.release()
            raise UpstreamError(backend.name, f"answered HTTP {status}, a redirect; redirects are never followed",
                                status=status)
        if status in (401, 403):
            # the backend refused Nexus's own credentials: the client's request is not at fault, so this is
            # a backend failure (try the next candidate; 502 at the end), never a 401 passed to the client
            response.release()
            raise UpstreamError(
                backend.name, f"rejected the gateway's credentials (HTTP {status}); check its secret",
                status=status,
            )
        return response

    async def _read(self, backend: Backend, response: aiohttp.ClientResponse) -> bytes:
        """The whole body, at most `server.max_response_bytes`; failures are retryable."""
        limit = self._server.max_response_bytes
        try:
            if response.content_length is not None and response.content_length > limit:
                raise UpstreamError(backend.name, f"answered {response.content_length} bytes, over "
                                                  f"server.max_response_bytes ({limit})")
            chunks, size = [], 0
            async for chunk in response.content.iter_any():
                size += len(chunk)
                if size > limit:
                    raise UpstreamError(backend.name, f"answered more than server.max_response_bytes ({limit})")
                chunks.append(chunk)
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)
        except TimeoutError as exc:
            raise UpstreamError(backend.name, "timed out reading the response", timeout=True) from exc
        except aiohttp.ClientError as exc:
            raise UpstreamError(backend.name, f"broke off the response ({type(exc).__name__})") from exc
        finally:
            response.release()

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
            if translate.error is not None:
                # the error came with the first bytes, none of which reached the client yet: retry elsewhere
                raise UpstreamError(backend.name, f"stream error before the first token: {translate.error['message']}",
                                    invalid=translate.error.get("code") == "upstream_invalid_stream")
        except TimeoutError as exc:
            response.close()
            raise UpstreamError(backend.name, "timed out before the first token", timeout=True) from exc
        except aiohttp.ClientError as exc:
            response.close()
            raise UpstreamError(backend.name, f"broke off before the first token ({type(exc).__name__})") from exc
        except UpstreamError:
            response.close()
            raise
        return Exchange(200, _EVENT_STREAM, first, True, None, response, translate)


def _encode(body: dict[str, Any], raw: bytes, model: str, ask_usage: bool) -> bytes:
    patch: dict[str, Any] = {}
    if body.get("model") != model:
        patch["model"] = model
    if ask_usage:
        patch["stream_options"] = {**(body.get("stream_options") or {}), "include_usage": True}
    return orjson.dumps({**body, **patch}) if patch else raw


def _error(backend: Backend, status: int, payload: bytes) -> Exchange:
    """A non-retryable error answer (400, 404, 422...), passed to the client as an OpenAI envelope."""
    return Exchange(status, "application/json", error_envelope(status, payload, backend.name), False, None, None)


def _whole(backend: Backend, payload: bytes, *, embeddings: bool = False, usage_problem: str | None = None,
           ) -> Exchange:
    """A 200 JSON answer, checked: the API's object, or an UpstreamError (fail over)."""
    obj, problem = check_body(payload, embeddings)
    if obj is None:
        raise UpstreamError(backend.name, problem or "answered 200 with an unexpected body", invalid=True)
    usage, invalid = openai_usage(obj.get("usage"))
    return Exchange(200, "application/json", payload, False, usage, None, usage_problem=usage_problem or invalid,
                    completion_chars=0 if embeddings else completion_chars(obj))
