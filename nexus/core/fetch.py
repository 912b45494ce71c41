"""Reading the config unit and what a router node routes by, and turning it into a snapshot off the event loop.

`fetch_state` is the I/O: one pipeline reading the config unit (skipped, but for its version and epoch, when
the version is the one the caller already holds), observed state and the in-flight gauges. `build_state` is
the CPU part (decoding and validating the config, building the `Snapshot`): router nodes run it in a worker
thread (`asyncio.to_thread`), so even a config at the size limits (`nexus.core.config.LIMITS`) never stalls
requests on the event loop, and reuse the decoded config while its version does not change, so a poll that
finds only new health or spend costs a fraction of a full rebuild (`bench/snapshot.py` measures both).

`decode_config` turns the stored config unit into a `DesiredConfig` through `validate_desired`, the check
every write passed; `nexus.core.state` uses it for its read-modify-write too, so a value is judged
identically wherever it is read or written.

Invariants:
- The config unit is read atomically (one script over `{config}` keys): version, epoch, backends and
  routing always belong together.
- `build_state` raises `StateError` for a value in Redis that does not validate, and `SnapshotBuildError`
  for a config that validates but cannot be built; either way nothing is half-applied.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson
from pydantic import ValidationError
from redis.asyncio import Redis

from nexus.core import keys
from nexus.core.config import (
    BackendConfig,
    DesiredConfig,
    NexusSettings,
    PolicyConfig,
    RoutingConfig,
    validate_desired,
)
from nexus.core.errors import ConfigError, SnapshotBuildError, StateError
from nexus.core.observed import (
    as_text,
    decode_hash,
    decode_observed,
    guard,
    queue_observed_reads,
    sum_gauges,
)
from nexus.core.secrets import legacy_backend
from nexus.core.snapshot import Observed, Snapshot, SnapshotCache, build_snapshot
from nexus.core.tenancy import KeyConfig, TeamConfig

__all__ = [
    "CONFIG_KEYS",
    "READ_CONFIG",
    "StoreState",
    "build_state",
    "decode_config",
    "decode_version",
    "fetch_state",
    "load_snapshot",
    "salvage_config",
]

# GET/HGETALL/GET/HGETALL/HGETALL in one script: atomic without MULTI, so it can share a pipeline with observed
# reads (other hash tags) and still keep one round trip. All the keys are in the {config} slot.
READ_CONFIG = (
    "return {redis.call('GET', KEYS[1]), redis.call('HGETALL', KEYS[2]), redis.call('GET', KEYS[3]), "
    "redis.call('HGETALL', KEYS[4]), redis.call('HGETALL', KEYS[5])}"
)
CONFIG_KEYS = (keys.CONFIG_VERSION, keys.CONFIG_BACKENDS, keys.CONFIG_ROUTING, keys.CONFIG_KEYS, keys.CONFIG_TEAMS)

# KEYS: version, backends, routing, keys, teams, epoch. ARGV: the version and epoch the caller holds ("" for
# none). The config parts come back as false (None) when both are those: the caller's decoded copy is current.
_READ_STATE = """
local v = redis.call('GET', KEYS[1])
local epoch = redis.call('GET', KEYS[6])
if v and v == ARGV[1] and (epoch or '') == ARGV[2] then return {v, false, false, epoch, 1, false, false} end
return {v, redis.call('HGETALL', KEYS[2]), redis.call('GET', KEYS[3]), epoch, 0, redis.call('HGETALL', KEYS[4]),
        redis.call('HGETALL', KEYS[5])}
