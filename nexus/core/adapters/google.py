"""Google Gemini: its OpenAI-compatible API (chat and embeddings), under a base derived from the configured URL.

Any part of the endpoint may be configured: `https://generativelanguage.googleapis.com`, `.../v1beta` and
`.../v1beta/openai` all reach `.../v1beta/openai/chat/completions` (and the probe `.../v1beta/openai/models`).
The key goes as `Authorization: Bearer`. Gemini's errors are JSON arrays (`[{"error": {...}}]`), which the
OpenAI adapter's error envelope reads (nexus/core/adapters/openai.py `error_envelope`).
"""

from __future__ import annotations

from nexus.core.adapters.openai import OpenAIAdapter

__all__ = ["GEMINI_OPENAI_PATH", "GOOGLE", "GoogleAdapter"]

GEMINI_OPENAI_PATH = "/v1beta/openai"  # Gemini's OpenAI-compatible endpoint under its API host


class GoogleAdapter(OpenAIAdapter):
    name = "google"

    def api_base(self, base_url: str) -> str:
        base = base_url.rstrip("/")
        if base.endswith("/openai"):
            return base
        return base + "/openai" if base.endswith("/v1beta") else base + GEMINI_OPENAI_PATH


GOOGLE = GoogleAdapter()
