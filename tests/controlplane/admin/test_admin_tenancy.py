"""`/admin/v1/keys` and `/admin/v1/teams`: the secret once, digests only, revoke, rotate, limits, explain by key."""

from __future__ import annotations

import time
from datetime import UTC, datetime

import orjson

from nexus.core import keys
from nexus.core.state import read_desired
from tests.controlplane.admin.conftest import SEED_KEY


async def _redis_text(redis) -> bytes:
    out = []
    for k in await redis.keys("*"):
        kind = (await redis.type(k)).decode()
        if kind == "string":
            out.append(await redis.get(k))
        elif kind == "hash":
            out.append(orjson.dumps({a.decode(): b.decode("latin-1") for a, b in (await redis.hgetall(k)).items()}))
    return b"\n".join(out)


async def test_key_lifecycle_shows_the_secret_once_and_stores_only_its_digest(admin):
    expires = int(time.time()) + 365 * 86400  # a year from the real now: the key must still be active
    expires_iso = datetime.fromtimestamp(expires, UTC).isoformat().replace("+00:00", "Z")
    assert (await admin.call("PUT", "/teams/ml", json={"rpm": 100, "models": ["m*"]}))[0] == 200
    status, created = await admin.call(
        "POST", "/keys",
        json={"name": "app", "team": "ml", "rpm": 60, "tpm": 1000, "privacy": "RESTRICTED", "max_tier": 3,
              "budget": {"monthly_limit_usd": 2, "hard_limit_action": "block_all"},
              "expires_at": expires_iso, "metadata": {"owner": "alice"}},
    )
    assert status == 201, created
    secret, kid = created["key"], created["id"]
    assert secret.startswith("nx-") and kid.startswith("key_") and created["privacy"] == "restricted"
    assert created["status"] == "active" and created["expires_at"] == float(expires)
    assert created["usage"] == {"spend_usd": 0.0, "period": created["usage"]["period"], "budget_status": "normal",
                                "rpm_used": 0, "tpm_used": 0}
    status, listed = await admin.call("GET", "/keys")
    assert status == 200 and [k["id"] for k in listed] == [SEED_KEY, kid]
    assert secret not in str(listed) and "digest" not in str(listed)
    assert secret.encode() not in await _redis_text(admin.redis)
    stored = orjson.loads(await admin.redis.hget(keys.CONFIG_KEYS, kid))
    assert stored["digest"].startswith("hmac-sha256:")

    status, patched = await admin.call("PATCH", f"/keys/{kid}", json={"rpm": None, "tpm": 5})
    assert status == 200 and patched["rpm"] is None and patched["tpm"] == 5 and patched["max_tier"] == 3
    status, rotated = await admin.call("POST", f"/keys/{kid}/rotate", json={"grace_seconds": 60})
    assert status == 200 and rotated["key"] != secret and rotated["previous_valid_until"] is not None
    _, desired = await read_desired(admin.redis)
    assert next(k for k in desired.keys if k.id == kid).previous_digest == stored["digest"]

    status, revoked = await admin.call("DELETE", f"/keys/{kid}")
    assert status == 200 and revoked["status"] == "revoked"
    assert (await admin.call("PATCH", f"/keys/{kid}", json={"rpm": 1}))[0] == 409
    assert (await admin.call("DELETE", "/teams/ml"))[0] == 409  # a (revoked) key still names it
    assert (await admin.call("GET", "/keys/key_000000000000"))[0] == 404


async def test_bad_bodies_are_422_naming_the_field(admin):
    for body, field in [
        ({"name": "a", "rpm": 0}, "rpm"),
        ({"name": "a", "models": ["[z-a]"]}, "models"),
        ({"name": "a", "team": "nope"}, "team"),
        ({"name": "a", "priority": "urgent"}, "priority"),
        ({"name": "a", "budget": {"monthly_limit_usd": -1}}, "budget"),
        ({"name": "a", "expires_at": "soon"}, "expires_at"),
        ({"name": "a", "secret": "nx-mine"}, "secret"),
    ]:
        status, out = await admin.call("POST", "/keys", json=body)
        assert status == 422 and field in str(out), (body, out)
    assert (await admin.call("PUT", "/teams/bad:name", json={}))[0] in (404, 422)


async def test_explain_takes_the_key_id_and_shows_its_constraints(admin):
    _, created = await admin.call("POST", "/keys", json={"name": "r", "privacy": "restricted"})
    status, out = await admin.call(
        "POST", "/route/explain",
        json={"request": {"model": "m", "messages": [{"role": "user", "content": "hi"}]}, "api_key_id": created["id"]},
    )
    assert status == 200
    privacy = next(s for s in out["steps"] if s["reconciler"] == "PrivacyReconciler")
    assert {e["agent_id"] for e in privacy["excluded"]} == {"cloud"}
    assert f"key {created['id']} requires restricted" in privacy["excluded"][0]["reason"]
    assert out["backend"] == "local"
    status, _ = await admin.call(
        "POST", "/route/explain",
        json={"request": {"model": "m", "messages": [{"role": "user", "content": "hi"}]},
              "api_key_id": "key_0000000000ff"},
    )
    assert status == 404
