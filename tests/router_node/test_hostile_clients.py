"""Hostile clients against a real gateway over loopback HTTP: none may stall or fool the replica.

Each test reproduces one finding of the security review (issue 11) and fails on the code before its fix.
"""

from __future__ import annotations

import asyncio

import orjson

from controlplane.globs import MAX_MODEL_NAME_LENGTH
from tests.router_node.conftest import backend_for

CHAT = "/v1/chat/completions"
JSON = {"Content-Type": "application/json"}


def chat(model: str = "m", **extra: object) -> bytes:
    return orjson.dumps({"model": model, "messages": [{"role": "user", "content": "hi"}], **extra})


async def test_glob_matching_cannot_stall_the_gateway(fakes, gateways, http):
    """Finding 1: backtracking regexes let one request hold the event loop for minutes."""
    local = await fakes("local", ("m",))
    policies = [
        {"model_pattern": "*llama*70b*", "privacy": "restricted"},
        {"model_pattern": "*a" * 15 + "*b", "min_tier": 1},  # 15 stars: hours per model with backtracking
    ]
    gw = await gateways([backend_for(local)], routing={"policies": policies})

    async def post(model: str) -> tuple[int, dict]:
        async with http.post(gw.url + CHAT, data=chat(model), headers=JSON) as resp:
            return resp.status, orjson.loads(await resp.read())

    async def health() -> int:
        async with http.get(gw.url + "/health") as resp:
            return resp.status

    # a name within the length bound, matched against the 15-star pattern, while /health keeps answering
    (status, body), health_status = await asyncio.gather(post("a" * 200), health())
    assert health_status == 200
    assert status == 404 and body["error"]["param"] == "model", body

    # a 1 MB model name is refused before any matching, naming the field and the limit
    status, body = await post("llama" * 200_000)
    assert status == 400, body
    assert body["error"]["param"] == "model"
    assert str(MAX_MODEL_NAME_LENGTH) in body["error"]["message"]
    status, _ = await post("m" * MAX_MODEL_NAME_LENGTH)  # at the bound: routed (unknown model)
    assert status == 404
