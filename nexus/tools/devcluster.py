"""A local cluster on loopback: the production topology as separate processes on one machine.

Redis (the embedded redis-server, AOF on; with `sentinel=True` a primary, a replica and three sentinels, every
process reaching the primary through Sentinel), N router nodes (`nexus router`), M workers (`nexus worker`),
the admin API (`nexus admin`), fake backends (`nexus fake-backend`) and, when the `nginx` binary is
installed and asked for, nginx in front of the routers (config rendered by `nexus.tools.nginx_conf`). `nexus
dev-cluster` runs it for people; the end-to-end tests drive it, including the faults: SIGKILL a router,
restart Redis, stop every worker.

Every process is started in its own session and stopped (SIGTERM, then SIGKILL after a deadline) by
`stop()`, which also runs when the object is used as a context manager and leaves.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import tomllib
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis
import tomli_w

from nexus.core.embedded_redis import EmbeddedRedis
from nexus.core.errors import NexusError
from nexus.tools.embedded_sentinel import EmbeddedSentinel

__all__ = ["ClusterError", "FakeSpec", "LocalCluster", "demo_cluster", "free_port"]

NEXUS = [sys.executable, "-m", "nexus.cli"]


class ClusterError(NexusError):
    """A cluster process did not start or answer in time."""


SENTINEL_MASTER = "nexus"


def _sentinel_ready(s: EmbeddedSentinel) -> bool:
    client = redis.Redis(host=s.host, port=s.port, socket_timeout=1)
    try:
        master = client.sentinel_master(SENTINEL_MASTER)
        return int(master.get("num-slaves", 0)) >= 1 and int(master.get("num-other-sentinels", 0)) >= 2
    except redis.RedisError:
        return False
    finally:
        client.close()


_EPHEMERAL = (32768, 60999)  # Linux's default range for outgoing connections' local ports
_next_port = [0]


def _ephemeral_range() -> tuple[int, int]:
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return _EPHEMERAL


def free_port() -> int:
    """A free port below the ephemeral range. A port the kernel hands out for `bind(0)` can be taken again
    as the local port of any outgoing connection before our child process binds it; ports below the
    range are only ever taken by explicit binds, so the window for a clash is tiny."""
    low, _ = _ephemeral_range()
    start, span = 20000, max(1000, low - 20000)
    if not _next_port[0]:
        _next_port[0] = os.getpid() * 7 % span
    for _ in range(span):
        _next_port[0] = (_next_port[0] + 1) % span
        port = start + _next_port[0]
        with socket.socket() as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise ClusterError("no free port below the ephemeral range")


@dataclass(frozen=True, slots=True)
class FakeSpec:
    """A fake backend to start, and the backend entry that routes to it."""

    name: str
    models: tuple[str, ...] = ("m",)
    type: str = "vllm"
    options: Mapping[str, Any] = field(default_factory=dict)  # extra fake-backend CLI flags, e.g. latency_ms
    backend: Mapping[str, Any] = field(default_factory=dict)  # extra backend config, e.g. tier, prices


def demo_cluster(demo_config: Path) -> tuple[list[FakeSpec], dict[str, Any]]:
    """The demo config (`nexus serve --demo`'s) as a cluster: its backends become fakes serving their
    models, everything else (aliases, fallbacks, policies, budget) is kept; ports are the cluster's own."""
    with open(demo_config, "rb") as fh:
        config = tomllib.load(fh)
    config.pop("server", None)
    fakes = []
    for b in config.pop("backends"):
        models = tuple(m["name"] if isinstance(m, dict) else m for m in b["models"])
        extra = {k: v for k, v in b.items() if k not in ("name", "url", "type")}
        fakes.append(FakeSpec(b["name"], models, b["type"], {"latency_ms": 20}, extra))
    return fakes, config


@dataclass(slots=True)
class Proc:
    name: str
    args: list[str]
    port: int
    log: Path
    popen: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


class LocalCluster:
    def __init__(
        self,
        base_dir: str | Path,
        *,
        routers: int = 3,
        workers: int = 2,
        admin: bool = True,
        fakes: Sequence[FakeSpec] = (),
        config: Mapping[str, Any] | None = None,
        admin_token: str = "dev-cluster-admin-token-0123456789",
        env: Mapping[str, str] | None = None,
        nginx: bool = False,
        sentinel: bool = False,
        router_env: Sequence[Mapping[str, str]] = (),
    ) -> None:
        self.base = Path(base_dir)
        self.base.mkdir(parents=True, exist_ok=True)
        self.admin_token = admin_token
        self.redis = EmbeddedRedis(self.base / "redis")  # the primary when `sentinel`
        self.sentinel = sentinel
        self.replica: EmbeddedRedis | None = None
        self.sentinels: list[EmbeddedSentinel] = []
        self.env = {**os.environ, **(env or {}), "NEXUS_ADMIN_TOKEN": admin_token, "PYTHONUNBUFFERED": "1"}
        self.fakes = [self._proc(f"fake-{f.name}", self._fake_args(f)) for f in fakes]
        self._fake_specs = list(fakes)
        self._config = dict(config or {})
        self.config_path = self.base / "nexus.toml"
        self.routers = [self._proc(f"router-{i}", []) for i in range(routers)]
        # extra environment of router i (e.g. NEXUS_TESTING_CLOCK_OFFSET_SECONDS: replicas whose clocks differ)
        self._router_env = {self.routers[i].name: dict(e) for i, e in enumerate(router_env)}
        self.workers = [self._proc(f"worker-{i}", [], port=0) for i in range(workers)]
        self.admin = self._proc("admin", []) if admin else None
        self.nginx_binary = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin:/usr/local/sbin")
        if nginx and self.nginx_binary is None:
            raise ClusterError("nginx was asked for but is not installed (apt-get install nginx-light)")
        self.nginx = self._proc("nginx", [], port=free_port()) if nginx else None

    # -- process plumbing -----------------------------------------------------------------------------
    def _proc(self, name: str, args: list[str], port: int | None = None) -> Proc:
        return Proc(name, args, free_port() if port is None else port, self.base / f"{name}.log")

    @staticmethod
    def _fake_args(f: FakeSpec) -> list[str]:
        args = ["fake-backend", "--name", f.name]
        for m in f.models:
            args += ["--model", m]
        for key, value in f.options.items():
            flag = "--" + key.replace("_", "-")
            args += [flag] if value is True else [flag, str(value)]
        return args

    def _spawn(self, p: Proc, args: list[str], env: Mapping[str, str] | None = None) -> None:
        with open(p.log, "ab") as log:
            p.popen = subprocess.Popen(
                [*NEXUS, *args],
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**self.env, **(env or {})},
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )

    def _wait_http(self, p: Proc, path: str, timeout: float = 30.0, headers: Mapping[str, str] | None = None) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if p.popen is not None and p.popen.poll() is not None:
                raise ClusterError(f"{p.name} exited with {p.popen.returncode}; log:\n{self.log_tail(p)}")
            try:
                req = urllib.request.Request(p.url + path, headers=dict(headers or {}))
                with urllib.request.urlopen(req, timeout=2) as resp:
                    if resp.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.05)
        raise ClusterError(f"{p.name} did not answer {path} within {timeout}s; log:\n{self.log_tail(p)}")

    @staticmethod
    def log_tail(p: Proc, lines: int = 30) -> str:
        try:
            return "\n".join(p.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    @staticmethod
    def _terminate(p: Proc, sig: int = signal.SIGTERM, timeout: float = 15.0) -> None:
        if p.popen is None or p.popen.poll() is not None:
            return
        p.popen.send_signal(sig)
        try:
            p.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            p.popen.kill()
            p.popen.wait(5)

    # -- topology ---------------------------------------------------------------------------------------
    def _write_config(self) -> None:
        data: dict[str, Any] = {k: v for k, v in self._config.items() if k != "backends"}
        backends = list(self._config.get("backends", []))
        for spec, proc in zip(self._fake_specs, self.fakes, strict=True):
            backends.append(
                {"name": spec.name, "url": proc.url, "type": spec.type, "models": list(spec.models), **spec.backend}
            )
        data["backends"] = backends
        data.setdefault("redis", {})["url"] = self.redis_url
        if self.sentinel:
            data["redis"].setdefault("replica_acks", 1)
        self.config_path.write_text(tomli_w.dumps(data), encoding="utf-8")

    @property
    def redis_url(self) -> str:
        """What the processes connect to: the primary, or the sentinels (`redis+sentinel://...`)."""
        if not self.sentinel:
            return self.redis.url
        hosts = ",".join(f"{h}:{p}" for h, p in (s.address for s in self.sentinels))
        return f"redis+sentinel://{hosts}/{SENTINEL_MASTER}/0"

    def _start_redis(self) -> None:
        self.redis.start()
        if not self.sentinel:
            return
        primary = (self.redis.host, self.redis.port or 0)
        self.replica = EmbeddedRedis(self.base / "replica", replica_of=primary).start()
        self.sentinels = [
            EmbeddedSentinel(self.base / f"sentinel-{i}", master=primary, master_name=SENTINEL_MASTER).start()
            for i in range(3)
        ]
        self.wait_replicated()

    def wait_replicated(self, timeout: float = 30.0) -> None:
        """Until the replica is in sync with the primary and every sentinel knows both (and its peers), so a
        failover can happen and starts from a complete copy."""
        deadline = time.monotonic() + timeout
        primary = redis.Redis(host=self.redis.host, port=self.redis.port, socket_timeout=1)
        try:
            while time.monotonic() < deadline:
                with contextlib.suppress(redis.RedisError):
                    info = primary.info("replication")
                    replica = info.get("slave0") or {}
                    synced = replica.get("state") == "online" and replica.get("offset") == info["master_repl_offset"]
                    if synced and all(_sentinel_ready(s) for s in self.sentinels):
                        return
                time.sleep(0.1)
        finally:
            primary.close()
        raise ClusterError("the replica or the sentinels did not come up in sync")

    def start(self) -> LocalCluster:
        try:
            self._start_redis()
            for p in self.fakes:
                self._spawn(p, [*p.args, "--port", str(p.port)])
            for p in self.fakes:
                self._wait_http(p, "/_fake/requests")
            self._write_config()
            for p in self.routers:
                self.start_router(p, wait=False)
            for p in self.routers:
                self._wait_http(p, "/ready")
            for p in self.workers:
                self.start_worker(p)
            if self.admin is not None:
                self._spawn(self.admin, ["admin", "--config", str(self.config_path), "--port", str(self.admin.port)])
                self._wait_http(self.admin, "/admin/v1/nodes", headers=self.admin_headers)
            if self.nginx is not None:
                self._start_nginx()
        except BaseException:
            self.stop()
            raise
        return self

    def start_router(self, p: Proc, *, wait: bool = True) -> None:
        args = ["router", "--config", str(self.config_path), "--port", str(p.port), "--node-id", p.name]
        self._spawn(p, args, self._router_env.get(p.name))
        if wait:
            self._wait_http(p, "/ready")

    def start_worker(self, p: Proc) -> None:
        self._spawn(p, ["worker", "--config", str(self.config_path)])

    def add_worker(self) -> Proc:
        """Start one more worker process (a cluster may start with none)."""
        p = self._proc(f"worker-{len(self.workers)}", [], port=0)
        self.workers.append(p)
        self.start_worker(p)
        return p

    def kill(self, p: Proc, sig: int = signal.SIGKILL) -> None:
        self._terminate(p, sig)

    def _start_nginx(self) -> None:
        assert self.nginx is not None
        from nexus.tools.nginx_conf import render

        conf = self.base / "nginx.conf"
        conf.write_text(render([r.port for r in self.routers], self.nginx.port, self.base), encoding="utf-8")
        with open(self.nginx.log, "ab") as log:
            self.nginx.popen = subprocess.Popen(
                [str(self.nginx_binary), "-c", str(conf), "-p", str(self.base), "-g", "daemon off;"],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self._wait_http(self.nginx, "/health")

    @property
    def admin_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.admin_token}"}

    def stop(self) -> None:
        procs = [
            *(x for x in [self.nginx] if x),
            *self.routers,
            *self.workers,
            *([self.admin] if self.admin else []),
            *self.fakes,
        ]
        for p in procs:
            if p.popen is not None and p.popen.poll() is None:
                p.popen.send_signal(signal.SIGTERM)
        for p in procs:
            self._terminate(p)
        for s in self.sentinels:
            s.stop()
        if self.replica is not None:
            self.replica.stop()
        self.redis.stop()

    def __enter__(self) -> LocalCluster:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop()
