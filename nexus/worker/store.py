"""The worker's own Redis writes: tick claims, compare-and-set health and heartbeats, quality replacement.

Every write here is safe to repeat and safe against a concurrent writer:
- `claim_tick` counts how many times a cron job body ran for one scheduled tick (HINCRBY) and returns
  the count; only the run that gets 1 does the tick's work, so a duplicate delivery (arq's uniqueness is
  the first line of defence) is counted and refused instead of done twice.
- Health records and heartbeats are written by compare-and-set against the raw value read before the
  decision (one Lua script per hash): if another worker, or a router node's fresh heartbeat, changed the
  value meanwhile, that entry is left alone and the next tick decides again from what is there.
- `replace_quality` rewrites the whole quality hash in one MULTI (level-based: what the telemetry says now).

Key strings come from `nexus.core.keys`; each script or MULTI touches one hash-tag unit.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from typing import Any

import orjson
from pydantic import ValidationError
from redis.asyncio import Redis

from nexus.core import keys
from nexus.core.model import QualityStats
from nexus.core.observed import HealthRecord, as_text, decode_hash, dump_model, guard, replace_hash
from nexus.core.periods import day_of
from nexus.core.telemetry_store import NodeHeartbeat

__all__ = [
    "Change",
    "claim_tick",
    "compare_and_set",
    "health_change",
    "mark_nodes_gone",
    "read_health_raw",
    "read_heartbeats_raw",
    "replace_quality",
]

log = logging.getLogger("nexus.worker")

# KEYS[1]: a hash. ARGV: triples (field, expected raw value or '' for absent, new value or '' to delete).
_CAS = """
local done = {}
for i = 1, #ARGV, 3 do
  if (redis.call('HGET', KEYS[1], ARGV[i]) or '') == ARGV[i + 1] then
    if ARGV[i + 2] == '' then
      redis.call('HDEL', KEYS[1], ARGV[i])
    else
      redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 2])
    end
    done[#done + 1] = ARGV[i]
  end
end
return done
"""

# (field, the raw value the decision was based on or None, the new raw value or None to delete)
Change = tuple[str, bytes | None, bytes | None]


async def claim_tick(redis: Redis, job: str, tick_ms: int) -> int:
    """Count one run of `job` for `tick_ms`; returns the count (1 means: this run does the work)."""
    key = keys.worker_ticks(job, day_of(tick_ms / 1000.0))
    with guard("claiming a worker tick"):
        async with redis.pipeline(transaction=True) as pipe:
            pipe.hincrby(key, str(tick_ms), 1)
            pipe.expire(key, keys.WORKER_TICKS_TTL_SECONDS)
            count, _ = await pipe.execute()
    return int(count)


async def compare_and_set(redis: Redis, key: str, changes: Sequence[Change]) -> list[str]:
    """Apply each change whose field still holds its expected value; returns the fields changed."""
    if not changes:
        return []
    argv: list[bytes | str] = []
    for field, expected, new in changes:
        argv += [field, expected or b"", new or b""]
    with guard("writing worker state"):
        done = await redis.eval(_CAS, 1, key, *argv)
    return [as_text(f) for f in done]


def _raw_models(reply: Any, where: str, model: Any) -> dict[str, tuple[bytes, Any]]:
    out = {}
    for name, raw in decode_hash(reply).items():
        raw_b = raw.encode() if isinstance(raw, str) else raw
        try:
            out[name] = (raw_b, model.model_validate_json(raw_b))
        except ValidationError:
            log.warning("malformed value at %s[%s]; it will be replaced", where, name)
            out[name] = (raw_b, None)
    return out


async def read_health_raw(redis: Redis) -> dict[str, tuple[bytes, HealthRecord | None]]:
    """Backend -> (raw stored value, its record or None when malformed)."""
    with guard("reading health"):
        reply = await redis.hgetall(keys.OBSERVED_HEALTH)
    return _raw_models(reply, keys.OBSERVED_HEALTH, HealthRecord)


async def read_heartbeats_raw(redis: Redis) -> dict[str, tuple[bytes, NodeHeartbeat | None]]:
    with guard("reading heartbeats"):
        reply = await redis.hgetall(keys.NODES_HEARTBEATS)
    return _raw_models(reply, keys.NODES_HEARTBEATS, NodeHeartbeat)


def health_change(name: str, expected: bytes | None, record: HealthRecord | None) -> Change:
    return name, expected, None if record is None else dump_model(record)


async def replace_quality(redis: Redis, stats: Mapping[str, QualityStats]) -> None:
    payload = {name: orjson.dumps(asdict(s)) for name, s in stats.items()}
    await replace_hash(redis, keys.OBSERVED_QUALITY, payload, "writing quality")


def _keyable(node: str) -> bool:
    try:
        keys.inflight(node)
    except ValueError:  # an id no gauge key can have, so there is no gauge to drop
        return False
    return True


async def mark_nodes_gone(
    redis: Redis, gone: Sequence[tuple[NodeHeartbeat, bytes]], forget: Sequence[tuple[NodeHeartbeat, bytes]]
) -> tuple[list[str], list[str]]:
    """Mark stale nodes gone and drop their in-flight gauges; remove long-gone nodes. Each heartbeat is
    changed only if it is still the stale value read (a node that came back keeps its fresh beat).
    Returns (nodes marked, nodes removed)."""
    changes: list[Change] = [(b.node, raw, dump_model(b.model_copy(update={"gone": True}))) for b, raw in gone]
    changes += [(b.node, raw, None) for b, raw in forget]
    done = set(await compare_and_set(redis, keys.NODES_HEARTBEATS, changes))
    marked = [b.node for b, _ in gone if b.node in done]
    removed = [b.node for b, _ in forget if b.node in done]
    dropped = [node for node in marked + removed if _keyable(node)]
    if dropped:
        # Another unit ({load}), so another call: if this worker dies in between, the gauges expire by
        # their own TTL (keys.INFLIGHT_TTL_SECONDS) anyway; this only makes cluster load recover at once.
        with guard("dropping in-flight gauges of gone nodes"):
            async with redis.pipeline(transaction=True) as pipe:
                for node in dropped:
                    pipe.delete(keys.inflight(node))
                pipe.zrem(keys.INFLIGHT_NODES, *dropped)
                await pipe.execute()
    return marked, removed
