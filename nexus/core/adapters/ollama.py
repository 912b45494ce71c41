"""Ollama: chat over its OpenAI-compatible path, discovery over its native API.

Inference is the OpenAI-compatible protocol unchanged (nexus/core/adapters/openai.py, Bearer key when one
is configured). Discovery uses Ollama's own model list, `GET /api/tags` on the base URL (Ollama serves it
outside `/v1`): `{"models": [{"name": ...}]}`, which reports no context length. The probe carries no key:
Ollama has no authentication of its own.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from nexus.core.adapters.base import ListedModel, ProbeRequest, list_entries
from nexus.core.adapters.openai import OpenAIAdapter

__all__ = ["OLLAMA", "OllamaAdapter"]


class OllamaAdapter(OpenAIAdapter):
    name = "ollama"
    probe_path = "/api/tags"

    def probe(self, base_url: str, key: str | None) -> ProbeRequest:
        return ProbeRequest(base_url + self.probe_path, {"Accept": "application/json"})

    def list_models(self, payload: Any) -> Iterator[ListedModel]:
        return list_entries(payload, "models", "name")


OLLAMA = OllamaAdapter()
