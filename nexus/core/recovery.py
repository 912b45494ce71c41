"""Telling a Redis that lost its data from one that changed, and restoring what the fleet still holds.

Every desired-state write sets `{config}:epoch` (a random id) if it is missing, so a store that was seeded
has one, and one that comes back empty (restarted without its AOF, flushed, a replica promoted from
nothing) has none until someone writes again. Router nodes remember the epoch and config version of their
last good snapshot, and `judge` compares them with what Redis holds now:

    store unseeded (version 0)                  -> LOST   (everything is gone)
    same epoch, version lower than held         -> LOST   (versions never go backwards: writes were lost,
                                                           e.g. a failover to a replica that lagged)
    other epoch, version lower than held        -> LOST   (reset, then re-seeded from nexus.toml)
    other epoch, version held or later          -> ADOPT  (a peer restored it: take its epoch)
    otherwise                                   -> OK

On LOST a node keeps routing on its snapshot and restores: `restore_desired` writes the node's desired
config at the node's version, atomically, only while the store holds a lower version (or none), so
among several nodes the freshest wins and nobody goes backwards; and `restore_spend` puts the node's last
known live spend of each budget scope back (added once per period, however many nodes restore, see the
script), marking the period as restored (the admin spend report then says it is incomplete: what Redis
lost between the node's last read and the loss is gone). A node that never loaded a snapshot has nothing
to restore: it seeds from nexus.toml as usual, and a node holding a fresher snapshot overwrites that.

Admin writes to an unseeded store are refused (`nexus.core.state`), so a write can never land in the gap
and then be overwritten by a restore.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Mapping
from enum import StrEnum

import orjson
from redis import exceptions as redis_exc
from redis.asyncio import Redis

from nexus.core import keys
from nexus.core.config import DesiredConfig
from nexus.core.observed import as_text, decode_hash, guard

__all__ = ["Verdict", "judge", "new_epoch", "read_restored", "restore_desired", "restore_spend"]


class Verdict(StrEnum):
    OK = "ok"
    ADOPT = "adopt"  # another epoch at the held version or later: a peer's restore (or a fresher lineage)
    LOST = "lost"


def new_epoch() -> str:
    return uuid.uuid4().hex


def judge(store_version: int, store_epoch: str | None, held_version: int | None, held_epoch: str | None) -> Verdict:
    """Whether the state Redis holds may replace a node's snapshot (see the module docstring)."""
    if held_version is None or held_version == 0:
        return Verdict.OK  # nothing held: whatever Redis has (a fresh node seeds an empty store itself)
    if store_version == 0 or store_version < held_version:
        return Verdict.LOST
    if held_epoch is not None and store_epoch != held_epoch:
        return Verdict.ADOPT
    return Verdict.OK


# KEYS: version, backends, routing, epoch, keys, teams. ARGV: version to restore, routing JSON, new epoch, event,
# then triples (hash index among KEYS, entry name, JSON). Writes only while the stored version is lower (or
# absent); keeps an existing epoch (the store was re-seeded: nodes that adopted it stay on it). Returns 1 if it
# wrote.
_RESTORE = """
local current = tonumber(redis.call('GET', KEYS[1]) or '0')
local mine = tonumber(ARGV[1])
if current >= mine then return 0 end
redis.call('DEL', KEYS[2], KEYS[5], KEYS[6])
for i = 5, #ARGV, 3 do redis.call('HSET', KEYS[tonumber(ARGV[i])], ARGV[i + 1], ARGV[i + 2]) end
redis.call('SET', KEYS[3], ARGV[2])
redis.call('SET', KEYS[1], ARGV[1])
redis.call('SET', KEYS[4], ARGV[3], 'NX')
redis.call('PUBLISH', '""" + keys.EVENTS_CHANNEL + """', ARGV[4])
return 1
"""


