"""SchedulerReconciler: order the surviving candidates and pick one, or decide to queue.

Smart scoring: the snapshot's static score (priority, latency EMA, 1h error rate) halved for backends
marked slow by the QualityReconciler, plus `weights.load` x the free share of the backend's
`max_concurrency` given cluster-wide in-flight counts. Higher is better; ties break by name. Other
strategies: `priority_only` (lowest priority number, then name), `round_robin` (rotation by the
injected request sequence), `random` (the injected `random.Random`). At SoftLimit every strategy puts
local backends first; backends the node just saw fail (demoted) go last. With flexible tiers,
candidates below the policy's tier are dropped when any candidate meets it; otherwise the request routes
lower with a warning.

Queue when every candidate is at capacity, or when the best one is loading its model. Backends at
capacity stay at the end of the order, as failover alternatives of last resort.
"""

from __future__ import annotations

import random

from nexus.core.model import Backend, BudgetStatus, HealthState, Strategy, TierMode
from nexus.core.pipeline.intent import RoutingIntent
from nexus.core.snapshot import Snapshot

__all__ = ["NAME", "SLOW_PENALTY", "reconcile"]

NAME = "SchedulerReconciler"
SLOW_PENALTY = 0.5


def _settle_flexible_tier(intent: RoutingIntent) -> bool:
    """True when no candidate meets the tier and the request routes lower (the caller warns, once it has
    picked the backend, so the warning names the tier actually routed to)."""
    tier = intent.min_tier
    if tier is None or intent.tier_mode is not TierMode.FLEXIBLE:
        return False
    low = [b for b in intent.candidates if b.tier < tier]
    if not low:
        return False
    if len(low) < len(intent.candidates):
        intent.exclude(
            low,
            NAME,
            f"backend tier below {tier}; flexible tiers allow it only when no tier-{tier} backend is available",
            f"none needed: a tier >= {tier} backend serves this request",
        )
        return False
    return True


def _smart(intent: RoutingIntent, snapshot: Snapshot, free: list[Backend], used: list[int]) -> list[Backend]:
    static = snapshot.static_scores
    w_load = snapshot.weights.load
    slow = intent.slow
    scores = intent.scores
    keyed = []
    for b, n in zip(free, used, strict=True):
        name = b.name
        s = static[name]
        if slow and name in slow:
            s *= SLOW_PENALTY
        s += w_load * (1.0 - n / b.max_concurrency)
        scores[name] = s
        keyed.append((-s, name, b))
    keyed.sort()  # names are unique, so the Backend itself is never compared
    return [k[2] for k in keyed]


def reconcile(intent: RoutingIntent, snapshot: Snapshot) -> None:
    if not intent.candidates:
        return
    downgrade = _settle_flexible_tier(intent)
    load = intent.load if intent.load is not None else snapshot.inflight
    get = load.get
    free: list[Backend] = []
    used: list[int] = []
    busy: list[Backend] = []
    for b in intent.candidates:
        n = get(b.name, 0)
        if n < b.max_concurrency:
            free.append(b)
            used.append(n)
        else:
            busy.append(b)
    if not free:
        intent.ordered = busy
        intent.queue_reason = "every candidate backend is at max_concurrency"
        return
    strategy = snapshot.strategy
    if strategy is Strategy.SMART:
        ordered = _smart(intent, snapshot, free, used)
        reason = "only_candidate" if len(free) == 1 else "highest_score"
    elif strategy is Strategy.PRIORITY_ONLY:
        ordered, reason = sorted(free, key=lambda b: (b.priority, b.name)), "priority"
    elif strategy is Strategy.ROUND_ROBIN:
        k = intent.sequence % len(free)
        ordered, reason = free[k:] + free[:k], "round_robin"
    else:
        ordered = list(free)
        (intent.rng or random.Random(intent.sequence)).shuffle(ordered)
        reason = "random"
    if intent.budget_status is BudgetStatus.SOFT_LIMIT:
        local = [b for b in ordered if b.is_local]
        if local and len(local) < len(ordered):
            ordered = local + [b for b in ordered if not b.is_local]
            reason = "budget_prefer_local"
    demoted = intent.demoted
    if demoted:
        healthy = [b for b in ordered if b.name not in demoted]
        if healthy and len(healthy) < len(ordered):
            ordered = healthy + [b for b in ordered if b.name in demoted]
            reason = "passive_health"
    intent.ordered = ordered + busy if busy else ordered
    intent.route_reason = reason
    best = ordered[0]
    if downgrade:
        intent.warnings.append(
            f"tier downgrade: no candidate meets tier {intent.min_tier}; routed to tier {best.tier} (X-Nexus-Flexible)"
        )
    if best.health is HealthState.LOADING:
        intent.queue_reason = f"best candidate {best.name} is loading its model"
