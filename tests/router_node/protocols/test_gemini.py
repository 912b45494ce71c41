"""Google Gemini as a cloud type that works: its OpenAI-compatible endpoint derived from the configured URL, its
key sent as a bearer token, and its JSON-array errors read, against a stand-in of Gemini's wire format."""

from __future__ import annotations

import openai
import pytest

from nexus.core.adapters import adapter_for
from nexus.core.adapters.base import endpoint_url

HOST = "https://generativelanguage.googleapis.com"


@pytest.mark.parametrize(
    ("base", "btype", "url"),
    [
        pytest.param(HOST, "google", f"{HOST}/v1beta/openai/chat/completions", id="google-host"),
        pytest.param(f"{HOST}/", "google", f"{HOST}/v1beta/openai/chat/completions", id="google-host-slash"),
        pytest.param(f"{HOST}/v1beta", "google", f"{HOST}/v1beta/openai/chat/completions", id="google-v1beta"),
        pytest.param(f"{HOST}/v1beta/openai", "google", f"{HOST}/v1beta/openai/chat/completions", id="google-full"),
        pytest.param("http://h:8000", "vllm", "http://h:8000/v1/chat/completions", id="vllm-host"),
        pytest.param("https://api.openai.com/v1", "openai", "https://api.openai.com/v1/chat/completions",
                     id="openai-v1"),
    ],
)
def test_api_urls(base: str, btype: str, url: str) -> None:
    adapter = adapter_for(btype)
    assert endpoint_url(adapter.api_base(base), "/v1/chat/completions") == url
    probe = adapter.probe(base, "k").url  # the health probe goes under the same base
    assert probe == url.removesuffix("/chat/completions") + "/models"


async def test_gemini_through_the_gateway(gateway_to):
    gw, up = await gateway_to("google", backend={"models": ["m", "gone"]})
    async with openai.AsyncOpenAI(base_url=f"{gw.url}/v1", api_key="unused", max_retries=0) as via:
        got = await via.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}])
        with pytest.raises(openai.NotFoundError) as missing:
            await via.chat.completions.create(model="gone", messages=[{"role": "user", "content": "hi"}])
    assert got.choices[0].message.content == "echo: hi"
    path, headers, _ = up.requests[0]
    assert path == "/v1beta/openai/chat/completions" and headers["Authorization"] == "Bearer sk-test-secret"
    assert missing.value.body["message"] == "models/gone is not found"
