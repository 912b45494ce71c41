"""Calls to inference backends: one pooled aiohttp session per process, and the HTTP around the backend adapters.

`Upstream.open` performs one attempt against one backend and returns an `Exchange` only once the
backend's answer has been checked up to what the client will see first (the whole body for JSON, the
first event for a stream), so every failure up to that point is an `UpstreamError` the caller may retry
on the next candidate without the client having seen anything. After that, failures surface from
`Exchange.rest()` as `MidStreamError`.

What a backend may not do (docs/architecture.md#trust-boundaries):
- redirect: redirects are never followed; a 3xx is an upstream failure (fail over);
- receive a key meant for another origin: a backend's key is only sent to its configured URL's origin;
- answer a 200 that is not the API's object (HTML, truncated JSON, an error object), or start a stream
  whose first event does not parse: upstream failures, counted as such, failed over;
- send an unbounded body: at most `server.max_response_bytes`;
- bill garbage: usage that is not non-negative bounded integers counts as missing (nexus/core/usage.py).

Each backend type's wire protocol is an adapter (nexus/core/adapters/registry.py `adapter_for`): it encodes
the request, names the auth headers, and turns answers, errors and streams into OpenAI terms; this module
does the HTTP around it. When the adapter asks for stream usage (`stream_options.include_usage`, the
OpenAI-compatible protocol) and the backend answers 400 naming that field, the attempt is retried once
without it and the answer is remembered (`no_stream_options`, shared with other replicas through the
node). Keys come from the backend's declared secret at call time, only for a host that secret lists
(`nexus.core.config.key_for`), and never leave this module.
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

from nexus.core.adapters import (
    BackendAdapter,
    InvalidAnswer,
    StreamTranslator,
    TranslationError,
    adapter_for,
    endpoint_url,
)
from nexus.core.config import ServerConfig, key_for
from nexus.core.gateway_errors import UpstreamError
from nexus.core.model import Backend
from nexus.core.secrets import SecretConfig, SecretRefused
from nexus.core.usage import Usage

__all__ = ["Exchange", "MidStreamError", "Upstream", "Usage", "origin", "parse_retry_after"]

RETRYABLE_STATUS = frozenset({429, 500, 502, 503, 504, 529})  # 529: Anthropic overloaded
MAX_RETRY_AFTER = 86400.0
_EVENT_STREAM = "text/event-stream"


class MidStreamError(Exception):
    """The backend failed after the client received the first bytes. `reported` means the translated
    stream already carried an error event to the client, so the gateway must not send another."""

    def __init__(self, message: str, *, reported: bool = False) -> None:
        super().__init__(message)
        self.reported = reported


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
    _translate: StreamTranslator | None = None
    usage_problem: str | None = None  # the backend sent usage that is not valid counts
    completion_chars: int = 0  # text length of the answer, for the estimate when usage is missing
    native: bool = False  # in the client's own protocol (nexus/router_node/native.py), not a chat completion

    async def rest(self) -> AsyncIterator[bytes]:
        """The remaining stream, translated; raises MidStreamError if the backend breaks off."""
        response, tr = self._response, self._translate
        if response is None or tr is None:
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
            self.usage_problem = tr.usage_problem or self.usage_problem
            self.completion_chars = tr.completion_chars
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
        if backend.secret is not None and origin(url) != origin(backend.url):
            raise UpstreamError(
                backend.name, "refused to send its credentials to an origin other than its configured URL's"
            )
        try:
            key = key_for(backend.secret, url, self._secrets)
        except SecretRefused as exc:  # a second line behind the admin API's check: send nothing at all
            raise UpstreamError(backend.name, f"not called: {exc}") from None
        return {"Content-Type": "application/json", **adapter_for(backend.type).auth_headers(key)}

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
        adapter = adapter_for(backend.type)
        client_wants_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        ask_usage = (stream and adapter.asks_stream_usage and not client_wants_usage
                     and backend.name not in self.no_stream_options)
        try:
            call = adapter.encode(body, raw, path=path, model=model, stream=stream, ask_usage=ask_usage)
        except TranslationError as exc:  # the request cannot be expressed for this backend: the client's 400
            return Exchange(400, "application/json", exc.envelope(), False, None, None)
        url = endpoint_url(adapter.api_base(backend.url), call.path)
        response = await self.request(backend, url, call.body, timeout)
        if ask_usage and response.status == 400:
            payload = await self._read(backend, response)
            if not adapter.refuses_usage_option(payload):
                return _error(adapter, backend, 400, payload)
            # a server that refuses fields it does not know: once more without it
            self.learn_no_stream_options(backend.name)
            ask_usage = False
            call = adapter.encode(body, raw, path=path, model=model, stream=stream, ask_usage=False)
            response = await self.request(backend, url, call.body, timeout)
        created = int(time.time())
        if response.status != 200:
            return _error(adapter, backend, response.status, await self._read(backend, response))
        if not stream:
            return _whole(adapter, backend, await self._read(backend, response), model=model, created=created,
                          embeddings=path.endswith("/embeddings"), json_answer=call.json_answer)
        if not response.content_type.startswith(_EVENT_STREAM):
            await self._read(backend, response)
            raise UpstreamError(backend.name, f"answered a stream request with {response.content_type or 'no type'}",
                                invalid=True)
        translate = adapter.stream(model=model, created=created, asked_usage=ask_usage,
                                   client_wants_usage=client_wants_usage, json_answer=call.json_answer)
        return await self.first_events(backend, response, translate)

    async def request(self, backend: Backend, url: str, data: bytes, timeout: float | None,
                      extra_headers: Mapping[str, str] | None = None) -> aiohttp.ClientResponse:
        kwargs: dict[str, Any] = {}
        if timeout is not None:
            kwargs["timeout"] = aiohttp.ClientTimeout(total=timeout, sock_connect=self._server.connect_timeout_seconds)
        headers = self._headers(backend, url)
        if extra_headers:  # protocol headers of the native path (never credentials: those are set above)
            headers.update(extra_headers)
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

    async def first_events(self, backend: Backend, response: aiohttp.ClientResponse,
                           translate: StreamTranslator) -> Exchange:
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


def _error(adapter: BackendAdapter, backend: Backend, status: int, payload: bytes) -> Exchange:
    """A non-retryable error answer (400, 404, 422...), passed to the client as an OpenAI envelope."""
    return Exchange(status, "application/json", adapter.error_body(status, payload, backend.name), False, None, None)


def _whole(adapter: BackendAdapter, backend: Backend, payload: bytes, *, model: str, created: int,
           embeddings: bool, json_answer: bool = False) -> Exchange:
    """A 200 JSON answer, checked: the API's object, or an UpstreamError (fail over)."""
    try:
        answer = adapter.answer(payload, model=model, created=created, embeddings=embeddings,
                                json_answer=json_answer)
    except InvalidAnswer as exc:
        raise UpstreamError(backend.name, str(exc), invalid=True) from exc
    return Exchange(200, "application/json", answer.body, False, answer.usage, None,
                    usage_problem=answer.usage_problem, completion_chars=answer.completion_chars)
