"""Where Redis is, and the one way every process connects to it: standalone or through Redis Sentinel.

    [redis]
    url = "redis://10.0.0.9:6379/0"                          # standalone (rediss:// for TLS, unix:// sockets)
    url = "redis+sentinel://:pw@s1:26379,s2:26379,s3/mymaster/0"   # Sentinel: sentinels, master name, db
    # or, the same without a URL:
    sentinels = ["s1:26379", "s2:26379", "s3:26379"]
    master_name = "mymaster"

`connect` returns a redis-py asyncio client for either kind; with Sentinel it is `Sentinel.master_for`, whose
pool asks the sentinels for the current primary on every new connection and drops connections to a primary
that was demoted, so after a failover the next command (state reads and writes, pub/sub, arq's queue: every
client in Nexus comes from here) reaches the new primary by itself. Closing the client closes its sentinel
connections too. Sentinel port defaults to 26379; a password in the URL is the data nodes' (sentinels are
reached without one).

`parse_target` raises `ConfigError` naming the key; `describe` never shows a password.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from typing import Any, TypeVar
from urllib.parse import unquote, urlsplit

from redis.asyncio import Redis
from redis.asyncio.sentinel import Sentinel

from nexus.core.errors import ConfigError

__all__ = ["DEFAULT_SENTINEL_PORT", "RedisTarget", "connect", "parse_target"]

DEFAULT_SENTINEL_PORT = 26379
_SENTINEL_SCHEMES = ("redis+sentinel", "rediss+sentinel")
_PLAIN_SCHEMES = ("redis", "rediss", "unix")
R = TypeVar("R", bound=Redis)


@dataclass(frozen=True, slots=True)
class RedisTarget:
    url: str = ""  # standalone
    sentinels: tuple[tuple[str, int], ...] = ()
    master: str = ""
    db: int = 0
    username: str | None = None
    password: str | None = None
    ssl: bool = False

    @property
    def sentinel(self) -> bool:
        return bool(self.sentinels)

    def describe(self) -> str:
        if not self.sentinel:
            parts = urlsplit(self.url)
            return parts._replace(netloc=parts.netloc.rsplit("@", 1)[-1]).geturl()
        hosts = ",".join(f"{h}:{p}" for h, p in self.sentinels)
        return f"Sentinel {hosts}, master {self.master!r}, db {self.db}"


def _host_port(item: str, where: str) -> tuple[str, int]:
    item = item.strip()
    if item.startswith("["):
        host, _, rest = item[1:].partition("]")
        port = rest.removeprefix(":")
    else:
        host, _, port = item.partition(":")
    if not host:
        raise ConfigError(f"{where}: {item!r} has no host; give host[:port]")
    try:
        number = int(port) if port else DEFAULT_SENTINEL_PORT
    except ValueError:
        raise ConfigError(f"{where}: {item!r} has a port that is not a number") from None
    if not 1 <= number <= 65535:
        raise ConfigError(f"{where}: {item!r} has a port outside 1-65535")
    return host, number


def _sentinel_url(url: str) -> RedisTarget:
    where = "redis.url"
    parts = urlsplit(url)
    userinfo, _, hosts = parts.netloc.rpartition("@")
    username, _, password = userinfo.partition(":")
    sentinels = tuple(_host_port(h, where) for h in hosts.split(",") if h.strip())
    if not sentinels:
        raise ConfigError(f"{where}: a redis+sentinel URL lists the sentinels: redis+sentinel://h1:26379,h2/master/0")
    path = [p for p in parts.path.split("/") if p]
    if not path or len(path) > 2:
        raise ConfigError(f"{where}: a redis+sentinel URL ends in /<master name>[/<db>], e.g. /mymaster/0")
    try:
        db = int(path[1]) if len(path) == 2 else 0
    except ValueError:
        raise ConfigError(f"{where}: the db after the master name must be a number") from None
    return RedisTarget(
        sentinels=sentinels,
        master=unquote(path[0]),
        db=db,
        username=unquote(username) or None,
        password=unquote(password) or None,
        ssl=parts.scheme == "rediss+sentinel",
    )


def parse_target(url: str, sentinels: list[str] | tuple[str, ...] = (), master_name: str = "mymaster",
                 db: int = 0) -> RedisTarget:
    """The target `[redis]` (or a `--redis-url`) names; ConfigError when it is not one."""
    scheme = url.split("://", 1)[0].lower() if "://" in url else ""
    if url and sentinels:
        raise ConfigError("redis: give either url or sentinels, not both")
    if sentinels:
        if not master_name:
            raise ConfigError("redis.master_name: the Sentinel master name is required with sentinels")
        return RedisTarget(sentinels=tuple(_host_port(s, "redis.sentinels") for s in sentinels), master=master_name,
                           db=db)
    if scheme in _SENTINEL_SCHEMES:
        return _sentinel_url(url)
    if scheme in _PLAIN_SCHEMES:
        return RedisTarget(url=url)
    raise ConfigError(
        "redis.url must start with redis://, rediss://, unix:// or redis+sentinel:// (or leave it empty for the "
        "embedded Redis of nexus serve)"
    )


@cache
def _closing(cls: type[R]) -> type[R]:
    """`cls` whose aclose() also closes the sentinel connections the client was discovered through."""

    class SentinelBacked(cls):  # type: ignore[valid-type,misc]
        nexus_sentinels: tuple[Redis, ...] = ()

        async def aclose(self, close_connection_pool: bool | None = None) -> None:
            try:
                await super().aclose(close_connection_pool)
            finally:
                for s in self.nexus_sentinels:
                    await s.aclose()

    SentinelBacked.__name__ = f"SentinelBacked{cls.__name__}"
    return SentinelBacked


def connect(
    target: RedisTarget,
    *,
    redis_class: type[R] = Redis,  # type: ignore[assignment]
    socket_timeout: float | None = 5.0,
    socket_connect_timeout: float = 2.0,
    client_name: str | None = None,
    **kwargs: Any,
) -> R:
    """A client of `redis_class` for `target` (no I/O until its first command)."""
    options: dict[str, Any] = {
        "socket_timeout": socket_timeout,
        "socket_connect_timeout": socket_connect_timeout,
        **({"client_name": client_name} if client_name else {}),
        **kwargs,
    }
    if not target.sentinel:
        return redis_class.from_url(target.url, **options)
    manager = Sentinel(
        list(target.sentinels),
        sentinel_kwargs={"socket_timeout": socket_timeout, "socket_connect_timeout": socket_connect_timeout},
        db=target.db,
        username=target.username,
        password=target.password,
        ssl=target.ssl,
        **options,
    )
    client = manager.master_for(target.master, redis_class=_closing(redis_class))
    client.nexus_sentinels = tuple(manager.sentinels)
    return client
