"""Health probes over HTTP: one cheap GET per backend, all backends concurrently, each with a timeout.

What is probed is the backend type's adapter's (nexus/core/adapters/registry.py `adapter_for`): Ollama lists
`GET /api/tags`; Anthropic `GET /v1/models` with `x-api-key` and `anthropic-version` (authenticated, free, and
it lists the models the key may use; a backend that lists none keeps its configured models); every other
type (OpenAI-compatible) `GET /v1/models`, with `Authorization: Bearer` when the backend has a key. vLLM,
LM Studio and the fake backend report context lengths there. The reply is read by the same adapter
(nexus/worker/health.py `parse_models`).
Google's probe goes under its derived OpenAI-compatible base (`GoogleAdapter.api_base`).

Invariants:
- A probe never raises: every failure (connect error, timeout, non-2xx, unreadable body) is a FAILED
  result with a reason, and a 503 "loading" reply is LOADING.
- A probe takes at most `timeout` seconds, and `probe_all` runs them concurrently, so a tick over many
  backends takes about one timeout however many are slow.
- Keys are read through `nexus.core.config.key_for` when the probe is built, only for a host the
  backend's secret lists, and only ever sent in request headers; reasons never include them. A backend
  whose secret may not go to its host is not probed at all (FAILED, saying why).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import aiohttp
import orjson

from nexus.core.adapters import adapter_for
from nexus.core.config import BackendConfig, key_for
from nexus.core.model import BackendType
from nexus.core.secrets import SecretConfig, SecretRefused
from nexus.worker.health import ProbeResult, ProbeStatus, is_loading_reply, parse_models

__all__ = ["MAX_BODY_BYTES", "ProbeTarget", "new_session", "probe", "probe_all", "target_for"]

MAX_BODY_BYTES = 4 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class ProbeTarget:
    name: str
    url: str
    headers: Mapping[str, str] = field(default_factory=dict, repr=False)  # may hold a key: not in repr
    refused: str = ""  # why nothing may be sent to this backend (its secret is not for its host)
    type: BackendType = BackendType.GENERIC  # whose adapter reads the reply


def target_for(
    backend: BackendConfig, secrets: Mapping[str, SecretConfig] | None = None, environ: Mapping[str, str] | None = None
) -> ProbeTarget:
    try:
        key = key_for(backend.secret, backend.url, secrets or {}, environ)
    except SecretRefused as exc:
        return ProbeTarget(backend.name, backend.url, refused=str(exc), type=backend.type)
    request = adapter_for(backend.type).probe(backend.url, key)
    return ProbeTarget(backend.name, request.url, request.headers, type=backend.type)


def new_session() -> aiohttp.ClientSession:
    """The session probes share: no connection cap (one probe per backend runs at once), no cookies."""
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=0, ttl_dns_cache=300),
        cookie_jar=aiohttp.DummyCookieJar(),
        skip_auto_headers=("User-Agent",),
    )


async def _get(session: aiohttp.ClientSession, target: ProbeTarget) -> tuple[int, bytes]:
    async with session.get(target.url, headers=dict(target.headers), allow_redirects=False) as resp:
        body = await resp.content.read(MAX_BODY_BYTES)
        return resp.status, body


async def probe(session: aiohttp.ClientSession, target: ProbeTarget, timeout: float) -> ProbeResult:
    if target.refused:
        return ProbeResult(ProbeStatus.FAILED, error=f"not probed: {target.refused}")
    started = time.perf_counter()
    try:
        async with asyncio.timeout(timeout):
            status, body = await _get(session, target)
    except TimeoutError:
        return ProbeResult(ProbeStatus.FAILED, error=f"no answer within {timeout:g} s")
    except (aiohttp.ClientError, OSError) as exc:
        return ProbeResult(ProbeStatus.FAILED, error=f"{type(exc).__name__}: {exc}")
    latency_ms = (time.perf_counter() - started) * 1000.0
    if is_loading_reply(status, body):
        return ProbeResult(ProbeStatus.LOADING, latency_ms)
    if not 200 <= status < 300:
        return ProbeResult(ProbeStatus.FAILED, latency_ms, error=f"HTTP {status}")
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError:
        return ProbeResult(ProbeStatus.FAILED, latency_ms, error="reply is not JSON")
    return ProbeResult(ProbeStatus.OK, latency_ms, parse_models(target.type, payload))


async def probe_all(
    session: aiohttp.ClientSession, targets: Sequence[ProbeTarget], timeout: float
) -> dict[str, ProbeResult]:
    results = await asyncio.gather(*(probe(session, t, timeout) for t in targets))
    return {t.name: r for t, r in zip(targets, results, strict=True)}
