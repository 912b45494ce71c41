"""Pure reconcilers of the budget, quality and liveness loops: observed facts in, what to store out.

No I/O and no clock reads: `now` is always an argument. (The health state machine is `nexus.worker.health`.)

- `quality_stats(minutes, now)`: a backend's `QualityStats` from its per-minute counts. The 1 h window
  is the current minute and the 59 before it; the 24 h window the current minute and the 1,439 before.
  `error_rate_1h = errors / requests`, `avg_ttfb_ms_1h` over non-error requests that reported a TTFB,
  `success_rate_24h = 1 - errors / requests`. No request in 24 h means no history: None, and the
  backend's stored figures are removed (the quality reconciler lets backends without history pass).
- `observe_budgets(routing, aggregates, periods, now)`: one `BudgetObservation` per configured budget
  (`global`, then every `routing.key_budgets` scope), spend from the aggregate of the scope's own current
  period (`periods[scope]`: key budgets may have their own reset day), status by
  `BudgetState.status()` (the same code the snapshot uses, so worker and router never disagree).
- `plan_liveness(beats, now)`: which router nodes to mark gone (no heartbeat for
  `keys.NODE_STALE_SECONDS`) and which gone nodes to forget (`keys.NODE_GONE_RETENTION_SECONDS`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from nexus.core import keys
from nexus.core.aggregates import Aggregate, MinuteCounts
from nexus.core.config import GLOBAL_SCOPE, BudgetConfig, DesiredConfig, RoutingConfig
from nexus.core.model import BudgetState, QualityStats
from nexus.core.snapshot import BudgetObservation
from nexus.core.telemetry_store import NodeHeartbeat

__all__ = ["LivenessPlan", "observe_budgets", "plan_liveness", "quality_stats"]

_HOUR_MINUTES = 60
_DAY_MINUTES = 24 * 60


def quality_stats(minutes: Mapping[float, MinuteCounts], now: float) -> QualityStats | None:
    current = now - now % 60
    hour_from = current - (_HOUR_MINUTES - 1) * 60
    day_from = current - (_DAY_MINUTES - 1) * 60
    req_1h = err_1h = ttfb_us = ttfb_n = req_24h = err_24h = 0
    for start, c in minutes.items():
        if start < day_from:
            continue
        req_24h += c.requests
        err_24h += c.errors
        if start >= hour_from:
            req_1h += c.requests
            err_1h += c.errors
            ttfb_us += c.ttfb_us
            ttfb_n += c.ttfb_count
    if req_24h == 0:
        return None
    return QualityStats(
        error_rate_1h=err_1h / req_1h if req_1h else 0.0,
        avg_ttfb_ms_1h=ttfb_us / ttfb_n / 1000.0 if ttfb_n else 0.0,
        success_rate_24h=1.0 - err_24h / req_24h,
        requests_1h=req_1h,
        requests_24h=req_24h,
    )


def _observation(scope: str, cfg: BudgetConfig, spend: float, period: str, now: float) -> BudgetObservation:
    state = BudgetState(
        scope=scope,
        monthly_limit_usd=cfg.monthly_limit_usd,
        soft_limit_fraction=cfg.soft_limit_percent,
        hard_limit_action=cfg.hard_limit_action,
        spend_usd=spend,
        period=period,
    )
    return BudgetObservation(
        spend_usd=spend,
        period=period,
        status=state.status(),
        limit_usd=cfg.monthly_limit_usd,
        soft_limit_fraction=cfg.soft_limit_percent,
        utilization=state.utilization(),
        checked_at=now,
    )


def observe_budgets(
    routing: RoutingConfig | DesiredConfig,
    aggregates: Mapping[str, Aggregate],
    periods: Mapping[str, str],
    now: float,
    unreconciled: Mapping[str, Mapping[str, float]] | None = None,
) -> dict[str, BudgetObservation]:
    """`periods[scope]` names each budget's current period, `aggregates[period]` that period's aggregate and
    `unreconciled[period][scope]` spend no record carries (what dead nodes admitted and never recorded, what
    nodes put back after a Redis data loss): counted too, so budgets never under-count."""
    out = {}
    for scope, cfg in routing.budgets().items():
        period = periods[scope]
        spend = aggregates.get(period, Aggregate()).scope_usd(scope, GLOBAL_SCOPE)
        spend += (unreconciled or {}).get(period, {}).get(scope, 0.0)
        out[scope] = _observation(scope, cfg, spend, period, now)
    return out


@dataclass(frozen=True, slots=True)
class LivenessPlan:
    mark_gone: tuple[NodeHeartbeat, ...] = ()  # stale and not yet marked: write back with gone=True
    forget: tuple[NodeHeartbeat, ...] = ()  # gone for longer than the retention: remove


def plan_liveness(
    beats: Mapping[str, NodeHeartbeat],
    now: float,
    *,
    stale_after: float = keys.NODE_STALE_SECONDS,
    retention: float = keys.NODE_GONE_RETENTION_SECONDS,
) -> LivenessPlan:
    mark, forget = [], []
    for node in sorted(beats):
        beat = beats[node]
        age = now - beat.at
        if age > retention:
            forget.append(beat)
        elif age > stale_after and not beat.gone:
            mark.append(beat)
    return LivenessPlan(tuple(mark), tuple(forget))
