"""The dashboard's session and write rules over plain HTTP, and its one shared reading for many pages."""

from __future__ import annotations

import asyncio
import hashlib

import aiohttp
import orjson
import pytest
from redis.asyncio import Redis

from nexus.controlplane.admin import create_admin_app
from nexus.core import keys
from nexus.core.state import seed_desired
from tests.controlplane.admin.conftest import SECRETS, SEED, TOKEN
from tests.harness import AppServer, settings_for

CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture
async def dash(redis_server, redis: Redis):
    settings = settings_for(SEED, redis={"url": redis_server.url}, secrets=SECRETS,
                            admin={"dashboard_interval_seconds": 0.1})
    await seed_desired(redis, settings.desired())
    app = create_admin_app(settings, token=TOKEN)
    server = await AppServer(app).start()
    try:
        yield server.url, app
    finally:
        await server.stop()


def _session() -> aiohttp.ClientSession:
    return aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True))  # cookies for 127.0.0.1 too


async def _sign_in(http: aiohttp.ClientSession, url: str) -> tuple[str, str]:
    async with http.post(f"{url}/dashboard/session", json={"token": TOKEN}) as r:
        assert r.status == 200
        return (await r.json())["csrf"], r.headers["Set-Cookie"]


async def _frames(resp: aiohttp.ClientResponse, n: int) -> list[dict]:
    out = []
    async for line in resp.content:
        if line.startswith(b"data: "):
            out.append(orjson.loads(line[6:]))
            if len(out) == n:
                return out
    raise AssertionError("stream ended")


async def test_token_exchanged_for_a_strict_httponly_cookie(dash, redis):
    url, _ = dash
    async with _session() as http:
        async with http.post(f"{url}/dashboard/session", json={"token": "wrong" * 5}) as r:
            assert r.status == 401 and "Set-Cookie" not in r.headers
        async with http.get(f"{url}/dashboard/api/stream") as r:
            assert r.status == 401
        csrf, cookie = await _sign_in(http, url)
        assert "HttpOnly" in cookie and "samesite=strict" in cookie.lower() and "Path=/dashboard" in cookie
        assert TOKEN not in cookie
        sid = cookie.split(";", 1)[0].split("=", 1)[1]
        stored = await redis.get(keys.dashboard_session(hashlib.sha256(sid.encode()).hexdigest()))
        assert orjson.loads(stored) == {"csrf": csrf}  # Redis holds the digest of the id, never the id
        assert await redis.exists(keys.dashboard_session(sid)) == 0
        async with http.get(f"{url}/dashboard/session") as r:
            assert (await r.json())["csrf"] == csrf
        async with http.get(f"{url}/dashboard/api/stream") as r:
            assert r.status == 200 and r.headers["Content-Type"].startswith("text/event-stream")
            (doc,) = await _frames(r, 1)
        assert [b["name"] for b in doc["backends"]] == ["cloud", "local"]
        assert {"budgets", "spend", "nodes", "queue_depth", "decisions", "config_version"} <= set(doc)
        # signing out ends the session for every page
        async with http.delete(f"{url}/dashboard/session", headers={"X-CSRF-Token": csrf}) as r:
            assert r.status == 204
        async with http.get(f"{url}/dashboard/api/stream") as r:
            assert r.status == 401


async def test_writes_need_the_csrf_header_and_same_origin(dash):
    url, _ = dash
    async with _session() as http:
        csrf, _ = await _sign_in(http, url)
        body = {"request": CHAT}
        async with http.post(f"{url}/dashboard/api/explain", json=body) as r:
            assert r.status == 403
        async with http.post(f"{url}/dashboard/api/explain", json=body, headers={"X-CSRF-Token": csrf + "x"}) as r:
            assert r.status == 403
        async with http.post(f"{url}/dashboard/api/explain", json=body,
                             headers={"X-CSRF-Token": csrf, "Origin": "https://evil.example"}) as r:
            assert r.status == 403 and "cross-origin" in (await r.json())["detail"]
        async with http.post(f"{url}/dashboard/api/explain", json=body, headers={"X-CSRF-Token": csrf}) as r:
            shown = await r.json()
        async with http.post(f"{url}/admin/v1/route/explain", json=body,
                             headers={"Authorization": f"Bearer {TOKEN}"}) as r:
            api = await r.json()
        assert shown["backend"] == api["backend"] and shown["decision"] == api["decision"]
        assert [s["reconciler"] for s in shown["steps"]] == [s["reconciler"] for s in api["steps"]]
        # the session cookie is no bearer token for the admin API itself
        async with http.get(f"{url}/admin/v1/backends") as r:
            assert r.status == 401


async def test_page_and_assets_come_from_the_package_with_a_strict_policy(dash):
    url, _ = dash
    async with _session() as http:
        async with http.get(f"{url}/dashboard/") as r:
            page = await r.text()
            csp = r.headers["Content-Security-Policy"]
        assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp
        assert "http://" not in page and "https://" not in page  # nothing from a CDN
        for asset in ("dashboard.js", "dashboard.css"):
            async with http.get(f"{url}/dashboard/static/{asset}") as r:
                assert r.status == 200 and len(await r.read()) > 1000
        async with http.get(f"{url}/dashboard/static/..%2Findex.html") as r:
            assert r.status == 404


async def test_many_pages_share_one_reading(dash):
    url, app = dash
    hub = app.state.dashboard
    async with _session() as a, _session() as b:
        await _sign_in(a, url)
        await _sign_in(b, url)
        async with a.get(f"{url}/dashboard/api/stream") as ra, b.get(f"{url}/dashboard/api/stream") as rb:
            first = hub.reads
            got_a, got_b = await asyncio.gather(_frames(ra, 5), _frames(rb, 5))
            assert hub.subscribers == 2
            # ten documents delivered from at most six readings (the two pages share each one)
            assert hub.reads - first <= 6
            assert {d["at"] for d in got_a} & {d["at"] for d in got_b}