"""
_KEYS = (*CONFIG_KEYS, keys.CONFIG_EPOCH)


def decode_version(raw: Any) -> int:
    try:
        return int(raw) if raw is not None else 0
    except ValueError as exc:
        raise StateError(f"malformed value at {keys.CONFIG_VERSION}: {raw!r}") from exc


def _json(raw: Any, where: str) -> Any:
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise StateError(f"malformed value at {where}: {exc}") from exc


def _named(flat: Any, where: str, field: str) -> list[Any]:
    """The values of a stored hash of named entries (keys, teams), sorted by name, each naming itself."""
    out = []
    for name, raw in sorted(decode_hash(flat or []).items()):
        data = _json(raw, f"{where}[{name}]")
        if not isinstance(data, dict) or data.get(field) != name:
            raise StateError(f"malformed value at {where}[{name}]: it does not hold {name!r}")
        out.append(data)
    return out


def decode_config(reply: Any) -> tuple[int, DesiredConfig, bool]:
    """(version, desired config, whether routing is stored) of a READ_CONFIG reply. The whole config goes
    through `validate_desired`, as every write did: StateError naming the value when it does not pass."""
    raw_version, flat_backends, raw_routing, flat_keys, flat_teams = reply
    version = decode_version(raw_version)
    backends = []
    # sorted by name: a hash has no order, and readers must see the same config for the same version
    for name, raw in sorted(decode_hash(flat_backends).items()):
        where = f"{keys.CONFIG_BACKENDS}[{name}]"
        # legacy_backend: desired state of older releases named a variable (api_key_env) instead of a secret
        data = legacy_backend(_json(raw, where))
        if not isinstance(data, dict) or data.get("name") != name:
            raise StateError(f"malformed value at {where}: it does not hold backend {name!r}")
        backends.append(data)
    routing = {} if raw_routing is None else _json(raw_routing, keys.CONFIG_ROUTING)
    data = {
        "backends": backends,
        "routing": routing,
        "keys": _named(flat_keys, keys.CONFIG_KEYS, "id"),
        "teams": _named(flat_teams, keys.CONFIG_TEAMS, "name"),
    }
    try:
        desired = validate_desired(data, f"config version {version} in Redis")
    except ConfigError as exc:
        raise StateError(str(exc)) from exc
    return version, desired, raw_routing is not None


def _salvage_routing(data: Any, dropped: list[str]) -> RoutingConfig:
    if not isinstance(data, dict):
        dropped.append("routing")
        return RoutingConfig()
    kept: dict[str, Any] = {}
    for key, value in data.items():
        if key == "policies" and isinstance(value, list):
            good = []
            for i, p in enumerate(value):
                try:
                    good.append(PolicyConfig.model_validate(p))
                except ValidationError:
                    dropped.append(f"routing.policies[{i}]")
            value = good
        try:
            RoutingConfig.model_validate({**kept, key: value})
        except ValidationError:
            dropped.append(f"routing.{key}")
            continue
        kept[key] = value
    return RoutingConfig.model_validate(kept)


def salvage_config(reply: Any) -> tuple[int, DesiredConfig, bool, list[str]]:
    """`decode_config` for a write over a stored config that does not validate: what of it still does,
    plus the names of what was left out, so an operator can still write the fix."""
    raw_version, flat_backends, raw_routing, flat_keys, flat_teams = reply
    version = decode_version(raw_version)
    dropped: list[str] = []
    backends = []
    for name, raw in sorted(decode_hash(flat_backends).items()):
        try:
            backend = BackendConfig.model_validate(legacy_backend(_json(raw, name)))
        except (StateError, ValidationError, ValueError):
            dropped.append(f"backend {name!r}")
            continue
        if backend.name == name:
            backends.append(backend)
        else:
            dropped.append(f"backend {name!r}")
    routing = RoutingConfig() if raw_routing is None else _salvage_routing(_safe_json(raw_routing), dropped)
    teams = _salvage_named(flat_teams, TeamConfig, "name", dropped, "team")
    names = {t.name for t in teams}
    tenant_keys = [
        k for k in _salvage_named(flat_keys, KeyConfig, "id", dropped, "key")
        if k.team is None or k.team in names or dropped.append(f"key {k.id!r}")
    ]
    try:
        desired = DesiredConfig(backends=backends, routing=routing, keys=tenant_keys, teams=teams)
    except ValidationError as exc:
        raise StateError(f"config version {version} in Redis cannot be salvaged: {exc}") from exc
    return version, desired, raw_routing is not None, dropped


def _salvage_named(flat: Any, model: Any, field: str, dropped: list[str], what: str) -> list[Any]:
    out = []
    for name, raw in sorted(decode_hash(flat or []).items()):
        try:
            entry = model.model_validate(_safe_json(raw))
        except ValidationError:
            dropped.append(f"{what} {name!r}")
            continue
        if getattr(entry, field) == name:
            out.append(entry)
        else:
            dropped.append(f"{what} {name!r}")
    return out


def _safe_json(raw: Any) -> Any:
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None


@dataclass(frozen=True, slots=True)
class StoreState:
    """One read of the shared state, not decoded yet (decoding is CPU work: `build_state`)."""

    version: int
    epoch: str | None
    unchanged: bool  # the config's version is the one the caller holds: `config` was not read
    config: tuple[Any, Any, Any, Any] | None  # (raw backends hash, raw routing, keys hash, teams hash) when read
    observed: Observed


async def fetch_state(redis: Redis, held_version: int | None = None, held_epoch: str | None = None) -> StoreState:
    """Config (unless version and epoch are the held ones), epoch and observed state, in two round trips."""
    held = ("" if held_version is None else str(held_version), held_epoch or "")
    with guard("loading snapshot"):
        async with redis.pipeline(transaction=False) as pipe:
            pipe.eval(_READ_STATE, len(_KEYS), *_KEYS, *held)
            queue_observed_reads(pipe)
            config, health, quality, spend, nodes, lifecycle = await pipe.execute()
        inflight = await sum_gauges(redis, nodes)
    raw_version, raw_backends, raw_routing, raw_epoch, same, raw_keys, raw_teams = config
    return StoreState(
        version=decode_version(raw_version),
        epoch=None if raw_epoch is None else as_text(raw_epoch),
        unchanged=bool(int(same)),
        config=None if int(same) else (raw_backends or [], raw_routing, raw_keys or [], raw_teams or []),
        observed=decode_observed(health, quality, spend, inflight, lifecycle),
    )


def decode_desired(state: StoreState) -> DesiredConfig:
    """The desired config of a read that has one (StateError when a stored value does not validate)."""
    if state.config is None:
        raise StateError("the config was not read (its version is the one already held)")
    return decode_config((str(state.version), *state.config))[1]


def build_state(
    state: StoreState, cache: SnapshotCache | None, settings: NexusSettings, now: float
) -> tuple[SnapshotCache, Snapshot]:
    """Decode (or, when unchanged, reuse the config `cache` was built from) and build. Pure CPU, run in a
    worker thread; the returned cache (its `desired` is the config) goes into the next call."""
    if not (state.unchanged and cache is not None):
        cache = None
    try:
        if cache is None:
            cache = SnapshotCache(decode_desired(state))
        snap = build_snapshot(
            cache.desired,
            state.observed,
            version=state.version,
            now=now,
            health=settings.health_check,
            quality=settings.quality,
            testing=settings.testing,
            cache=cache,
            missing_keys=settings.missing_keys,
        )
    except StateError:
        raise
    except Exception as exc:  # a config that validated but cannot be built must never take the node down
        raise SnapshotBuildError(f"config version {state.version} cannot be built: {exc}") from exc
    return cache, snap


async def load_snapshot(redis: Redis, settings: NexusSettings, now: float) -> Snapshot:
    """Read and build in one go (admin views, tests); router nodes use fetch_state + build_state in a thread."""
    state = await fetch_state(redis)
    return build_state(state, None, settings, now)[1]
