"""One aggregated view of the cluster for every open dashboard page, pushed over Server-Sent Events.

The hub reads the state once per `interval` (`[admin] dashboard_interval_seconds`) while at least one page
is subscribed, and hands the same encoded document to every subscriber: N open pages cost one read per
interval, not N. A slow page never holds the others back: each subscriber keeps only the newest document
(a queue of one, the older one replaced). With no subscriber the reading task stops.

The document (`collect`): backends (health, load against max_concurrency, latency, error rate, TTFT, why a
configured backend is unusable), budgets with their soft and hard limits, the current period's spend by
backend, model and key, router nodes with snapshot version and age (stale ones flagged), total queue depth,
and each live node's recent sampled decisions. A Redis outage becomes `{"error": ...}` in the stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import orjson
from redis.asyncio import Redis

from nexus.controlplane.admin.routers.budgets import list_budgets
from nexus.controlplane.admin.routers.observe import nodes
from nexus.controlplane.admin.routers.spend import get_spend
from nexus.core import keys
from nexus.core.config import NexusSettings
from nexus.core.errors import StateError
from nexus.core.fetch import load_snapshot
from nexus.core.observed import guard

__all__ = ["STALE_SNAPSHOT_SECONDS", "DashboardHub", "collect"]

log = logging.getLogger("nexus.dashboard")
STALE_SNAPSHOT_SECONDS = 30.0  # a node whose snapshot is older, or behind the newest version, is flagged
DECISIONS_SHOWN = 20


async def _decisions(redis: Redis, node_ids: list[str]) -> list[dict[str, Any]]:
    if not node_ids:
        return []
    with guard("reading recent decisions"):
        async with redis.pipeline(transaction=False) as pipe:
            for node in node_ids:
                pipe.lrange(keys.decisions(node), 0, DECISIONS_SHOWN - 1)
            replies = await pipe.execute()
    out = []
    for node, items in zip(node_ids, replies, strict=True):
        for raw in items:
            with contextlib.suppress(orjson.JSONDecodeError, TypeError):
                item = orjson.loads(raw)
                if isinstance(item, dict):
                    out.append({**item, "node": node})
    out.sort(key=lambda d: d.get("at", 0), reverse=True)
    return out[:DECISIONS_SHOWN]


async def collect(redis: Redis, settings: NexusSettings) -> dict[str, Any]:
    now = time.time()
    snap = await load_snapshot(redis, settings, now)
    backends = []
    for name, b in sorted(snap.backends.items()):
        q = b.quality
        backends.append({
            "name": name, "type": b.type.value, "zone": b.zone.value, "health": b.health.value,
            "unusable": b.unusable, "inflight": snap.inflight.get(name, 0), "max_concurrency": b.max_concurrency,
            "latency_ms": b.latency_ema_ms, "error_rate_1h": q.error_rate_1h if q else None,
            "ttft_ms": q.avg_ttfb_ms_1h if q else None, "requests_1h": q.requests_1h if q else 0,
            "models": sorted(b.models),
        })
    node_list = [n.model_dump() for n in await nodes(redis)]
    for n in node_list:
        age = n["snapshot_age_seconds"]
        n["stale"] = n["status"] != "up" or n["snapshot_version"] < snap.version or (
            age is not None and age > STALE_SNAPSHOT_SECONDS)
    spend = await get_spend(redis, settings, None)
    return {
        "at": now,
        "config_version": snap.version,
        "backends": backends,
        "budgets": [b.model_dump() for b in await list_budgets(redis, settings)],
        "spend": {k: spend[k] for k in ("period", "total_usd", "requests", "by_backend", "by_model", "by_key")},
        "nodes": node_list,
        "queue_depth": sum(n["queue_depth"] for n in node_list if n["status"] != "gone"),
        "decisions": await _decisions(redis, [n["node"] for n in node_list if n["status"] != "gone"]),
    }


class DashboardHub:
    def __init__(self, read: Callable[[], Awaitable[dict[str, Any]]], interval: float) -> None:
        self._read = read
        self._interval = interval
        self._subscribers: set[asyncio.Queue[bytes]] = set()
        self._task: asyncio.Task[None] | None = None
        self.reads = 0  # documents read so far (tests: one read serves every page)

    @property
    def subscribers(self) -> int:
        return len(self._subscribers)

    async def subscribe(self) -> AsyncIterator[bytes]:
        """SSE frames for one page until it leaves: `data: <document>` per interval, a comment as keep-alive."""
        queue: asyncio.Queue[bytes] = asyncio.Queue(maxsize=1)
        self._subscribers.add(queue)
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name="dashboard-hub")
        try:
            yield b": connected\n\n"
            while True:
                yield b"data: " + await queue.get() + b"\n\n"
        finally:
            self._subscribers.discard(queue)

    async def _run(self) -> None:
        while self._subscribers:
            try:
                doc = await self._read()
            except StateError as exc:  # StateUnavailable included: the page says so and keeps listening
                doc = {"error": str(exc), "at": time.time()}
            except Exception:
                log.exception("dashboard state could not be read")
                doc = {"error": "the dashboard state could not be read (see the admin API's log)", "at": time.time()}
            self.reads += 1
            payload = orjson.dumps(doc)
            for queue in list(self._subscribers):
                if queue.full():
                    queue.get_nowait()  # this page is slow: it gets the newest document, not a backlog
                queue.put_nowait(payload)
            await asyncio.sleep(self._interval)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
