"""The per-replica request queue for Queue decisions.

Bounded (`queue.max_size` waiters across priorities); `X-Nexus-Priority: high` waiters are woken
before normal ones, and within a priority the oldest first. A waiter does not hold a slot: on every
wake-up (snapshot refreshed, cluster load read back, or a local request finished) it re-runs the whole
pipeline, so privacy and every other constraint hold on queue re-runs exactly as on the first decision.
Waking in priority order matters because re-deciding and acquiring a backend happen without an await
in between: the first woken waiter takes freed capacity before the next one looks.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools

__all__ = ["QueueFull", "RequestQueue"]

_RANK = {"high": 0, "normal": 1}


class QueueFull(Exception):
    """The queue is disabled or at max_size."""


class RequestQueue:
    def __init__(self, max_size: int, enabled: bool = True) -> None:
        self.max_size = max_size if enabled else 0
        self._heap: list[tuple[int, int, asyncio.Future[None]]] = []
        self._seq = itertools.count()
        self._waiting = 0

    @property
    def depth(self) -> int:
        return self._waiting

    async def wait(self, priority: str, timeout: float) -> bool:
        """Wait for the next change; False when `timeout` passed first. Raises QueueFull."""
        if self._waiting >= self.max_size:
            raise QueueFull
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._heap, (_RANK.get(priority, 1), next(self._seq), fut))
        self._waiting += 1
        try:
            await asyncio.wait_for(fut, timeout)
            return True
        except TimeoutError:
            return False
        finally:
            self._waiting -= 1
            if not fut.done():
                fut.cancel()  # leaves a dead entry that notify() skips

    def notify(self) -> None:
        """Wake every waiter, highest priority and oldest first."""
        heap, self._heap = self._heap, []
        while heap:
            _, _, fut = heapq.heappop(heap)
            if not fut.done():
                fut.set_result(None)
