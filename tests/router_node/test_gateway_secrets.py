"""The second line behind the admin API's secret check (issue 12, finding 2): a backend that reached Redis
without that check (an older release, a hand edit) still never gets a key for a host outside its secret's
list, neither from a router node's request nor from the health worker's probe."""

from __future__ import annotations

from urllib.parse import urlsplit

from nexus.core.config import BackendConfig
from nexus.core.state import put_backend, read_health
from nexus.worker.jobs import run_health
from nexus.worker.probe import new_session
from tests.harness import eventually
from tests.router_node.conftest import backend_for

CHAT = {"model": "m", "messages": [{"role": "user", "content": "hello"}]}
SECRETS = {"TEST_KEY": {"env": "TEST_KEY", "hosts": ["127.0.0.1"]}}


async def test_a_key_is_never_sent_to_a_host_outside_its_secret(fakes, gateways, http, redis, monkeypatch):
    monkeypatch.setenv("TEST_KEY", "sk-test-secret")
    good = await fakes("good", api_key="sk-test-secret")
    trap = await fakes("trap")  # listens on 127.0.0.1, reached as "localhost": not a host the secret lists
    gw = await gateways([backend_for(good, type="openai", secret="TEST_KEY", priority=5)], secrets=SECRETS)
    port = urlsplit(trap.url).port
    sneaked = BackendConfig(name="trap", url=f"http://localhost:{port}", type="openai", secret="TEST_KEY", priority=0,
                            models=["m"])
    await put_backend(redis, sneaked)  # straight into Redis, past the admin API
    await eventually(lambda: "trap" in gw.node.snapshot.backends)

    async with http.post(f"{gw.url}/v1/chat/completions", json=CHAT) as resp:
        assert resp.status == 200, await resp.text()
        assert resp.headers["X-Nexus-Backend"] == "good"
        assert resp.headers["X-Nexus-Route-Reason"] == "failover"  # trap was first, and was not called

    session = new_session()
    try:
        await run_health(redis, session, gw.node.settings)
    finally:
        await session.close()
    health = (await read_health(redis))["trap"]
    assert health.consecutive_failures == 1
    assert trap.requests == []  # nothing at all reached it: no request, no probe, no key
    assert good.requests and all(r["headers"].get("authorization") == "Bearer sk-test-secret" for r in good.requests)
