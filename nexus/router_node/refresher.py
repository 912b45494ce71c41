"""Keeps a router node's snapshot current without ever making a request wait on Redis.

The first load happens at start (`/ready` stays false until it succeeds). After that the snapshot is
rebuilt when a change event arrives on the events channel and, as a safety net for missed events and
for observed state that changes without events (health, quality), every `redis.snapshot_poll_seconds`.

Building runs in a worker thread (`nexus.core.fetch.build_state`), so a config at the size limits never
stalls requests, and the decoded config is reused while its version and epoch do not change.

Nothing Redis holds can take the node down:
- Redis away: the node keeps routing on its last snapshot; its age is reported, and loading resumes by
  itself when Redis returns.
- A desired state that cannot be decoded or built (a bad value written past validation, a bug): the node
  keeps its last good snapshot, logs the error with the failing config version (once per version, then
  once a minute), counts `nexus_snapshot_build_failures_total`, reports the error in `/ready` and in its
  heartbeat (admin nodes view, `nexus nodes`), and retries on every poll and change event.
- A Redis that lost its data (empty, or a config version lower than the one held: `nexus.core.recovery`):
  the node keeps routing on its snapshot, says so (`lost`: metric, `/ready`, heartbeat, a log line a
  minute) and restores the desired config it holds (the freshest node wins); the telemetry loop puts back
  the live spend it last read (`nexus.router_node.telemetry`). Once Redis holds the held version or a later one
  again, it goes on as usual.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

from redis.asyncio import Redis

from nexus.core.config import DesiredConfig, NexusSettings
from nexus.core.errors import StateError, StateUnavailable
from nexus.core.fetch import StoreState, build_state, fetch_state
from nexus.core.recovery import Verdict, judge, restore_desired
from nexus.core.snapshot import Snapshot, SnapshotCache
from nexus.core.state import ChangeSubscription, subscribe_changes

__all__ = ["SnapshotRefresher"]

log = logging.getLogger("nexus.refresher")
REPEAT_LOG_SECONDS = 60.0


class SnapshotRefresher:
    def __init__(
        self,
        redis: Redis,
        settings: NexusSettings,
        on_snapshot: Callable[[Snapshot], None],
        on_build_failure: Callable[[], None] | None = None,
    ) -> None:
        self._redis = redis
        self._settings = settings
        self._on_snapshot = on_snapshot
        self._on_build_failure = on_build_failure
        self.lost: str | None = None  # why the state in Redis was judged lost, while it is
        self.restores = 0  # desired-config restores this node wrote
        self._lost_logged = 0.0
        self._wake = asyncio.Event()
        self.snapshot: Snapshot | None = None
        self.cache: SnapshotCache | None = None  # what the next build can reuse; `.desired` built `snapshot`
        self.epoch: str | None = None
        self.last_error: str | None = None  # why the newest read could not be used (None: it was)
        self.failing_version: int | None = None  # config version that cannot be built, while it is current
        self._logged: tuple[int | None, float] = (None, 0.0)

    async def fetch(self) -> StoreState:
        held = self.snapshot.version if self.snapshot is not None and self.cache is not None else None
        return await fetch_state(self._redis, held, self.epoch)

    @property
    def desired(self) -> DesiredConfig | None:
        """The desired config the current snapshot was built from."""
        return self.cache.desired if self.cache is not None else None

    async def _judge(self, state: StoreState) -> bool:
        """False when Redis lost the state: the snapshot is kept and the held config restored."""
        held = self.snapshot.version if self.snapshot is not None else None
        verdict = judge(state.version, state.epoch, held, self.epoch)
        if verdict is Verdict.ADOPT:
            log.warning("desired state at version %d has a new epoch (restored or re-seeded); adopting it",
                        state.version)

        if verdict is not Verdict.LOST:
            if self.lost is not None:
                log.warning("shared state is back at config version %d; the loss is over", state.version)
            self.lost = None
            return True
        assert self.snapshot is not None and self.cache is not None
        first = self.lost is None
        self.lost = (
            f"Redis holds config version {state.version} but this node routes on version {held}: its data was "
            "lost; routing on the last good snapshot and restoring it"
        )
        now = time.monotonic()
        if first or now - self._lost_logged >= REPEAT_LOG_SECONDS:
            self._lost_logged = now
            log.error("shared state lost: %s", self.lost)
        if await restore_desired(self._redis, self.cache.desired, held):
            self.restores += 1
            log.warning("restored desired config version %d into Redis from this node's snapshot", held)
            self.poke()
        return False

    async def build(self, state: StoreState) -> Snapshot:
        """Decode and build `state` off the event loop, and make it the node's snapshot."""
        try:
            cache, snap = await asyncio.to_thread(build_state, state, self.cache, self._settings, time.time())
        except StateError as exc:
            self._build_failed(state.version, exc)
            raise
        except Exception as exc:  # unexpected: still never fatal to the node
            self._build_failed(state.version, exc)
            raise StateError(f"config version {state.version} cannot be built: {exc}") from exc
        self.snapshot, self.cache, self.epoch = snap, cache, state.epoch
        self.last_error = None
        self.failing_version = None
        self._on_snapshot(snap)
        return snap

    async def load(self) -> Snapshot:
        return await self.build(await self.fetch())

    def _build_failed(self, version: int | None, exc: BaseException) -> None:
        self.last_error = f"config version {version} cannot be used: {exc}" if version else str(exc)
        self.failing_version = version
        if self._on_build_failure is not None:
            self._on_build_failure()
        now = time.monotonic()
        last_version, last_at = self._logged
        if version != last_version or now - last_at >= REPEAT_LOG_SECONDS:
            self._logged = (version, now)
            held = self.snapshot.version if self.snapshot is not None else None
            log.error(
                "desired state at config version %s cannot be built; %s; retrying on every change and poll: %s",
                version if version is not None else "(unreadable)",
                f"routing on the last good snapshot (version {held})" if held is not None else "not ready",
                exc,
            )

    def poke(self) -> None:
        """Ask for a rebuild now (a change event arrived)."""
        self._wake.set()

    async def refresh_once(self) -> None:
        """One load; failures are recorded (and logged), never raised."""
        try:
            state = await self.fetch()
        except StateUnavailable as exc:
            if self.last_error is None:
                log.warning("snapshot refresh failed, routing on the last snapshot: %s", exc)
            self.last_error = str(exc)
            return
        except StateError as exc:  # Redis answered, but with something unusable (a malformed version, say)
            self._build_failed(None, exc)
            return
        try:
            if not await self._judge(state):
                return
        except StateError as exc:
            self.last_error = str(exc)
            return
        with contextlib.suppress(StateError):  # recorded by build()
            await self.build(state)

    async def run_poll(self) -> None:
        poll = self._settings.redis.snapshot_poll_seconds
        while True:
            await self.refresh_once()
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
