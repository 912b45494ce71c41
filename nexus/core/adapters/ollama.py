"""Ollama: chat over its OpenAI-compatible path, discovery over its native API.

Inference is the OpenAI-compatible protocol unchanged (nexus/core/adapters/openai.py, Bearer key when one
is configured). Discovery uses Ollama's own model list, `GET /api/tags` on the base URL (Ollama serves it
outside `/v1`): `{"models": [{"name": ...}]}`, which reports no context length. The probe carries no key:
Ollama has no authentication of its own.

Model lifecycle (docs/fleet.md) uses the native API too, all on the base URL: `GET /api/ps` (the loaded
models, with `size_vram` and `expires_at`), `POST /api/generate {model, keep_alive}` without a prompt (load;
`keep_alive: 0` unloads) and `POST /api/pull {model, stream: false}` (`{"status": "success"}` when done).
The worker (nexus/worker/lifecycle_client.py) does the HTTP; what is sent and how replies read is here.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from nexus.core.adapters.base import ListedModel, ProbeRequest, list_entries
from nexus.core.adapters.openai import OpenAIAdapter

__all__ = ["OLLAMA", "LoadedModel", "OllamaAdapter"]

MAX_LOADED = 1000  # entries of an /api/ps reply kept
_MAX_NAME = 256


@dataclass(frozen=True, slots=True)
class LoadedModel:
    """One entry of `/api/ps`; None is "not reported"."""

    name: str
    size_vram: int | None = None
    expires_at: str | None = None


class OllamaAdapter(OpenAIAdapter):
    name = "ollama"
    probe_path = "/api/tags"

    def probe(self, base_url: str, key: str | None) -> ProbeRequest:
        return ProbeRequest(base_url + self.probe_path, {"Accept": "application/json"})

    def list_models(self, payload: Any) -> Iterator[ListedModel]:
        return list_entries(payload, "models", "name")

    # -- lifecycle -------------------------------------------------------------------------------------
    ps_path = "/api/ps"
    generate_path = "/api/generate"
    pull_path = "/api/pull"

    def loaded_models(self, payload: Any) -> list[LoadedModel]:
        """The models of an `/api/ps` reply; ValueError when it is not one (entries without a name skipped)."""
        entries = payload.get("models") if isinstance(payload, dict) else None
        if not isinstance(entries, list):
            raise ValueError("not an /api/ps reply (no models list)")
        out = []
        for e in entries[:MAX_LOADED]:
            name = e.get("name") if isinstance(e, dict) else None
            if not isinstance(name, str) or not name or len(name) > _MAX_NAME:
                continue
            vram = e.get("size_vram")
            expires = e.get("expires_at")
            out.append(LoadedModel(
                name,
                vram if isinstance(vram, int) and not isinstance(vram, bool) and vram >= 0 else None,
                expires[:64] if isinstance(expires, str) and expires else None,
            ))
        return out

    def load_body(self, model: str, keep_alive: str | int) -> dict[str, Any]:
        """The generate body that loads `model` (`keep_alive` 0: unloads it)."""
        return {"model": model, "keep_alive": keep_alive}

    def pull_body(self, model: str) -> dict[str, Any]:
        return {"model": model, "stream": False}

    def pull_succeeded(self, payload: Any) -> bool:
        return isinstance(payload, dict) and payload.get("status") == "success"


OLLAMA = OllamaAdapter()
