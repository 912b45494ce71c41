"""The dashboard in a real headless browser (Debian's chromium driven by Playwright) over a running cluster:
a gateway, the admin app and the worker loops on the test's Redis, two fake backends.

The page signs in with the admin token (then only an HttpOnly cookie stands for it), shows the cluster's
backends, follows a backend dying and spend changing over its one event stream, and its explain form shows
the same decision as POST /admin/v1/route/explain. The session and CSRF rules are checked over plain HTTP.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import openai
import pytest
from playwright.async_api import Page, async_playwright, expect
from redis.asyncio import Redis

from nexus.controlplane.admin import create_admin_app
from nexus.core.embedded_redis import EmbeddedRedis
from nexus.worker.main import start_in_process
from tests.harness import AppServer, GatewayHarness, settings_for

TOKEN = "dashboard-test-admin-token-0123456789"
CHROMIUM = "/usr/bin/chromium"
SHOTS = os.environ.get("NEXUS_DASHBOARD_SCREENSHOTS")  # a directory: save the main views there (docs/)
ARGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage"]


class Cluster:
    def __init__(self, gateway: GatewayHarness, admin: AppServer, admin_app, fakes: dict) -> None:
        self.gateway, self.admin, self.admin_app, self.fakes = gateway, admin, admin_app, fakes


@pytest.fixture
async def cluster(redis_server: EmbeddedRedis, redis: Redis, fakes) -> AsyncIterator[Cluster]:
    local = await fakes("local-gpu", ("llama3:8b",))
    cloud = await fakes("cloud-api", ("llama3:8b", "gpt-4o"))
    settings = settings_for(
        [
            {"name": "local-gpu", "url": local.url, "type": "vllm", "models": ["llama3:8b"], "priority": 1},
            {"name": "cloud-api", "url": cloud.url, "type": "generic", "priority": 5, "tier": 5, "models": [
                {"name": "llama3:8b", "input_usd_per_1m": 2000.0, "output_usd_per_1m": 4000.0},
                {"name": "gpt-4o", "input_usd_per_1m": 5000.0, "output_usd_per_1m": 9000.0}]},
        ],
        redis={"url": redis_server.url, "snapshot_poll_seconds": 0.2},
        health_check={"interval_seconds": 1, "timeout_seconds": 0.5, "failure_threshold": 1},
        routing={"budget": {"monthly_limit_usd": 1.0, "reconciliation_interval_secs": 1},
                 "aliases": {"gpt-4": "gpt-4o"}},
        admin={"dashboard_interval_seconds": 0.2},
        telemetry={"flush_interval_ms": 20, "decisions_sample_ratio": 1.0},
    )
    gateway = await GatewayHarness(settings, redis_server.url, node_id="router-1").start()
    admin_redis = Redis.from_url(redis_server.url)
    admin_app = create_admin_app(settings, admin_redis, token=TOKEN)
    admin = await AppServer(admin_app).start()
    worker = await start_in_process(settings, redis_server.url, poll_delay=0.05)
    try:
        yield Cluster(gateway, admin, admin_app, {"local-gpu": local, "cloud-api": cloud})
    finally:
        await worker.stop()
        await admin.stop()
        await admin_redis.aclose()
        await gateway.stop()


@pytest.fixture
async def page() -> AsyncIterator[Page]:
    profile = tempfile.mkdtemp(prefix="nexus-chromium-")
    try:
        async with async_playwright() as pw:
            context = await pw.chromium.launch_persistent_context(
                profile, executable_path=CHROMIUM, headless=True, args=ARGS, viewport={"width": 1280, "height": 1400}
            )
            try:
                yield context.pages[0] if context.pages else await context.new_page()
            finally:
                await context.close()
    finally:
        shutil.rmtree(profile, ignore_errors=True)


def _row(page: Page, backend: str):
    return page.locator(f'#backends tr[data-backend="{backend}"]')


async def _shot(page: Page, name: str) -> None:
    if SHOTS:
        await page.screenshot(path=str(Path(SHOTS) / name), full_page=True)


async def test_dashboard_follows_the_cluster(cluster: Cluster, page: Page) -> None:
    url = cluster.admin.url
    await page.goto(f"{url}/dashboard/")
    await expect(page.locator("#login")).to_be_visible()
    await page.fill("#token", "wrong-token-wrong-token")
    await page.click("#login-form button")
    await expect(page.locator("#login-error")).to_have_text("Wrong admin token.")
    await page.fill("#token", TOKEN)
    await page.click("#login-form button")
    await expect(page.locator("#app")).to_be_visible()
    assert TOKEN not in page.url
    cookie = next(c for c in await page.context.cookies() if c["name"] == "nexus_dashboard")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict" and cookie["value"] != TOKEN
    assert await page.evaluate("document.cookie") == ""  # not readable by scripts

    # the cluster's backends, healthy once the worker probed them
    await expect(_row(page, "local-gpu").locator(".health")).to_have_text("healthy", timeout=15_000)
    await expect(_row(page, "cloud-api").locator(".health")).to_have_text("healthy", timeout=15_000)
    await expect(page.locator('#nodes tr[data-node="router-1"]')).to_contain_text("up")

    # spend changes: a paid request moves the global budget's bar and text
    before = await page.locator('#budgets [data-scope="global"] .spend').inner_text()
    async with openai.AsyncOpenAI(base_url=f"{cluster.gateway.url}/v1", api_key="x", max_retries=0) as client:
        await client.chat.completions.create(model="gpt-4", messages=[{"role": "user", "content": "hello there"}])
    await expect(page.locator('#budgets [data-scope="global"] .spend')).not_to_have_text(before, timeout=15_000)
    await expect(page.locator("#spend-backend rect[data-name='cloud-api']")).to_have_count(1, timeout=15_000)
    await expect(page.locator("#decisions li").first).to_contain_text("gpt-4 → cloud-api", timeout=15_000)
    await _shot(page, "dashboard.png")

    # a backend dies: its row turns unhealthy without a reload
    await cluster.fakes["local-gpu"].stop()
    await expect(_row(page, "local-gpu").locator(".health")).to_have_text("unhealthy", timeout=15_000)

    # the explain form shows the API's decision
    request = {"model": "llama3:8b", "messages": [{"role": "user", "content": "hi"}]}
    await page.fill("#explain-request", json.dumps(request))
    await page.click("#explain-form button")
    await expect(page.locator("#explain-result")).to_be_visible()
    async with aiohttp.ClientSession() as http, http.post(
        f"{url}/admin/v1/route/explain", json={"request": request}, headers={"Authorization": f"Bearer {TOKEN}"}
    ) as r:
        api = await r.json()
    assert api["backend"] == "cloud-api"  # local-gpu is down
    await expect(page.locator("#explain-backend")).to_have_text(api["backend"])
    await expect(page.locator("#explain-decision")).to_have_text(api["decision"])
    await expect(page.locator("#explain-reason")).to_have_text(api["route_reason"])
    shown = await page.locator("#explain-steps li").evaluate_all("els => els.map(e => e.dataset.reconciler)")
    assert shown == [s["reconciler"] for s in api["steps"]]
    await expect(page.locator("#explain-steps")).to_contain_text("local-gpu: backend is unhealthy")
    await _shot(page, "dashboard-explain.png")
    # one page, one stream
    assert cluster.admin_app.state.dashboard.subscribers == 1
