"""Budget observations and the per-period spend report.

The budget worker writes one `BudgetObservation` (`nexus.core.snapshot`) per configured budget scope
(`global` and every key budget) into `{observed}:spend`, through `write_budget_observations`, the only
writer of that hash: the spend and its period, which snapshots read, plus the status the worker computed
and what it was computed from.

`read_spend_report` is what the admin API serves for a period: the aggregate with its
breakdowns by backend, model and API key, the router nodes' live counter, and the budget observations
when they belong to that period. Old periods keep their aggregate (`keys.TELEMETRY_AGG_TTL_SECONDS`),
so their report stays available after the rollover.

Invariants:
- `write_budget_observations` replaces the whole hash in one MULTI, so readers never see scopes of two
  ticks mixed, and a budget removed from the config stops being reported.
- Key strings come from `nexus.core.keys` only.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict
from typing import Any

import orjson
from pydantic import TypeAdapter, ValidationError
from redis.asyncio import Redis

from nexus.core import keys
from nexus.core.aggregate_store import read_aggregate
from nexus.core.observed import decode_hash, guard, replace_hash
from nexus.core.recovery import read_restored
from nexus.core.snapshot import BudgetObservation

__all__ = ["read_spend_report", "write_budget_observations"]


_OBSERVATION = TypeAdapter(BudgetObservation)


async def write_budget_observations(redis: Redis, observations: Mapping[str, BudgetObservation]) -> None:
    payload = {scope: orjson.dumps(asdict(obs)) for scope, obs in observations.items()}
    await replace_hash(redis, keys.OBSERVED_SPEND, payload, "writing budget observations")


def _decode(reply: Any) -> dict[str, BudgetObservation]:
    out = {}
    for scope, raw in decode_hash(reply).items():
        try:
            out[scope] = _OBSERVATION.validate_python(orjson.loads(raw))
        except (orjson.JSONDecodeError, ValidationError):
            continue  # a value of an older release: the next budget tick replaces it
    return out


def _floats(reply: Any) -> dict[str, float]:
    out = {}
    for scope, raw in decode_hash(reply).items():
        try:
            out[scope] = float(raw)
        except ValueError:
            continue
    return out


async def read_spend_report(redis: Redis, period: str) -> dict[str, Any]:
    """The spend report of budget period `period` (e.g. `2026-11`) as plain JSON-ready data:

    `total_usd`, `requests`, `errors`, `failed_attempts`, token counts, `by_backend` / `by_model` /
    `by_key` / `by_team` (each name -> the same figures with `usd`), `live_spend` (scope -> USD, the router nodes'
    counter), `unreconciled_usd` (scope -> USD charged for what
    dead router nodes admitted and never recorded) and `budgets` (scope -> observation, only when
    the budget worker's last observation is of this period)."""
    agg = await read_aggregate(redis, period)
    with guard("reading spend report"):
        async with redis.pipeline(transaction=False) as pipe:
            pipe.hgetall(keys.telemetry_spend(period))
            pipe.hgetall(keys.OBSERVED_SPEND)
            pipe.hgetall(keys.telemetry_unreconciled(period))
            live_raw, observed_raw, unreconciled_raw = await pipe.execute()
    live, unreconciled = _floats(live_raw), _floats(unreconciled_raw)
    restored_at, restored = await read_restored(redis, period)
    budgets = {scope: asdict(obs) for scope, obs in sorted(_decode(observed_raw).items()) if obs.period == period}
    total = agg.total
    return {
        "period": period,
        "total_usd": total.usd,
        "requests": total.requests,
        "errors": total.errors,
        "failed_attempts": total.failed_attempts,
        "prompt_tokens": total.prompt_tokens,
        "completion_tokens": total.completion_tokens,
        "by_backend": {name: t.as_dict() for name, t in agg.by_backend.items()},
        "by_model": {name: t.as_dict() for name, t in agg.by_model.items()},
        "by_key": {name: t.as_dict() for name, t in agg.by_key.items() if not name.startswith("team:")},
        # a team counts every record of its keys (nexus.core.tenancy), in the team budget's own period
        "by_team": {name[5:]: t.as_dict() for name, t in agg.by_key.items() if name.startswith("team:")},
        "live_spend": dict(sorted(live.items())),
        # charged for requests dead router nodes admitted and never recorded: counted in the budgets' spend
        # (and in live_spend), never in total_usd, which only sums the records
        "unreconciled_usd": dict(sorted(unreconciled.items())),
        # Redis lost this period's data once: the live spend was put back from the router nodes' counters
        # (restored_usd), but records and aggregates of before the loss are gone, so breakdowns are incomplete
        "incomplete": restored_at is not None,
        "restored_at": restored_at,
        "restored_usd": dict(sorted(restored.items())),
        "budgets": {scope: {**b, "status": str(b["status"])} for scope, b in budgets.items()},
    }