async def restore_desired(redis: Redis, desired: DesiredConfig, version: int) -> bool:
    """Put `desired` back at `version` unless Redis already holds that version or a later one. True if written."""
    argv: list[str | bytes | int] = [
        version,
        orjson.dumps(desired.routing.model_dump(mode="json")),
        new_epoch(),
        orjson.dumps({"version": version, "kind": "restore", "at": time.time()}),
    ]
    for b in desired.backends:
        argv += [2, b.name, orjson.dumps(b.model_dump(mode="json"))]
    for k in desired.keys:
        argv += [5, k.id, orjson.dumps(k.model_dump(mode="json"))]
    for t in desired.teams:
        argv += [6, t.name, orjson.dumps(t.model_dump(mode="json"))]
    config_keys = (
        keys.CONFIG_VERSION, keys.CONFIG_BACKENDS, keys.CONFIG_ROUTING, keys.CONFIG_EPOCH, keys.CONFIG_KEYS,
        keys.CONFIG_TEAMS,
    )
    with guard("restoring desired config"):
        try:
            return bool(await redis.eval(_RESTORE, len(config_keys), *config_keys, *argv))
        except redis_exc.ResponseError as exc:  # e.g. the store is read-only right now: retried next poll
            raise ConnectionError(str(exc)) from exc


# KEYS: live spend hash, restored hash of one period. ARGV: ttl, now, then pairs (scope, floor USD). A floor is
# what a node last read as the period's live spend. The first restore of a scope happens only when the live
# spend is below its floor (it was lost: a store that kept its spend is never raised); it adds the floor on
# top of what was recorded since the loss. Later restores (other nodes, with fresher reads) add only what
# their floor exceeds the largest one applied: the period gets the largest floor, once. Returns the scopes
# raised.
_RESTORE_SPEND = """
local out = {}
for i = 3, #ARGV, 2 do
  local scope, floor = ARGV[i], tonumber(ARGV[i + 1])
  local cur = tonumber(redis.call('HGET', KEYS[1], scope) or '0')
  local applied = tonumber(redis.call('HGET', KEYS[2], scope) or '0')
  if floor > applied + 1e-9 and (applied > 0 or cur + 1e-9 < floor) then
    redis.call('HINCRBYFLOAT', KEYS[1], scope, tostring(floor - applied))
    redis.call('HSET', KEYS[2], scope, ARGV[i + 1])
    redis.call('HSETNX', KEYS[2], '_at', ARGV[2])
    redis.call('EXPIRE', KEYS[1], ARGV[1])
    redis.call('EXPIRE', KEYS[2], ARGV[1])
    out[#out + 1] = scope
  end
end
return out
"""


async def restore_spend(redis: Redis, floors: Mapping[tuple[str, str], float]) -> list[tuple[str, str]]:
    """Put back (scope, period) -> last known live spend where Redis now holds less; returns what was raised."""
    by_period: dict[str, list[str | int]] = {}
    for (scope, period), usd in floors.items():
        if usd > 0:
            by_period.setdefault(period, []).extend((scope, repr(float(usd))))
    raised: list[tuple[str, str]] = []
    with guard("restoring live spend"):
        for period, pairs in sorted(by_period.items()):
            reply = await redis.eval(
                _RESTORE_SPEND, 2, keys.telemetry_spend(period), keys.telemetry_restored(period),
                int(keys.TELEMETRY_SPEND_TTL_SECONDS), repr(time.time()), *pairs,
            )
            raised += [(as_text(s), period) for s in reply]
    return raised


async def read_restored(redis: Redis, period: str) -> tuple[float | None, dict[str, float]]:
    """(when `period`'s spend was restored after a data loss, or None; scope -> USD put back)."""
    with guard("reading restored spend"):
        reply = decode_hash(await redis.hgetall(keys.telemetry_restored(period)))
    at = reply.pop("_at", None)
    return (float(at) if at is not None else None), {s: float(v) for s, v in reply.items()}
