"""Redis Sentinel from the same `redis-server` binary (`redis-server sentinel.conf --sentinel`), as a child
process: the local stand-in for a Sentinel deployment, used by the dev cluster and the failover tests.

A sentinel monitors one master by address with a quorum; `down_after_ms` and `failover_timeout_ms` are short
by default so a failover on loopback takes a couple of seconds. The sentinel rewrites its config file as it
learns the topology, so each sentinel has a data directory of its own. Lifecycle and errors are
`EmbeddedRedis`'s: `start` waits until the sentinel answers, `stop`/`kill` within deadlines.
"""

from __future__ import annotations

import os
from pathlib import Path

import redis

from nexus.core.embedded_redis import EmbeddedRedis, _quote

__all__ = ["EmbeddedSentinel"]


class EmbeddedSentinel(EmbeddedRedis):
    def __init__(
        self,
        data_dir: str | os.PathLike[str],
        *,
        master: tuple[str, int],
        master_name: str = "mymaster",
        quorum: int = 2,
        down_after_ms: int = 1000,
        failover_timeout_ms: int = 5000,
        port: int | None = None,
    ) -> None:
        super().__init__(data_dir, port=port)
        self.master = master
        self.master_name = master_name
        self.quorum = quorum
        self.down_after_ms = down_after_ms
        self.failover_timeout_ms = failover_timeout_ms

    @property
    def address(self) -> tuple[str, int]:
        assert self.port is not None, "start() first"
        return self.host, self.port

    def _config(self) -> str:
        name = self.master_name
        lines = [
            f"bind {self.host}",
            "protected-mode no",
            "daemonize no",
            f"port {self._port}",
            f"dir {_quote(str(self.data_dir))}",
            f"pidfile {_quote(str(self.data_dir / 'redis.pid'))}",
            'logfile ""',
            f"sentinel monitor {name} {self.master[0]} {self.master[1]} {self.quorum}",
            f"sentinel down-after-milliseconds {name} {self.down_after_ms}",
            f"sentinel failover-timeout {name} {self.failover_timeout_ms}",
            f"sentinel parallel-syncs {name} 1",
        ]
        return "\n".join(lines) + "\n"

    def _command(self, executable: str, conf: Path) -> list[str]:
        return [executable, str(conf), "--sentinel"]

    def current_master(self) -> tuple[str, int] | None:
        """The master address this sentinel reports now (None if it cannot be asked)."""
        client = self._client()
        try:
            host, port = client.execute_command("SENTINEL", "get-master-addr-by-name", self.master_name)
        except (redis.exceptions.RedisError, TypeError, ValueError):
            return None
        finally:
            client.close()
        return (host.decode() if isinstance(host, bytes) else host), int(port)
