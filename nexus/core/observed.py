"""Observed state and cluster load in Redis: backend health, quality rollups, budget spend, in-flight gauges.

Readers get the `Observed` view that `build_snapshot` takes. Each observed hash has one writer module
(docs/state.md#keys): health and quality `nexus.worker.store`, budget observations `nexus.core.spend_report`;
router nodes write their in-flight gauges here (`write_inflight`) and their wire facts (`write_wire_fact`).
Also home of the decoding and error-wrapping helpers that `nexus.core.state` shares (`guard`,
`decode_hash`, `load_json`), so the two modules fail identically.

Invariants:
- Values are orjson JSON validated by pydantic on read; a value that does not validate is a `StateError`,
  and Redis connection failures and timeouts are `StateUnavailable` chained from the redis-py error.
- Observed values ignore unknown JSON keys, so a newer worker can add fields during a rolling upgrade.
- Cluster-wide in-flight counts are the sum of per-node gauges, each rewritten whole by its node and
  expiring by Redis TTL; a dead node's counts vanish when its TTL runs out, whatever the clocks say.
- Key strings come from `nexus.core.keys` only.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any, TypeVar

import orjson
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError
from redis import exceptions as redis_exc
from redis.asyncio import Redis

from nexus.core import keys
from nexus.core.config import ModelConfig
from nexus.core.errors import StateError, StateUnavailable
from nexus.core.fleet.lifecycle import decode_marks
from nexus.core.model import HealthState, QualityStats
from nexus.core.snapshot import BudgetObservation, HealthObservation, Observed

__all__ = [
    "HealthRecord",
    "read_health",
    "read_inflight",
    "read_observed",
    "read_wire_facts",
    "write_inflight",
    "write_wire_fact",
]

_QUALITY = TypeAdapter(QualityStats)
_SPEND = TypeAdapter(BudgetObservation)
_T = TypeVar("_T")


class HealthRecord(BaseModel):
    """One backend's health as the health worker stores it, counters included."""

    # extra="ignore": a newer worker may add fields during a rolling upgrade without breaking readers.
    model_config = ConfigDict(extra="ignore", frozen=True)

    state: HealthState
    checked_at: float
    models: list[ModelConfig] = Field(default_factory=list)
    latency_ema_ms: float | None = None
    consecutive_failures: int = Field(default=0, ge=0)
    consecutive_successes: int = Field(default=0, ge=0)
    # when the health worker first probed this backend: a configured warm-up counts from here
    first_seen: float | None = None

    def observation(self) -> HealthObservation:
        return HealthObservation(self.state, self.checked_at, tuple(self.models), self.latency_ema_ms)


# Helpers shared with nexus.core.state (deliberately not in __all__): one error mapping, one decoder.
@contextmanager
def guard(what: str) -> Iterator[None]:
    """Map redis-py failures: unreachable/timeouts -> StateUnavailable, anything else -> StateError."""
    try:
        yield
    except (redis_exc.ConnectionError, redis_exc.TimeoutError, TimeoutError, OSError) as exc:
        raise StateUnavailable(f"Redis unavailable while {what}: {exc}") from exc
    except redis_exc.WatchError as exc:
        # Conflicts are retried where EXEC runs; a WatchError reaching here is redis-py reporting a
        # connection lost while WATCHing.
        raise StateUnavailable(f"Redis unavailable while {what}: {exc}") from exc
    except redis_exc.RedisError as exc:
        raise StateError(f"Redis error while {what}: {exc}") from exc


def as_text(value: bytes | str) -> str:
    # Callers may hand us a client with decode_responses on or off; accept both.
    return value.decode() if isinstance(value, bytes) else value


def decode_hash(reply: Any) -> dict[str, Any]:
    """HGETALL as a dict whether it came back as a dict (client) or a flat list (from Lua)."""
    if isinstance(reply, dict):
        return {as_text(k): v for k, v in reply.items()}
    it = iter(reply)
    return {as_text(k): v for k, v in zip(it, it, strict=True)}


def load_json(raw: bytes | str, where: str, validate: Callable[[Any], _T]) -> _T:
    try:
        return validate(orjson.loads(raw))
    except (orjson.JSONDecodeError, ValidationError) as exc:
        raise StateError(f"malformed value at {where}: {exc}") from exc


def dump_model(value: BaseModel) -> bytes:
    return orjson.dumps(value.model_dump(mode="json"))


async def replace_hash(redis: Redis, key: str, payload: Mapping[str, bytes], what: str) -> None:
    """Replace the whole hash at `key` with `payload` in one transaction (readers never see it half done)."""
    with guard(what):
        async with redis.pipeline(transaction=True) as pipe:
            pipe.delete(key)
            if payload:
                pipe.hset(key, mapping=payload)
            await pipe.execute()


async def read_health(redis: Redis) -> dict[str, HealthRecord]:
    """Every stored health record with its counters (the health worker's own view)."""
    with guard("reading health"):
        reply = await redis.hgetall(keys.OBSERVED_HEALTH)
    return _decode_health(reply)


