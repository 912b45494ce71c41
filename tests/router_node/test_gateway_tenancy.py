"""Keys on a gateway: Bearer and x-api-key, revocation and expiry on the next request, rate limits with OpenAI's
429 and headers, a restricted key that never reaches an open backend, model lists of what a key may use."""

from __future__ import annotations

import time

import orjson

from nexus.core.state import update_desired
from nexus.core.tenancy import KeyConfig, TeamConfig, hash_key, sha256_digest
from nexus.core.tenant_store import load_hash_secret
from tests.harness import eventually
from tests.router_node.conftest import backend_for

CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5}
PLAIN = "nx-toml-declared-key-0123456789"
KID = "key_0000000000a1"


def toml_key(**limits):
    return {"id": KID, "name": "app", "digest": sha256_digest(PLAIN), **limits}


async def post(http, gw, headers, body=CHAT):
    async with http.post(f"{gw.url}/v1/chat/completions", json=body, headers=headers) as r:
        return r.status, r.headers, orjson.loads(await r.read())


async def test_bearer_and_x_api_key_both_authenticate_and_a_managed_key_is_checked_by_its_hmac(
    fakes, gateways, http, redis
):
    gw = await gateways([backend_for(await fakes("a"))], keys=[toml_key()])
    assert (await post(http, gw, {"Authorization": f"Bearer {PLAIN}"}))[0] == 200
    assert (await post(http, gw, {"x-api-key": PLAIN}))[0] == 200
    status, _, body = await post(http, gw, {})
    assert status == 401 and body["error"]["code"] == "invalid_api_key"
    assert (await post(http, gw, {"x-api-key": "nx-wrong"}))[0] == 401
    assert (await post(http, gw, {"x-api-key": PLAIN, "Authorization": "Bearer nx-other"}))[0] == 401

    secret = await load_hash_secret(redis, gw.node.settings)
    managed = KeyConfig(id="key_0000000000b2", name="m", digest=hash_key(secret, "nx-managed"),
                        expires_at=time.time() + 3600)
    await update_desired(redis, lambda cur: cur.model_copy(update={"keys": [*cur.keys, managed]}), "test")
    await eventually(lambda: "key_0000000000b2" in gw.node.tenants.table.by_id)
    assert (await post(http, gw, {"Authorization": "Bearer nx-managed"}))[0] == 200
    # revoked: refused on the very next snapshot, with the reason
    await update_desired(redis, lambda cur: cur.model_copy(update={"keys": [
        k.model_copy(update={"revoked_at": time.time()}) if k.id == managed.id else k for k in cur.keys]}), "test")
    await eventually(lambda: gw.node.tenants.table.by_id["key_0000000000b2"].revoked_at is not None)
    status, _, body = await post(http, gw, {"Authorization": "Bearer nx-managed"})
    assert status == 401 and "revoked" in body["error"]["message"]


async def test_an_expired_key_is_refused(fakes, gateways, http):
    gw = await gateways([backend_for(await fakes("a"))], keys=[toml_key(expires_at=time.time() - 1)])
    status, _, body = await post(http, gw, {"Authorization": f"Bearer {PLAIN}"})
    assert status == 401 and "expired" in body["error"]["message"]


async def test_a_limited_key_gets_openai_headers_and_a_429_past_its_rpm(fakes, gateways, http):
    gw = await gateways([backend_for(await fakes("a"))], keys=[toml_key(rpm=3, tpm=100_000)])
    auth = {"Authorization": f"Bearer {PLAIN}"}
    status, headers, _ = await post(http, gw, auth)
    assert status == 200
    assert headers["x-ratelimit-limit-requests"] == "3" and headers["x-ratelimit-remaining-requests"] == "2"
    assert headers["x-ratelimit-limit-tokens"] == "100000" and headers["x-ratelimit-reset-requests"]
    for _ in range(2):
        assert (await post(http, gw, auth))[0] == 200
    status, headers, body = await post(http, gw, auth)
    assert status == 429 and body["error"]["code"] == "rate_limit_exceeded" and body["error"]["type"] == "requests"
    assert int(headers["Retry-After"]) >= 1 and headers["x-ratelimit-remaining-requests"] == "0"
    # an error answer of a limited key carries the headers too
    status, headers, _ = await post(http, gw, auth, {**CHAT, "model": "nope"})
    assert status in (404, 429) and "x-ratelimit-limit-requests" in headers


async def test_a_restricted_key_gets_503_naming_its_constraint_and_never_reaches_the_open_backend(
    fakes, gateways, http
):
    cloud = await fakes("cloud")
    gw = await gateways([backend_for(cloud, type="openai", api_key_env="TEST_KEY")],
                        keys=[toml_key(privacy="restricted")])
    for _ in range(20):
        status, _, body = await post(http, gw, {"Authorization": f"Bearer {PLAIN}"})
        assert status == 503
    reasons = body["context"]["rejection_reasons"]
    assert reasons[0]["reconciler"] == "PrivacyReconciler" and f"key {KID} requires restricted" in reasons[0]["reason"]
    assert cloud.requests == []


async def test_models_and_404s_list_only_what_the_key_and_its_team_may_use(fakes, gateways, http):
    fake = await fakes("a", ("llama3", "llama3-big", "gpt-4o"))
    team = TeamConfig(name="ml", models=["llama*"]).model_dump()
    gw = await gateways([backend_for(fake)], teams=[team], keys=[toml_key(team="ml", models=["*3"])])
    auth = {"Authorization": f"Bearer {PLAIN}"}
    async with http.get(f"{gw.url}/v1/models", headers=auth) as r:
        assert [m["id"] for m in (await r.json())["data"]] == ["llama3"]
    status, _, body = await post(http, gw, auth, {**CHAT, "model": "gpt-4o"})
    assert status == 404 and body["error"]["code"] == "model_not_found"
    assert body["context"]["available_models"] == ["llama3"]
    assert (await post(http, gw, auth, {**CHAT, "model": "llama3"}))[0] == 200
