"""Fixtures for the inbound protocol tests: a strict stand-in upstream (tests/standins.py) and a gateway in
front of it as an OpenAI-compatible (vllm) or an Anthropic backend, both stopped after the test."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from tests.harness import GatewayHarness
from tests.standins import StandIn

StandInFactory = Callable[..., Awaitable[StandIn]]


@pytest.fixture
async def standins() -> AsyncIterator[StandInFactory]:
    started: list[StandIn] = []

    async def make(models: tuple[str, ...] = ("m",), **options: Any) -> StandIn:
        s = await StandIn(models, **options).start()
        started.append(s)
        return s

    yield make
    for s in started:
        await s.stop()


def standin_backend(s: StandIn, kind: str, name: str | None = None, **extra: Any) -> dict[str, Any]:
    entry: dict[str, Any] = {"name": name or kind, "url": s.url, "type": kind, "models": list(s.models), **extra}
    if kind in ("anthropic", "openai", "google"):
        entry["api_key_env"] = "TEST_KEY"
    return entry


@pytest.fixture
async def gateway_to(gateways: Any, standins: StandInFactory, monkeypatch: pytest.MonkeyPatch
                     ) -> Callable[..., Awaitable[tuple[GatewayHarness, StandIn]]]:
    """`await gateway_to("vllm" | "anthropic", backend={...}, **standin_options)` -> (gateway, its one upstream);
    `backend` adds to (or overrides) the backend's config entry."""
    monkeypatch.setenv("TEST_KEY", "sk-test-secret")

    async def make(kind: str, backend: dict[str, Any] | None = None, **options: Any) -> tuple[GatewayHarness, StandIn]:
        s = await standins(**options)
        return await gateways([{**standin_backend(s, kind), **(backend or {})}]), s

    return make
