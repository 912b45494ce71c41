"""The fleet's shared state in Redis ({fleet} and `{observed} lifecycle`, see nexus/core/keys.py): what the
discovery job saw, ignored URLs, leases, lifecycle operations and marks, /api/ps readings, recommendations.

Invariants:
- Every value validates on read; a malformed entry is skipped with a warning (a poisoned field must not stop
  discovery or the lifecycle job), never raised to a reader.
- Leases are `SET NX PX` with a random token, released or extended only by the token's holder (one Lua
  compare-and-act each), so a worker that stalled past its lease never clobbers the next holder's work.
- Redis failures surface as `StateUnavailable`/`StateError` (nexus.core.observed.guard).
"""

from __future__ import annotations

import logging
import secrets as _secrets
from collections.abc import Mapping
from typing import Any

import orjson
from pydantic import ValidationError
from redis.asyncio import Redis

from nexus.core import keys
from nexus.core.fleet.discovery import SeenRecord, url_key
from nexus.core.fleet.lifecycle import LifecycleMark, Operation, decode_marks
from nexus.core.observed import decode_hash, guard, replace_hash

__all__ = [
    "MAX_OPS",
    "Lease",
    "add_ignored",
    "clear_mark",
    "drop_ignored",
    "drop_ops",
    "read_ignored",
    "read_marks",
    "read_ops",
    "read_ps",
    "read_recommendations",
    "read_seen",
    "set_mark",
    "write_op",
    "write_ps",
    "write_recommendations",
    "write_seen",
]

log = logging.getLogger("nexus.fleet")

_RELEASE = "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0"
_EXTEND = "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end return 0"


def _records(reply: Any, where: str) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for field, raw in decode_hash(reply).items():
        try:
            value = orjson.loads(raw)
        except orjson.JSONDecodeError:
            value = None
        if not isinstance(value, dict):
            log.warning("skipping a malformed entry %r of %s", field[:80], where)
            continue
        out[field] = value
    return out


async def read_seen(redis: Redis) -> dict[str, SeenRecord]:
    with guard("reading discovery records"):
        reply = await redis.hgetall(keys.FLEET_DISCOVERED)
    out = {}
    for name, v in _records(reply, "discovery records").items():
        try:
            out[name] = SeenRecord(
                str(v["url"]), str(v["service"]), str(v["instance"]), float(v["first_seen"]), float(v["last_seen"])
            )
        except (KeyError, TypeError, ValueError):
            log.warning("skipping a malformed discovery record %r", name[:80])
    return out


async def write_seen(redis: Redis, records: Mapping[str, SeenRecord]) -> None:
    payload = {
        name: orjson.dumps(
            {"url": r.url, "service": r.service, "instance": r.instance, "first_seen": r.first_seen,
             "last_seen": r.last_seen}
        )
        for name, r in records.items()
    }
    await replace_hash(redis, keys.FLEET_DISCOVERED, payload, "writing discovery records")


async def read_ignored(redis: Redis) -> dict[str, dict[str, Any]]:
    """URL key -> {url, name, at} of every ignored announcement."""
    with guard("reading ignored URLs"):
        reply = await redis.hgetall(keys.FLEET_IGNORED)
    return _records(reply, "ignored URLs")


async def add_ignored(redis: Redis, url: str, name: str, now: float) -> None:
    with guard("ignoring a URL"):
        await redis.hset(keys.FLEET_IGNORED, url_key(url), orjson.dumps({"url": url, "name": name, "at": now}))


async def drop_ignored(redis: Redis, url: str) -> bool:
    with guard("un-ignoring a URL"):
        return bool(await redis.hdel(keys.FLEET_IGNORED, url_key(url)))


