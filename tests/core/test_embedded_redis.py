"""EmbeddedRedis: a real redis-server child with AOF persistence; start, restart, crash, stop, misuse."""

from __future__ import annotations

import os
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from nexus.core.embedded_redis import EmbeddedRedis
from nexus.core.errors import EmbeddedRedisError


@pytest.fixture
def client_for() -> Iterator[object]:
    clients: list[redis.Redis] = []

    def make(server: EmbeddedRedis) -> redis.Redis:
        client = redis.Redis.from_url(server.url, socket_timeout=5)
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def _wait_for(predicate, what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def test_start_ping_aof_restart_stop(tmp_path: Path, client_for) -> None:
    server = EmbeddedRedis(tmp_path / "data")
    with server:
        first_pid, port = server.pid, server.port
        assert server.running and port is not None
        assert server.url == f"redis://127.0.0.1:{port}/0"
        client = client_for(server)
        assert client.ping() is True
        client.set("nexus:test", "kept")
        # The AOF is written before the reply is sent; fsync follows within a second.
        _wait_for(lambda: b"nexus:test" in server.aof_path.read_bytes(), "the write to reach the AOF")

        server.restart()
        assert server.port == port and server.pid != first_pid
        assert _gone(first_pid)
        assert client.get("nexus:test") == b"kept"  # the same client reconnects: same port
        last_pid = server.pid
    assert not server.running and server.pid is None
    assert last_pid is not None and _gone(last_pid)
    assert not (tmp_path / "data" / "redis.pid").exists()


def test_data_survives_a_crash(tmp_path: Path, client_for) -> None:
    server = EmbeddedRedis(tmp_path)
    with server:
        client = client_for(server)
        client.rpush("nexus:list", *range(100))
        crashed = server.pid
        server.kill()
        assert crashed is not None and _gone(crashed)
        server.start()  # the crash left a pid file behind: it names a dead process, so it is ignored
        assert client.llen("nexus:list") == 100


def test_unix_socket(tmp_path: Path, client_for) -> None:
    with EmbeddedRedis(tmp_path, unix_socket=True) as server:
        assert server.url == f"unix://{tmp_path.resolve() / 'redis.sock'}"
        assert server.port is None
        assert client_for(server).ping() is True


def test_second_server_on_same_data_dir_is_refused(tmp_path: Path) -> None:
    with EmbeddedRedis(tmp_path) as first:
        with pytest.raises(EmbeddedRedisError, match=rf"pid {first.pid}\) is already running"):
            EmbeddedRedis(tmp_path).start()
        with pytest.raises(EmbeddedRedisError, match="already running"):
            first.start()


def test_port_taken_fails_with_log_tail(tmp_path: Path) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        server = EmbeddedRedis(tmp_path, port=squatter.getsockname()[1], start_timeout=10)
        with pytest.raises(EmbeddedRedisError, match="Address already in use"):
            server.start()
        assert not server.running


def test_stale_pid_file_of_dead_process_is_ignored(tmp_path: Path, client_for) -> None:
    probe = subprocess.Popen(["true"])
    probe.wait()
    (tmp_path / "redis.pid").write_text(f"{probe.pid}\n")
    with EmbeddedRedis(tmp_path) as server:
        assert client_for(server).ping() is True


def test_stop_is_idempotent_and_url_needs_start(tmp_path: Path) -> None:
    server = EmbeddedRedis(tmp_path)
    with pytest.raises(EmbeddedRedisError, match="start"):
        _ = server.url
    server.stop()
    server.start()
    server.stop()
    server.stop()
    assert not server.running


def test_missing_executable(tmp_path: Path) -> None:
    with pytest.raises(EmbeddedRedisError, match="not executable"):
        EmbeddedRedis(tmp_path, executable=str(tmp_path / "nope")).start()