def _decode_health(reply: Any) -> dict[str, HealthRecord]:
    where = keys.OBSERVED_HEALTH
    return {n: load_json(raw, f"{where}[{n}]", HealthRecord.model_validate) for n, raw in decode_hash(reply).items()}


_WIRE = TypeAdapter(dict[str, float])


async def write_wire_fact(redis: Redis, backend: str, fact: str, now: float | None = None) -> None:
    """Record that router nodes learned `fact` about `backend`'s wire format (e.g. `no_stream_options`)."""
    with guard("writing wire facts"):
        raw = await redis.hget(keys.OBSERVED_WIRE, backend)
        facts = load_json(raw, f"{keys.OBSERVED_WIRE}[{backend}]", _WIRE.validate_python) if raw else {}
        facts[fact] = time.time() if now is None else now
        await redis.hset(keys.OBSERVED_WIRE, backend, orjson.dumps(facts))


async def read_wire_facts(redis: Redis, now: float | None = None) -> dict[str, frozenset[str]]:
    """backend -> the wire facts learned within WIRE_FACT_TTL_SECONDS."""
    with guard("reading wire facts"):
        reply = await redis.hgetall(keys.OBSERVED_WIRE)
    oldest = (time.time() if now is None else now) - keys.WIRE_FACT_TTL_SECONDS
    out = {}
    for backend, raw in decode_hash(reply).items():
        facts = load_json(raw, f"{keys.OBSERVED_WIRE}[{backend}]", _WIRE.validate_python)
        out[backend] = frozenset(f for f, at in facts.items() if at >= oldest)
    return out


async def write_inflight(
    redis: Redis,
    node_id: str,
    counts: Mapping[str, int],
    *,
    ttl_seconds: float = keys.INFLIGHT_TTL_SECONDS,
) -> None:
    """Replace router node `node_id`'s in-flight gauge; it expires unless rewritten within the TTL."""
    gauge = keys.inflight(node_id)
    nonzero = {backend: int(n) for backend, n in counts.items() if n}
    now = time.time()
    with guard("writing in-flight gauge"):
        async with redis.pipeline(transaction=True) as pipe:
            pipe.delete(gauge)
            if nonzero:
                pipe.hset(gauge, mapping=nonzero)
                pipe.pexpire(gauge, max(1, int(ttl_seconds * 1000)))
            pipe.zadd(keys.INFLIGHT_NODES, {node_id: now})
            pipe.zremrangebyscore(keys.INFLIGHT_NODES, "-inf", now - keys.INFLIGHT_REGISTRY_PRUNE_SECONDS)
            await pipe.execute()


async def sum_gauges(redis: Redis, node_reply: Any) -> dict[str, int]:
    # Expired gauges read back empty, so a dead node drops out of the sum when its TTL runs out.
    nodes = [as_text(n) for n in node_reply]
    if not nodes:
        return {}
    async with redis.pipeline(transaction=False) as pipe:
        for node in nodes:
            pipe.hgetall(keys.inflight(node))
        replies = await pipe.execute()
    total: dict[str, int] = {}
    for node, reply in zip(nodes, replies, strict=True):
        for backend, raw in decode_hash(reply).items():
            try:
                total[backend] = total.get(backend, 0) + int(raw)
            except ValueError as exc:
                raise StateError(f"malformed value at {keys.inflight(node)}[{backend}]: {raw!r}") from exc
    return total


async def read_inflight(redis: Redis) -> dict[str, int]:
    """Cluster-wide in-flight requests per backend: the sum of every live node gauge."""
    with guard("reading in-flight gauges"):
        return await sum_gauges(redis, await redis.zrange(keys.INFLIGHT_NODES, 0, -1))


def queue_observed_reads(pipe: Any) -> None:
    pipe.hgetall(keys.OBSERVED_HEALTH)
    pipe.hgetall(keys.OBSERVED_QUALITY)
    pipe.hgetall(keys.OBSERVED_SPEND)
    pipe.zrange(keys.INFLIGHT_NODES, 0, -1)
    pipe.hgetall(keys.OBSERVED_LIFECYCLE)


def decode_observed(
    health: Any, quality: Any, spend: Any, inflight: dict[str, int], lifecycle: Any = None
) -> Observed:
    q_where, s_where = keys.OBSERVED_QUALITY, keys.OBSERVED_SPEND
    return Observed(
        health={n: r.observation() for n, r in _decode_health(health).items()},
        quality={
            n: load_json(raw, f"{q_where}[{n}]", _QUALITY.validate_python) for n, raw in decode_hash(quality).items()
        },
        spend={s: load_json(raw, f"{s_where}[{s}]", _SPEND.validate_python) for s, raw in decode_hash(spend).items()},
        inflight=inflight,
        lifecycle=decode_marks(lifecycle or {}),
    )


async def read_observed(redis: Redis) -> Observed:
    """Health, quality, spend and summed in-flight counts (two round trips)."""
    with guard("reading observed state"):
        async with redis.pipeline(transaction=False) as pipe:
            queue_observed_reads(pipe)
            health, quality, spend, nodes, lifecycle = await pipe.execute()
        inflight = await sum_gauges(redis, nodes)
    return decode_observed(health, quality, spend, inflight, lifecycle)
