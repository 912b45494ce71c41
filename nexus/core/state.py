"""Typed async access to the shared state in Redis: desired config, change events, snapshot loading.

The observed-state API (`read_observed`, `read_health`, `write_inflight`, ...) lives in
`nexus.core.observed` and is re-exported here, so `nexus.core.state` is the one import for state.

Every value is orjson-encoded JSON, validated on read by the same pydantic models that validate TOML and
admin bodies (`BackendConfig`, `RoutingConfig`, ...); a value that does not validate is a `StateError`.
Redis connection failures and timeouts surface as `StateUnavailable`, chained from the redis-py error.
Key strings come from `nexus.core.keys` only.

Invariants:
- Desired config changes only through `_update`: WATCH the version key, read the whole config in one
  atomic script, validate the complete resulting `DesiredConfig`, then HSET/HDEL/SET + INCR version +
  PUBLISH in one MULTI. A validation failure writes nothing; a concurrent writer makes EXEC abort and
  the read-modify-write is retried, so no update is ever lost and versions never skip or repeat.
- A write that changes nothing stores nothing, publishes nothing and returns the current version.
- The version key exists iff the config was seeded or written; an unseeded store reads as version 0
  with an empty `DesiredConfig`, and `seed_desired` writes only while the version is 0.
- Reads of the config unit are atomic (one Lua script over same-slot keys), so a reader never sees a
  version with backends or routing of another version.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson
from pydantic import BaseModel, ConfigDict, ValidationError
from pydantic_core import PydanticSerializationError
from redis import exceptions as redis_exc
from redis.asyncio import Redis
from redis.asyncio.client import PubSub

from nexus.core import keys
from nexus.core.config import BackendConfig, DesiredConfig, RoutingConfig, validate_desired
from nexus.core.errors import ConfigError, StateError, StateUnavailable
from nexus.core.fetch import CONFIG_KEYS, READ_CONFIG, decode_config, load_snapshot, salvage_config
from nexus.core.observed import (
    HealthRecord,
    decode_hash,
    guard,
    read_health,
    read_inflight,
    read_observed,
    write_inflight,
)

__all__ = [
    "MAX_WRITE_ATTEMPTS",
    "ChangeEvent",
    "ChangeSubscription",
    "HealthRecord",
    "delete_backend",
    "load_snapshot",
    "put_backend",
    "put_routing",
    "read_desired",
    "read_health",
    "read_inflight",
    "read_observed",
    "seed_desired",
    "subscribe_changes",
    "update_desired",
    "write_desired",
    "write_inflight",
]

log = logging.getLogger("nexus.state")

# Each failed attempt means another writer committed, so N concurrent writers need at most N attempts;
# the cap only turns a pathological storm into an error instead of an endless loop.
MAX_WRITE_ATTEMPTS = 100

class ChangeEvent(BaseModel):
    """Payload published on `keys.EVENTS_CHANNEL` by every desired-state write."""

    model_config = ConfigDict(extra="ignore", frozen=True)
    version: int
    kind: str
    at: float


def _validated(proposed: DesiredConfig, kind: str) -> DesiredConfig:
    """Re-validate from plain data: `proposed` may be built with model_construct/model_copy, which skip
    validation, and only a full validation catches cross-field problems such as alias cycles."""
    source = f"desired config ({kind})"
    try:
        # warnings=False: a wrongly typed field is reported by the validation below, not as a warning.
        data = proposed.model_dump(mode="json", warnings=False)
    except PydanticSerializationError as exc:
        raise ConfigError(f"{source}: cannot be serialised: {exc}") from None
    return validate_desired(data, source)


@dataclass(frozen=True, slots=True)
class _Plan:
    """The writes one `_update` attempt commits (nothing to write: `removed`, `upserts`, `routing` empty).
    `removed` and `upserts` are per hash of named entries (backends, keys, teams)."""

    version: int
    removed: dict[str, list[str]]
    upserts: dict[str, dict[str, bytes]]
    routing: bytes | None

    @property
    def empty(self) -> bool:
        return not any(self.removed.values()) and not any(self.upserts.values()) and self.routing is None


def _entries(desired: DesiredConfig) -> dict[str, dict[str, Any]]:
    """Each hash of named entries of the config unit: hash key -> entry name -> JSON-ready value."""
    return {
        keys.CONFIG_BACKENDS: {b.name: b.model_dump(mode="json") for b in desired.backends},
        keys.CONFIG_KEYS: {k.id: k.model_dump(mode="json") for k in desired.keys},
        keys.CONFIG_TEAMS: {t.name: t.model_dump(mode="json") for t in desired.teams},
    }


def _plan(reply: Any, kind: str, change: Callable[[int, DesiredConfig], DesiredConfig | None]) -> _Plan | int:
    """Decode, change, validate and diff: CPU work (seconds at the size limits), so `_update` runs it in a
    worker thread. Returns the version alone when `change` leaves the config as it is."""
    dropped: list[str] = []
    try:
        version, current, routing_stored = decode_config(reply)
    except StateError:
        # the stored config does not validate (written past validation): start from what still does, so the
        # write that fixes it can be made, and rewrite the whole config over it
        version, current, routing_stored, dropped = salvage_config(reply)
    proposed = change(version, current)
    if proposed is None:
        return version
    new = _validated(proposed, kind)
    new_e = _entries(new)
    new_r = new.routing.model_dump(mode="json")
    if dropped:
        log.warning("desired config version %d in Redis does not validate; %s rewrites it without %s",
                    version, kind, ", ".join(dropped))
        stored = {keys.CONFIG_BACKENDS: reply[1], keys.CONFIG_KEYS: reply[3], keys.CONFIG_TEAMS: reply[4]}
        return _Plan(
            version,
            {h: [n for n in decode_hash(stored[h] or []) if n not in new_e[h]] for h in new_e},
            {h: {n: orjson.dumps(d) for n, d in entries.items()} for h, entries in new_e.items()},
            orjson.dumps(new_r),
        )
    routing = current.routing if routing_stored else None
    old_e = _entries(current)
    return _Plan(
        version=version,
        removed={h: [n for n in old_e[h] if n not in new_e[h]] for h in new_e},
        upserts={h: {n: orjson.dumps(d) for n, d in new_e[h].items() if old_e[h].get(n) != d} for h in new_e},
        routing=orjson.dumps(new_r) if routing is None or routing.model_dump(mode="json") != new_r else None,
    )


async def _update(
    redis: Redis, kind: str, change: Callable[[int, DesiredConfig], DesiredConfig | None]
) -> tuple[int, bool]:
    """Apply `change(version, current)` atomically; None from `change` means "leave it". Returns the
    resulting version and whether anything was written."""
    for _ in range(MAX_WRITE_ATTEMPTS):
        with guard("writing desired config"):
            async with redis.pipeline(transaction=True) as pipe:
                await pipe.watch(keys.CONFIG_VERSION)
                reply = await pipe.eval(READ_CONFIG, len(CONFIG_KEYS), *CONFIG_KEYS)
                plan = await asyncio.to_thread(_plan, reply, kind, change)
                if isinstance(plan, int):
                    return plan, False
                version = plan.version
                if version == 0 and kind != "seed":
                    # never seeded, or Redis lost it: router nodes holding a snapshot restore it (a write landing
                    # in between would be overwritten by that restore), a router or worker seeds nexus.toml
                    raise StateUnavailable(
                        f"desired config ({kind}): Redis holds no desired state (never seeded, or its data was "
                        "lost); router nodes restore it from their snapshots within seconds, or a starting node "
                        "seeds it from nexus.toml: retry then"
                    )
                # An unseeded store is always written, so that seeding an empty config still marks it seeded.
                if version > 0 and plan.empty:
                    return version, False
                event = orjson.dumps({"version": version + 1, "kind": kind, "at": time.time()})
                pipe.multi()
                for where, names in plan.removed.items():
                    if names:
                        pipe.hdel(where, *names)
                for where, values in plan.upserts.items():
                    if values:
                        pipe.hset(where, mapping=values)
                if plan.routing is not None:
                    pipe.set(keys.CONFIG_ROUTING, plan.routing)
                pipe.incr(keys.CONFIG_VERSION)
                pipe.set(keys.CONFIG_EPOCH, uuid.uuid4().hex, nx=True)  # the first write (a seed) names the epoch
                pipe.publish(keys.EVENTS_CHANNEL, event)
                try:
                    await pipe.execute()
                except redis_exc.WatchError:
                    continue  # another writer committed first: re-read and re-apply on its result
                return version + 1, True
    raise StateError(f"desired config ({kind}): gave up after {MAX_WRITE_ATTEMPTS} conflicting attempts")


async def seed_desired(redis: Redis, desired: DesiredConfig) -> bool:
    """Store `desired` as version 1 unless the store was ever seeded or written. True if it seeded."""
    _, seeded = await _update(redis, "seed", lambda version, _current: desired if version == 0 else None)
    return seeded


async def read_desired(redis: Redis, *, salvage: bool = False) -> tuple[int, DesiredConfig]:
    """The config version and the desired config, read atomically (version 0 when unseeded). A stored config
    that does not validate is a StateError, unless `salvage`: then what of it validates (the workers' loops
    keep probing and rolling up while an operator fixes a bad write)."""
    with guard("reading desired config"):
        reply = await redis.eval(READ_CONFIG, len(CONFIG_KEYS), *CONFIG_KEYS)
    try:
        version, desired, _ = decode_config(reply)
    except StateError:
        if not salvage:
            raise
        version, desired, _, dropped = salvage_config(reply)
        log.warning("desired config version %d does not validate; working without %s", version, ", ".join(dropped))
    return version, desired


async def update_desired(redis: Redis, change: Callable[[DesiredConfig], DesiredConfig | None], kind: str) -> int:
    """Read-modify-write of the whole desired config (e.g. a budget change via `model_copy`), retried on
    conflict; `change` may run more than once, must have no side effects, and returns None to leave the
    config as it is. Returns the resulting version."""
    version, _ = await _update(redis, kind, lambda _version, current: change(current))
    return version


async def write_desired(redis: Redis, desired: DesiredConfig, kind: str) -> int:
    """Replace the whole desired config. Returns the new version."""
    return await update_desired(redis, lambda _current: desired, kind)


def _replace_backend(current: DesiredConfig, name: str, new: BackendConfig | None) -> DesiredConfig | None:
    """`current` with backend `name` replaced by `new`, or removed if `new` is None (then None if absent)."""
    others = [b for b in current.backends if b.name != name]
    if new is None and len(others) == len(current.backends):
        return None
    return current.model_copy(update={"backends": others if new is None else [*others, new]})


async def put_backend(redis: Redis, backend: BackendConfig) -> int:
    """Create or replace the backend named `backend.name`. Returns the new version."""
    return await update_desired(redis, lambda cur: _replace_backend(cur, backend.name, backend), "backend.put")


async def delete_backend(redis: Redis, name: str) -> int | None:
    """Remove backend `name`. Returns the new version, or None when no such backend exists."""
    version, written = await _update(redis, "backend.delete", lambda _v, cur: _replace_backend(cur, name, None))
    return version if written else None


async def put_routing(redis: Redis, routing: RoutingConfig) -> int:
    """Replace the routing section (policies, aliases, fallbacks, weights, budgets). Returns the version."""
    return await update_desired(redis, lambda current: current.model_copy(update={"routing": routing}), "routing.put")


def _event(message: Any) -> ChangeEvent | None:
    if message is None or message.get("type") != "message":
        return None
    try:
        return ChangeEvent.model_validate(orjson.loads(message["data"]))
    except (orjson.JSONDecodeError, ValidationError):
        # Events are only hints to re-read the version (consumers also poll), so a garbled one is
        # dropped rather than allowed to kill the consumer's loop.
        return None


class ChangeSubscription:
    """Parsed change events, subscribed from creation until `aclose` (or the end of `async with`).

    A disconnected subscriber misses events; consumers must also poll `read_desired` as a safety net.
    """

    __slots__ = ("_pubsub",)

    def __init__(self, pubsub: PubSub) -> None:
        self._pubsub = pubsub

    async def get(self, timeout: float | None = None) -> ChangeEvent | None:
        """The next event; None if none arrives within `timeout` seconds (None: wait for ever)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                return None
            with guard("receiving change events"):
                message = await self._pubsub.get_message(ignore_subscribe_messages=True, timeout=remaining)
            if (event := _event(message)) is not None:
                return event

    def __aiter__(self) -> ChangeSubscription:
        return self

    async def __anext__(self) -> ChangeEvent:
        event = await self.get()
        assert event is not None  # get() without a timeout only returns events
        return event

    async def aclose(self) -> None:
        await self._pubsub.aclose()

    async def __aenter__(self) -> ChangeSubscription:
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.aclose()


async def subscribe_changes(redis: Redis, *, timeout: float = 5.0) -> ChangeSubscription:
    """Subscribe to change events; returns once Redis confirmed, so no later write's event is missed."""
    pubsub = redis.pubsub()
    try:
        with guard("subscribing to change events"):
            await pubsub.subscribe(keys.EVENTS_CHANNEL)
            deadline = time.monotonic() + timeout
            while (remaining := deadline - time.monotonic()) > 0:
                message = await pubsub.get_message(timeout=remaining)
                if message is not None and message.get("type") == "subscribe":
                    return ChangeSubscription(pubsub)
        raise StateUnavailable(f"Redis did not confirm the subscription within {timeout} s")
    except BaseException:
        await pubsub.aclose()
        raise
