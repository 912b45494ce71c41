"""Keeps a router node's snapshot current without ever making a request wait on Redis.

The first load happens at start (`/ready` stays false until it succeeds). After that the snapshot is
rebuilt when a change event arrives on the events channel and, as a safety net for missed events and
for observed state that changes without events (health, quality), every `redis.snapshot_poll_seconds`.
If Redis goes away the node keeps routing on its last snapshot; its age is reported, and loading
resumes by itself when Redis returns.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

from redis.asyncio import Redis

from controlplane.config import NexusSettings
from controlplane.errors import StateError
from controlplane.snapshot import Snapshot
from controlplane.state import ChangeSubscription, load_snapshot, subscribe_changes

__all__ = ["SnapshotRefresher"]

log = logging.getLogger("nexus.refresher")


class SnapshotRefresher:
    def __init__(self, redis: Redis, settings: NexusSettings, on_snapshot: Callable[[Snapshot], None]) -> None:
        self._redis = redis
        self._settings = settings
        self._on_snapshot = on_snapshot
        self._wake = asyncio.Event()
        self.snapshot: Snapshot | None = None
        self.last_error: str | None = None

    async def load(self) -> Snapshot:
        snap = await load_snapshot(self._redis, self._settings, time.time())
        self.snapshot = snap
        self.last_error = None
        self._on_snapshot(snap)
        return snap

    def poke(self) -> None:
        """Ask for a rebuild now (a change event arrived)."""
        self._wake.set()

    async def run_poll(self) -> None:
        poll = self._settings.redis.snapshot_poll_seconds
        while True:
            try:
                await self.load()
            except StateError as exc:
                if self.last_error is None:
                    log.warning("snapshot refresh failed, routing on the last snapshot: %s", exc)
                self.last_error = str(exc)
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                # a short wait while nothing is loaded yet, so /ready turns true soon after Redis appears
                await asyncio.wait_for(self._wake.wait(), poll if self.snapshot is not None else min(poll, 0.2))

    async def run_events(self) -> None:
        """Turn change events into immediate rebuilds; resubscribe after any failure."""
        while True:
            sub: ChangeSubscription | None = None
            try:
                sub = await subscribe_changes(self._redis)
                self.poke()  # anything published while we were not subscribed
                async for event in sub:
                    current = self.snapshot.version if self.snapshot else -1
                    if event.version != current:
                        self.poke()
            except (StateError, OSError) as exc:
                log.debug("change subscription lost: %s", exc)
            finally:
                if sub is not None:
                    with contextlib.suppress(Exception):
                        await sub.aclose()
            await asyncio.sleep(0.5)
