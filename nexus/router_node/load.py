"""In-flight accounting for one router node, and the cluster-wide load view the scheduler reads.

Each request attempt `acquire`s its backend and `release`s it in a `finally`, so a client disconnect
or an upstream failure can never leak a count. The node publishes its local gauge to Redis on every
telemetry flush; `update_cluster` takes the summed gauges of all nodes back, and the view the scheduler
sees is (cluster total - what this node last published) + this node's live count: other replicas' load
as of the last flush, this replica's load as of now. No Redis round trip happens per request.
"""

from __future__ import annotations

from collections.abc import Mapping

__all__ = ["LoadTracker"]


class LoadTracker:
    __slots__ = ("_others", "_published", "local")

    def __init__(self) -> None:
        self.local: dict[str, int] = {}
        self._others: dict[str, int] = {}
        self._published: dict[str, int] = {}

    def acquire(self, backend: str) -> None:
        self.local[backend] = self.local.get(backend, 0) + 1

    def release(self, backend: str) -> None:
        n = self.local.get(backend, 0) - 1
        if n > 0:
            self.local[backend] = n
        else:
            self.local.pop(backend, None)

    def snapshot_local(self) -> dict[str, int]:
        """The gauge to publish now; remembered so the cluster sum can be de-duplicated later."""
        self._published = dict(self.local)
        return self._published

    def update_cluster(self, totals: Mapping[str, int]) -> None:
        published = self._published
        others = {}
        for name, n in totals.items():
            rest = n - published.get(name, 0)
            if rest > 0:
                others[name] = rest
        self._others = others

    def get(self, backend: str, default: int = 0) -> int:
        return self._others.get(backend, 0) + self.local.get(backend, 0) or default

    def total(self) -> int:
        return sum(self.local.values())
