"""`/admin/v1/models` and `/admin/v1/fleet`: operations are validated and bounded, loaded models and marks listed."""

from __future__ import annotations

import time

from nexus.core import keys
from nexus.core.config import BackendConfig
from nexus.core.fleet.lifecycle import LifecycleMark, MarkState, Operation, OpState
from nexus.core.fleet.store import MAX_OPS, read_ops, set_mark, write_ps
from nexus.core.state import put_backend


async def test_operations_are_validated_before_they_are_queued(admin):
    await put_backend(admin.redis, BackendConfig(name="box", url="http://127.0.0.1:9/o", type="ollama"))
    cases = [
        ("/models/load", {"backend": "nope", "model": "m"}, 404),
        ("/models/load", {"backend": "local", "model": "m"}, 409),  # vllm
        ("/models/load", {"backend": "box", "model": ""}, 422),
        ("/models/load", {"backend": "box", "model": "m", "extra": 1}, 422),
        ("/models/migrate", {"model": "m", "from": "box", "to": "box"}, 422),
        ("/models/migrate", {"model": "m", "from": "box"}, 422),
    ]
    for path, body, status in cases:
        got, answer = await admin.call("POST", path, json=body)
        assert got == status, (path, body, answer)
    assert await read_ops(admin.redis) == {}
    status, op = await admin.call("POST", "/models/migrate", json={"model": "m", "from": "box", "to": "box2"})
    assert status == 404 and "box2" in op["detail"]
    status, op = await admin.call("POST", "/models/unload", json={"backend": "box", "model": "m"})
    assert status == 202 and (op["kind"], op["state"]) == ("unload", "pending")
    assert (await admin.call("GET", f"/models/ops/{op['id']}"))[1] == op
    assert (await admin.call("GET", "/models/ops/nope"))[0] == 404


async def test_stored_operations_are_bounded(admin):
    await put_backend(admin.redis, BackendConfig(name="box", url="http://127.0.0.1:9/o", type="ollama"))
    now = time.time()
    ops = {f"o{i}": Operation(id=f"o{i}", kind="load", model="m", backend="box", created_at=now, updated_at=now + i,
                              state=OpState.DONE if i < 2 else OpState.PENDING).model_dump_json()
           for i in range(MAX_OPS)}
    await admin.redis.hset(keys.FLEET_OPS, mapping=ops)
    body = {"backend": "box", "model": "m"}
    assert (await admin.call("POST", "/models/load", json=body))[0] == 202  # o0 made room
    assert (await admin.call("POST", "/models/load", json=body))[0] == 202  # o1
    status, answer = await admin.call("POST", "/models/load", json=body)
    assert status == 429 and "unfinished" in answer["detail"]
    assert len(await read_ops(admin.redis)) == MAX_OPS


async def test_models_lists_what_is_loaded_and_what_operations_are_doing(admin):
    await put_backend(admin.redis, BackendConfig(name="box", url="http://127.0.0.1:9/o", type="ollama"))
    await write_ps(admin.redis, "box", 5.0, [{"name": "a", "size_vram": 7, "expires_at": None}])
    await set_mark(admin.redis, "box", "b", LifecycleMark(MarkState.LOADING, "op", time.time() + 60))
    await set_mark(admin.redis, "box", "old", LifecycleMark(MarkState.LOADING, "op", time.time() - 1))  # expired
    status, body = await admin.call("GET", "/models")
    assert status == 200 and [(r["model"], r["state"], r["size_vram"]) for r in body["models"]] == [
        ("a", "loaded", 7), ("b", "loading", None)
    ]
    assert await admin.call("GET", "/fleet/recommendations") == (200, {"computed_at": None, "recommendations": []})
