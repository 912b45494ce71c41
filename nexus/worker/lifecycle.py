"""The lifecycle job: carry out pending model operations on Ollama backends, and read what they have loaded.

Every second one worker's tick takes each pending operation (or one whose worker died: its lease lapsed)
under a lease of its own and runs it to the end (steps in nexus/core/fleet/lifecycle.py). Steps are
idempotent (loading a loaded model, unloading an unloaded one), so an operation resumed by another worker
simply runs again. Before an unload the job waits until every live router node has built a snapshot
after the `draining` mark was set (their heartbeats say when), so no router still picks the source.
The same tick re-reads `/api/ps` of every Ollama backend at most every `PS_REFRESH_SECONDS` ({fleet} models).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

import aiohttp
from redis.asyncio import Redis

from nexus.core import keys
from nexus.core.config import BackendConfig, NexusSettings
from nexus.core.fleet.lifecycle import LifecycleMark, MarkState, Operation, OpKind, OpState
from nexus.core.fleet.store import Lease, clear_mark, drop_ops, read_ops, read_ps, set_mark, write_op, write_ps
from nexus.core.model import BackendType
from nexus.core.state import read_desired
from nexus.worker import lifecycle_client as ollama
from nexus.worker.jobs import ticked
from nexus.worker.store import read_heartbeats_raw

__all__ = ["LIFECYCLE_INTERVAL_SECONDS", "LIFECYCLE_JOB", "lifecycle_job", "run_lifecycle"]

log = logging.getLogger("nexus.worker.lifecycle")

LIFECYCLE_JOB = "nexus.lifecycle"
LIFECYCLE_INTERVAL_SECONDS = 1.0
PS_REFRESH_SECONDS = 5.0


class _Failed(Exception):
    pass


class _Runner:
    def __init__(self, redis: Redis, http: aiohttp.ClientSession, settings: NexusSettings,
                 clock: Callable[[], float]) -> None:
        self.redis, self.http, self.settings, self.clock = redis, http, settings, clock
        self.cfg = settings.lifecycle

    async def step(self, op: Operation, step: str) -> Operation:
        op = op.model_copy(update={"state": OpState.RUNNING, "step": step, "updated_at": self.clock()})
        await write_op(self.redis, op)
        return op

    async def _loaded(self, b: BackendConfig) -> list[str]:
        models = await ollama.ps(self.http, b.url, self.settings.health_check.timeout_seconds)
        await write_ps(self.redis, b.name, self.clock(), models)
        return [m["name"] for m in models]

    async def _until(self, b: BackendConfig, model: str, present: bool) -> None:
        deadline = time.monotonic() + self.cfg.load_timeout_seconds
        while (model in await self._loaded(b)) != present:
            if time.monotonic() > deadline:
                raise _Failed(f"{b.name}: /api/ps still {'lacks' if present else 'lists'} {model} after the timeout")
            await asyncio.sleep(self.cfg.poll_seconds)

    async def load(self, op: Operation, b: BackendConfig) -> None:
        until = self.clock() + self.cfg.load_timeout_seconds + self.cfg.pull_timeout_seconds
        await set_mark(self.redis, b.name, op.model, LifecycleMark(MarkState.LOADING, op.id, until))
        try:
            try:
                await ollama.generate(self.http, b.url, op.model, self.cfg.keep_alive, self.cfg.load_timeout_seconds)
            except ollama.BackendCallError as exc:
                if not (self.cfg.pull_missing and "HTTP 404" in str(exc)):
                    raise
                await ollama.pull(self.http, b.url, op.model, self.cfg.pull_timeout_seconds)
                await ollama.generate(self.http, b.url, op.model, self.cfg.keep_alive, self.cfg.load_timeout_seconds)
            await self._until(b, op.model, True)
        finally:
            await clear_mark(self.redis, b.name, op.model)

    async def _routers_saw(self, since: float) -> None:
        """Until every live router node built a snapshot after `since` (bounded by a few snapshot polls)."""
        deadline = time.monotonic() + 4 * self.settings.redis.snapshot_poll_seconds + 5
        while time.monotonic() < deadline:
            beats = [b for _, b in (await read_heartbeats_raw(self.redis)).values() if b is not None]
            live = [b for b in beats if self.clock() - b.at < keys.NODE_STALE_SECONDS and not b.draining]
            if all((b.snapshot_built_at or 0) > since for b in live):
                return
            await asyncio.sleep(self.cfg.poll_seconds)
        log.warning("not every router node picked up the draining mark in time; unloading anyway")

    async def unload(self, op: Operation, b: BackendConfig) -> None:
        now = self.clock()
        until = now + self.cfg.load_timeout_seconds + 60
        await set_mark(self.redis, b.name, op.model, LifecycleMark(MarkState.DRAINING, op.id, until))
        try:
            await self._routers_saw(now)
            await ollama.generate(self.http, b.url, op.model, 0, self.cfg.load_timeout_seconds)
            await self._until(b, op.model, False)
        except BaseException:
            await clear_mark(self.redis, b.name, op.model)
            raise
        until = self.clock() + self.cfg.status_retention_seconds
        await set_mark(self.redis, b.name, op.model, LifecycleMark(MarkState.UNLOADED, op.id, until))

    async def run(self, op: Operation, backends: dict[str, BackendConfig]) -> Operation:
        def ollama_backend(name: str | None) -> BackendConfig:
            b = backends.get(name or "")
            if b is None or b.type is not BackendType.OLLAMA:
                raise _Failed(f"backend {name!r} is not an Ollama backend of the desired state")
            return b

        try:
            if op.kind is OpKind.LOAD:
                op = await self.step(op, "loading")
                await self.load(op, ollama_backend(op.backend))
            elif op.kind is OpKind.UNLOAD:
                op = await self.step(op, "unloading")
                await self.unload(op, ollama_backend(op.backend))
            else:
                source, target = ollama_backend(op.source), ollama_backend(op.target)
                op = await self.step(op, f"loading on {target.name}")
                await self.load(op, target)
                op = await self.step(op, f"unloading from {source.name}")
                await self.unload(op, source)
            done = op.model_copy(update={"state": OpState.DONE, "step": "", "updated_at": self.clock()})
        except (_Failed, ollama.BackendCallError) as exc:
            log.warning("lifecycle %s %s of %s failed: %s", op.kind.value, op.id, op.model, exc)
            done = op.model_copy(update={"state": OpState.FAILED, "error": str(exc)[:2000], "updated_at": self.clock()})
        await write_op(self.redis, done)
        return done


async def _refresh_ps(runner: _Runner, backends: dict[str, BackendConfig]) -> None:
    readings = await read_ps(runner.redis)
    now = runner.clock()
    stale = [b for b in backends.values() if b.type is BackendType.OLLAMA
             and now - float(readings.get(b.name, {}).get("at", 0) or 0) >= PS_REFRESH_SECONDS]

    async def one(b: BackendConfig) -> None:
        try:
            await runner._loaded(b)
        except ollama.BackendCallError as exc:
            log.debug("cannot read loaded models of %s: %s", b.name, exc)

    await asyncio.gather(*(one(b) for b in stale))


async def run_lifecycle(redis: Redis, http: aiohttp.ClientSession, settings: NexusSettings,
                        clock: Callable[[], float] = time.time) -> dict[str, Any]:
    """One tick: run what is pending (each under its lease), refresh /api/ps readings, drop old operations."""
    runner = _Runner(redis, http, settings, clock)
    _, desired = await read_desired(redis, salvage=True)
    backends = {b.name: b for b in desired.backends}
    ops = await read_ops(redis)
    finished: list[str] = []
    for op in sorted((o for o in ops.values() if not o.finished), key=lambda o: o.created_at):
        lease = Lease(redis, f"op-{op.id}", settings.lifecycle.load_timeout_seconds * 2 + 120)
        if not await lease.acquire():
            continue
        try:
            finished.append((await runner.run(op, backends)).state.value)
        finally:
            await lease.release()
    await _refresh_ps(runner, backends)
    now = clock()
    keep = settings.lifecycle.status_retention_seconds
    old = [o.id for o in ops.values() if o.finished and now - o.updated_at > keep]
    await drop_ops(redis, old)
    return {"ran": finished, "dropped": len(old)}


async def lifecycle_job(ctx: dict[str, Any]) -> dict[str, Any]:
    async def body(wc: Any) -> dict[str, Any]:
        assert wc.http is not None, "the worker's start-up opens the HTTP session"
        return await run_lifecycle(ctx["redis"], wc.http, wc.settings, wc.clock)

    return await ticked(ctx, LIFECYCLE_JOB, body)
