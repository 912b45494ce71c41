"""The Ollama adapter's lifecycle wire format: /api/ps replies read strictly, request bodies as Ollama takes them."""

from __future__ import annotations

import time
from datetime import UTC, datetime

import pytest

from nexus.core.adapters.ollama import MAX_LOADED, OLLAMA, LoadedModel

EXPIRES = datetime.fromtimestamp(time.time() + 300, UTC).isoformat()  # passed through as Ollama wrote it


def test_ps_entries_are_read_and_bounded_and_bad_ones_skipped():
    payload = {"models": [
        {"name": "llama3:8b", "size_vram": 5_000_000_000, "expires_at": EXPIRES, "extra": 1},
        {"name": "tiny", "size_vram": True, "expires_at": 5},  # wrong types: not reported
        {"name": ""}, {"size_vram": 1}, "junk", {"name": "x" * 300},
    ]}
    assert OLLAMA.loaded_models(payload) == [
        LoadedModel("llama3:8b", 5_000_000_000, EXPIRES), LoadedModel("tiny", None, None)
    ]
    assert len(OLLAMA.loaded_models({"models": [{"name": f"m{i}"} for i in range(MAX_LOADED + 5)]})) == MAX_LOADED


@pytest.mark.parametrize("payload", [None, [], {"models": None}, {"model": []}, "ok"])
def test_anything_but_an_api_ps_reply_is_refused(payload):
    with pytest.raises(ValueError, match="not an /api/ps reply"):
        OLLAMA.loaded_models(payload)


def test_lifecycle_bodies():
    assert OLLAMA.load_body("m", "30m") == {"model": "m", "keep_alive": "30m"}
    assert OLLAMA.load_body("m", 0) == {"model": "m", "keep_alive": 0}
    assert OLLAMA.pull_body("m") == {"model": "m", "stream": False}
    assert OLLAMA.pull_succeeded({"status": "success"}) and not OLLAMA.pull_succeeded({"status": "pulling"})
