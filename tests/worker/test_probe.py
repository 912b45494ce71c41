"""nexus.worker.probe against fake backends over real HTTP: what is probed per type, how replies are judged,
and that probes of many backends run concurrently (a tick takes about one timeout, not one per backend)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable

import aiohttp
import pytest

from nexus.core.config import BackendConfig
from nexus.core.secrets import SecretConfig
from nexus.worker.health import ProbeStatus
from nexus.worker.probe import ProbeTarget, new_session, probe, probe_all, target_for
from tests.harness import eventually
from tests.worker.conftest import FakeFactory, RawServer

RawFactory = Callable[..., Awaitable[RawServer]]


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    s = new_session()
    yield s
    await s.close()


def backend(url: str, type_: str = "vllm", **extra: object) -> BackendConfig:
    return BackendConfig.model_validate({"name": "b", "url": url, "type": type_, **extra})


SECRETS = {"K": SecretConfig(env="K", hosts=["api.openai.com", "api.anthropic.com", "g", "127.0.0.1"])}


@pytest.mark.parametrize(
    ("type_", "url", "key_env", "path", "headers"),
    [
        pytest.param("vllm", "http://h:8000", None, "http://h:8000/v1/models", {}, id="openai-compatible"),
        pytest.param("ollama", "http://h:11434", None, "http://h:11434/api/tags", {}, id="ollama-tags"),
        pytest.param(
            "openai",
            "https://api.openai.com/v1",
            "K",
            "https://api.openai.com/v1/models",
            {"Authorization": "Bearer sk-1"},
            id="openai-base-with-v1-and-bearer",
        ),
        pytest.param(
            "anthropic",
            "https://api.anthropic.com",
            "K",
            "https://api.anthropic.com/v1/models",
            {"x-api-key": "sk-1", "anthropic-version": "2023-06-01"},
            id="anthropic-authenticated-list",
        ),
        pytest.param(
            "google",
            "https://g/v1beta/openai",
            "K",
            "https://g/v1beta/openai/models",
            {"Authorization": "Bearer sk-1"},
            id="gemini-openai-compat-base",
        ),
    ],
)
def test_target_per_type(type_: str, url: str, key_env: str | None, path: str, headers: dict[str, str]) -> None:
    target = target_for(backend(url, type_, secret=key_env), SECRETS, environ={"K": "sk-1"})
    assert target.url == path
    assert {k: v for k, v in target.headers.items() if k != "Accept"} == headers
    assert "sk-1" not in repr(target)


async def test_healthy_backend_reports_models_and_latency(fakes: FakeFactory, session: aiohttp.ClientSession) -> None:
    fake = await fakes("a", ("m1", "m2"), context_length=4096)
    result = await probe(session, target_for(backend(fake.url)), 2.0)
    assert result.status is ProbeStatus.OK
    assert [(m.name, m.context_length) for m in result.models] == [("m1", 4096), ("m2", 4096)]
    assert result.latency_ms is not None and result.latency_ms > 0


async def test_ollama_is_probed_on_api_tags(fakes: FakeFactory, session: aiohttp.ClientSession) -> None:
    fake = await fakes("o", ("llama3:8b",))
    result = await probe(session, target_for(backend(fake.url, "ollama")), 2.0)
    assert (result.status, [m.name for m in result.models]) == (ProbeStatus.OK, ["llama3:8b"])
    assert fake.requests[-1]["path"] == "/api/tags"


async def test_anthropic_probe_sends_its_key(fakes: FakeFactory, session: aiohttp.ClientSession) -> None:
    fake = await fakes("c", ("claude-x",), api_key="sk-right")
    good = target_for(backend(fake.url, "anthropic", secret="K"), SECRETS, environ={"K": "sk-right"})
    bad = target_for(backend(fake.url, "anthropic", secret="K"), SECRETS, environ={"K": "sk-wrong"})
    assert (await probe(session, good, 2.0)).status is ProbeStatus.OK
    assert fake.requests[-1]["headers"]["anthropic-version"] == "2023-06-01"
    refused = await probe(session, bad, 2.0)
    assert (refused.status, refused.error) == (ProbeStatus.FAILED, "HTTP 401")


@pytest.mark.parametrize(
    ("options", "status", "error"),
    [
        pytest.param({"loading_seconds": 30}, ProbeStatus.LOADING, "", id="503-loading"),
        pytest.param({"fail_mode": "500"}, ProbeStatus.FAILED, "HTTP 500", id="500"),
        pytest.param({"fail_mode": "close"}, ProbeStatus.FAILED, "ServerDisconnectedError", id="connection-closed"),
    ],
)
async def test_failing_replies(
    fakes: FakeFactory, session: aiohttp.ClientSession, options: dict, status: ProbeStatus, error: str
) -> None:
    fake = await fakes("f", **options)
    result = await probe(session, target_for(backend(fake.url)), 2.0)
    assert result.status is status
    assert error in result.error


async def test_refused_connection(fakes: FakeFactory, session: aiohttp.ClientSession) -> None:
    fake = await fakes("gone")
    url = fake.url
    await fake.stop()
    refused = await probe(session, ProbeTarget("gone", url + "/v1/models"), 1.0)
    assert refused.status is ProbeStatus.FAILED and "Connect" in refused.error


async def test_a_hung_backend_fails_after_the_timeout(raw_servers: RawFactory, session: aiohttp.ClientSession) -> None:
    hung = await raw_servers(None)
    t0 = time.perf_counter()
    result = await probe(session, ProbeTarget("hung", hung.url + "/v1/models"), 0.3)
    assert (result.status, result.error) == (ProbeStatus.FAILED, "no answer within 0.3 s")
    assert time.perf_counter() - t0 >= 0.25  # not before the timeout (a hang past it is the per-test timeout)


async def test_a_reply_that_is_not_json_is_a_failure(raw_servers: RawFactory, session: aiohttp.ClientSession) -> None:
    server = await raw_servers(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello")
    result = await probe(session, ProbeTarget("h", server.url + "/v1/models"), 2.0)
    assert (result.status, result.error) == (ProbeStatus.FAILED, "reply is not JSON")


async def test_probes_run_concurrently(
    fakes: FakeFactory, raw_servers: RawFactory, session: aiohttp.ClientSession
) -> None:
    """30 backends, 5 of them hung: every hung backend has been asked before the first probe gives up on
    one (probed one after another, the second would be asked only after the first timed out). Shown by the
    order of events at the hung servers, not by a duration, so a loaded machine cannot fail it."""
    timeout = 2.0
    healthy = [await fakes(f"ok{i}") for i in range(25)]
    hung = [await raw_servers(None) for _ in range(5)]
    events: list[tuple[str, str]] = []
    for server in hung:
        server.log = events
    targets = [ProbeTarget(f"ok{i}", f.url + "/v1/models") for i, f in enumerate(healthy)]
    targets += [ProbeTarget(f"hung{i}", s.url + "/v1/models") for i, s in enumerate(hung)]
    results = await probe_all(session, targets, timeout)
    assert sum(r.status is ProbeStatus.OK for r in results.values()) == 25
    assert sum(r.status is ProbeStatus.FAILED for r in results.values()) == 5
    await eventually(lambda: len(events) == 10)  # every hung server saw its client leave
    first_given_up = next(i for i, (event, _) in enumerate(events) if event == "given up")
    assert {url for event, url in events[:first_given_up] if event == "asked"} == {s.url for s in hung}, events