class Lease:
    """A lease on `keys.fleet_lock(name)`: `acquire` once, `extend` while working, `release` when done."""

    def __init__(self, redis: Redis, name: str, seconds: float) -> None:
        self._redis = redis
        self._key = keys.fleet_lock(name)
        self._ms = max(1, int(seconds * 1000))
        self._token = _secrets.token_hex(16)

    async def acquire(self) -> bool:
        with guard("taking a fleet lease"):
            return bool(await self._redis.set(self._key, self._token, nx=True, px=self._ms))

    async def extend(self) -> bool:
        with guard("extending a fleet lease"):
            return bool(await self._redis.eval(_EXTEND, 1, self._key, self._token, self._ms))

    async def release(self) -> None:
        with guard("releasing a fleet lease"):
            await self._redis.eval(_RELEASE, 1, self._key, self._token)



# -- lifecycle -------------------------------------------------------------------------------------------
MAX_OPS = 1000  # stored operations at most: a new one drops the oldest finished ones (nexus admin /models)


async def write_op(redis: Redis, op: Operation) -> None:
    with guard("writing a lifecycle operation"):
        await redis.hset(keys.FLEET_OPS, op.id, op.model_dump_json())


async def read_ops(redis: Redis) -> dict[str, Operation]:
    with guard("reading lifecycle operations"):
        reply = await redis.hgetall(keys.FLEET_OPS)
    out = {}
    for op_id, raw in decode_hash(reply).items():
        try:
            out[op_id] = Operation.model_validate_json(raw)
        except ValidationError:
            log.warning("skipping a malformed lifecycle operation %r", op_id[:80])
    return out


async def drop_ops(redis: Redis, ids: list[str]) -> None:
    if ids:
        with guard("dropping lifecycle operations"):
            await redis.hdel(keys.FLEET_OPS, *ids)


# One script per mark change: the backend's field holds every model's mark, so read-modify-write is atomic.
_SET_MARK = """
local cur = redis.call('HGET', KEYS[1], ARGV[1])
local marks = cur and cjson.decode(cur) or {}
if ARGV[3] == '' then marks[ARGV[2]] = nil else marks[ARGV[2]] = cjson.decode(ARGV[3]) end
if next(marks) == nil then return redis.call('HDEL', KEYS[1], ARGV[1]) end
return redis.call('HSET', KEYS[1], ARGV[1], cjson.encode(marks))
"""


async def set_mark(redis: Redis, backend: str, model: str, mark: LifecycleMark) -> None:
    value = orjson.dumps({"state": mark.state.value, "op": mark.op, "until": mark.until})
    with guard("marking a model's lifecycle"):
        await redis.eval(_SET_MARK, 1, keys.OBSERVED_LIFECYCLE, backend, model, value)


async def clear_mark(redis: Redis, backend: str, model: str) -> None:
    with guard("clearing a model's lifecycle mark"):
        await redis.eval(_SET_MARK, 1, keys.OBSERVED_LIFECYCLE, backend, model, "")


async def read_marks(redis: Redis) -> dict[str, dict[str, LifecycleMark]]:
    with guard("reading lifecycle marks"):
        return decode_marks(await redis.hgetall(keys.OBSERVED_LIFECYCLE))


async def write_ps(redis: Redis, backend: str, at: float, models: list[dict[str, Any]]) -> None:
    with guard("writing loaded models"):
        await redis.hset(keys.FLEET_MODELS, backend, orjson.dumps({"at": at, "models": models}))


async def read_ps(redis: Redis) -> dict[str, dict[str, Any]]:
    """backend -> {at, models: [{name, size_vram, expires_at}]}, as the lifecycle job last read /api/ps."""
    with guard("reading loaded models"):
        return _records(await redis.hgetall(keys.FLEET_MODELS), "loaded models")


async def write_recommendations(redis: Redis, state: dict[str, Any]) -> None:
    with guard("writing recommendations"):
        await redis.set(keys.FLEET_RECOMMENDATIONS, orjson.dumps(state))


async def read_recommendations(redis: Redis) -> dict[str, Any]:
    with guard("reading recommendations"):
        raw = await redis.get(keys.FLEET_RECOMMENDATIONS)
    try:
        value = orjson.loads(raw) if raw else {}
    except orjson.JSONDecodeError:
        value = {}
    return value if isinstance(value, dict) else {}
