"""Running the worker: `nexus worker` (blocking, its own process) and in-process for `nexus serve`.

Both paths run the same arq `Worker` built by `nexus.worker.settings.worker_settings`, inside an event loop
that the caller owns, with arq's own signal handling off: `run_worker` installs SIGINT/SIGTERM handlers
that stop it gracefully, `start_in_process` returns a handle whose `stop()` the host process awaits on
shutdown.

Graceful stop: pick no new jobs, give running ticks `grace_seconds` to finish, cancel what is left (safe:
every tick is idempotent), then close arq's Redis pool and
the probes' HTTP session.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
from collections.abc import Callable, Collection
from typing import Any

from arq.connections import ArqRedis
from arq.worker import Worker, get_kwargs
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError, WatchError
from redis.exceptions import TimeoutError as RedisTimeoutError

from nexus.core.config import NexusSettings
from nexus.core.redis_conn import connect
from nexus.core.shutdown import stop_on_signals
from nexus.worker.settings import worker_settings

__all__ = ["ThreadedWorker", "WorkerHandle", "build_worker", "run_worker", "start_in_process"]

log = logging.getLogger("nexus.worker")


# What redis-py raises when Redis goes away; a WatchError that escapes arq is "connection lost while WATCHing"
# (arq catches the conflict kind itself).
_REDIS_DOWN = (RedisConnectionError, RedisTimeoutError, WatchError, OSError)
CONNECT_ATTEMPTS = 5


class _Worker(Worker):
    """arq's Worker, except that a Redis outage does not end it. arq lets a connection error raised in one
    poll iteration (picking jobs, a job's result write, cron enqueueing) escape its main loop, so every
    worker process exited on a Redis restart. Here the iteration is skipped and the next one, a poll delay
    later, reconnects; ticks due meanwhile are missed, which is safe as every loop is level-based."""

    _redis_down = False
    _finished = 0  # jobs whose slot arq gave back on completion

    def _release_sem_dec_counter_on_complete(self) -> None:
        self._finished += 1
        super()._release_sem_dec_counter_on_complete()

    async def start_jobs(self, job_ids: list[bytes]) -> None:
        for job_id in job_ids:
            counter, finished = self.job_counter, self._finished
            try:
                await super().start_jobs([job_id])
            except _REDIS_DOWN:
                # arq takes a job slot (semaphore and counter) before it talks to Redis and does not give it
                # back when that fails: after max_jobs outages the worker would never run a job again. The
                # slot is still ours if the counter is one up (net of jobs finishing meanwhile) and no task has it.
                taken = self.job_counter - counter + self._finished - finished == 1
                if taken and job_id.decode() not in self.tasks:
                    self.job_counter -= 1
                    self.sem.release()
                raise

    async def main(self) -> None:
        # arq pings only a pool it creates itself: wait for Redis here as its create_pool would (5 tries, 1 s)
        for attempt in range(CONNECT_ATTEMPTS):
            try:
                await self.pool.ping()
                break
            except _REDIS_DOWN as exc:
                if attempt + 1 == CONNECT_ATTEMPTS:
                    raise
                log.warning("Redis unavailable at start (%s); retrying", exc)
                await asyncio.sleep(1.0)
        await super().main()

    async def _poll_iteration(self) -> None:
        try:
            await super()._poll_iteration()
        except _REDIS_DOWN as exc:
            if not self._redis_down:
                log.warning("Redis unavailable; worker loops paused until it returns: %s", exc)
            self._redis_down = True
            return
        if self._redis_down:
            log.warning("Redis is back; worker loops resumed")
            self._redis_down = False


def build_worker(
    settings: NexusSettings,
    redis_url: str | None = None,
    *,
    jobs: Collection[str] | None = None,
    clock: Callable[[], float] | None = None,
    poll_delay: float = 0.5,
    **overrides: Any,
) -> Worker:
    """An arq Worker for `settings` (arq keyword arguments in `overrides`, e.g. `burst=True`). Must be
    called inside the event loop that will run it."""
    cls = worker_settings(settings, redis_url, jobs=jobs, clock=clock, poll_delay=poll_delay)
    # our own client (Sentinel-aware, with socket timeouts), not one arq would build from redis_settings
    pool = connect(cls.nexus_redis_target, redis_class=ArqRedis, client_name=f"nexus-worker:{os.getpid()}")
    pool.default_queue_name = cls.queue_name
    return _Worker(**{**get_kwargs(cls), "handle_signals": False, "redis_pool": pool, **overrides})


class WorkerHandle:
    """A worker running as a task of the current event loop."""

    __slots__ = ("_started", "_stopping", "_task", "worker")

    def __init__(self, worker: Worker) -> None:
        self.worker = worker
        self._started = asyncio.Event()
        self._stopping = False
        startup = worker.on_startup

        async def on_startup(ctx: dict[str, Any]) -> None:
            if startup is not None:
                await startup(ctx)
            self._started.set()

        worker.on_startup = on_startup
        self._task = asyncio.create_task(self._run(), name="nexus-worker")

    async def _run(self) -> None:
        try:
            await self.worker.async_run()
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if not self._stopping or (current is not None and current.cancelling()):
                raise  # cancelled from outside, not by our own stop()

    async def wait_started(self, timeout: float = 15.0) -> None:
        """Return once arq connected and the start-up hook ran; raise what the worker died of, if it did."""
        started = asyncio.ensure_future(self._started.wait())
        try:
            await asyncio.wait({started, self._task}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            started.cancel()
        if self._started.is_set():
            return
        if self._task.done():
            self._task.result()
            raise RuntimeError("the worker stopped during start-up")
        raise TimeoutError(f"the worker did not start within {timeout} s (is Redis reachable?)")

    @property
    def running(self) -> bool:
        return not self._task.done()

    async def stop(self, grace_seconds: float = 5.0) -> None:
        """Stop gracefully (see the module docstring). Safe to call twice."""
        if self._stopping:
            await asyncio.gather(self._task, return_exceptions=True)
            return
        self._stopping = True
        w = self.worker
        w.allow_pick_jobs = False
        running = [t for t in w.tasks.values() if not t.done()]
        if running:
            await asyncio.wait(running, timeout=grace_seconds)
        for t in w.tasks.values():
            t.cancel()
        if w.main_task is not None:
            w.main_task.cancel()
        else:  # not started yet: arq creates main_task inside async_run, so cancel the run itself
            self._task.cancel()
        await asyncio.gather(*w.tasks.values(), return_exceptions=True)
        await asyncio.gather(self._task, return_exceptions=True)
        w.tasks.clear()
        await _close(w)


async def _close(w: Worker) -> None:
    """`Worker.close()` minus its two problems here: it gathers tasks without return_exceptions, and it
    closes the pool with redis-py's deprecated `close()`."""
    pool = w._pool  # arq keeps it private; None when the worker never connected or is closed
    if pool is None:
        return
    try:
        with contextlib.suppress(RedisError):
            await pool.delete(w.health_check_key)
        if w.on_shutdown is not None:
            await w.on_shutdown(w.ctx)
    finally:
        w._pool = None
        await pool.aclose(close_connection_pool=True)


async def start_in_process(
    settings: NexusSettings, redis_url: str | None = None, *, wait: bool = True, **options: Any
) -> WorkerHandle:
    """Start the worker loops in the running event loop (for `nexus serve`); `await handle.stop()` on
    shutdown. `options` go to `build_worker`. With `wait`, returns once the worker is up."""
    handle = WorkerHandle(build_worker(settings, redis_url, **options))
    if wait:
        try:
            await handle.wait_started()
        except BaseException:
            await handle.stop(grace_seconds=0)
            raise
    return handle


class ThreadedWorker:
    """The worker loops on a thread with an event loop of their own, for `nexus serve`: a tick's work (health
    probes of many backends, a fleet pass) must not stall requests on the gateway's loop (a rollup tick once
    held it for up to 128 ms). On its own thread the interpreter switches away from it every few ms."""

    def __init__(self, settings: NexusSettings, redis_url: str | None = None, **options: Any) -> None:
        self._args = (settings, redis_url, options)
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None

    async def start(self, timeout: float = 20.0) -> ThreadedWorker:
        self._thread = threading.Thread(target=self._main, name="nexus-worker", daemon=True)
        self._thread.start()
        if not await asyncio.to_thread(self._ready.wait, timeout):
            raise TimeoutError(f"the worker thread did not start within {timeout} s")
        if self._error is not None:
            raise self._error
        return self

    def _main(self) -> None:
        async def body() -> None:
            settings, url, options = self._args
            self._loop, self._stop = asyncio.get_running_loop(), asyncio.Event()
            try:
                handle = await start_in_process(settings, url, **options)
            except BaseException as exc:
                self._error = exc
                self._ready.set()
                return
            self._ready.set()
            await self._stop.wait()
            await handle.stop()

        asyncio.run(body())

    async def stop(self) -> None:
        if self._thread is None:
            return
        if self._loop is not None and self._stop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._stop.set)
        await asyncio.to_thread(self._thread.join, 30)
        self._thread = None


def run_worker(settings: NexusSettings, redis_url: str | None = None, metrics_port: int | None = None) -> None:
    """`nexus worker`: run the loops until SIGINT or SIGTERM, then stop gracefully; with `metrics_port`,
    Prometheus metrics (`nexus.worker.metrics`) are served on it."""
    if metrics_port is not None:
        from prometheus_client import start_http_server

        from nexus.worker.metrics import REGISTRY

        start_http_server(metrics_port, addr=settings.server.host, registry=REGISTRY)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    async def main() -> None:
        stop = stop_on_signals()
        handle = await start_in_process(settings, redis_url)
        log.info("nexus worker running (%d cron jobs)", len(handle.worker.cron_jobs))
        waiter = asyncio.ensure_future(stop.wait())
        try:
            await asyncio.wait({waiter, handle._task}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiter.cancel()
            await handle.stop()
        log.info("nexus worker stopped")

    asyncio.run(main())
