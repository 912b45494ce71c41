"""Ollama's lifecycle API over HTTP for the lifecycle job: `/api/ps`, `/api/generate` with `keep_alive`,
`/api/pull`. What is sent and how replies read is the Ollama adapter's (nexus/core/adapters/ollama.py); here
only the calls, with bounded replies. Any failure is a `BackendCallError` naming the call.

    BackendCallError   an Ollama lifecycle call failed, timed out or answered out of contract
"""

from __future__ import annotations

from typing import Any

import aiohttp
import orjson

from nexus.core.adapters.ollama import OLLAMA

__all__ = ["BackendCallError", "generate", "ps", "pull"]

_MAX_REPLY = 4 * 1024 * 1024


class BackendCallError(Exception):
    """An Ollama lifecycle call failed; str() says which call and why (never a credential)."""


async def _call(session: aiohttp.ClientSession, method: str, url: str, body: dict[str, Any] | None,
                timeout: float) -> Any:
    data = orjson.dumps(body) if body is not None else None
    headers = {"Content-Type": "application/json"} if body is not None else {}
    try:
        async with session.request(method, url, data=data, headers=headers, allow_redirects=False,
                                   timeout=aiohttp.ClientTimeout(total=timeout)) as r:
            raw = await r.content.read(_MAX_REPLY)
            if r.status != 200:
                raise BackendCallError(f"{method} {url}: HTTP {r.status}: {raw[:300].decode(errors='replace')}")
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise BackendCallError(f"{method} {url}: {type(exc).__name__}: {exc}") from exc
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise BackendCallError(f"{method} {url}: not JSON ({exc})") from exc


async def ps(session: aiohttp.ClientSession, base: str, timeout: float) -> list[dict[str, Any]]:
    """The models loaded now: [{name, size_vram, expires_at}]."""
    url = base.rstrip("/") + OLLAMA.ps_path
    try:
        payload = await _call(session, "GET", url, None, timeout)
        models = OLLAMA.loaded_models(payload)
    except BackendCallError as exc:
        if "not JSON" in str(exc):
            raise BackendCallError(f"GET {url}: not an /api/ps reply") from exc
        raise
    except ValueError as exc:
        raise BackendCallError(f"GET {url}: {exc}") from exc
    return [{"name": m.name, "size_vram": m.size_vram, "expires_at": m.expires_at} for m in models]


async def generate(session: aiohttp.ClientSession, base: str, model: str, keep_alive: str | int,
                   timeout: float) -> None:
    """Load (`keep_alive` not 0) or unload (0) `model`."""
    await _call(session, "POST", base.rstrip("/") + OLLAMA.generate_path, OLLAMA.load_body(model, keep_alive), timeout)


async def pull(session: aiohttp.ClientSession, base: str, model: str, timeout: float) -> None:
    payload = await _call(session, "POST", base.rstrip("/") + OLLAMA.pull_path, OLLAMA.pull_body(model), timeout)
    if not OLLAMA.pull_succeeded(payload):
        raise BackendCallError(f"pull of {model!r} did not succeed: {str(payload)[:300]}")
