"""TierReconciler: the matching policy's `min_tier`.

Strict (the default, or `X-Nexus-Strict: true`) excludes backends below the tier. Flexible
(`X-Nexus-Flexible: true`) excludes nothing here; it records the tier as a preference and the
scheduler, which sees the final candidate set, drops lower tiers when any candidate meets the tier
and otherwise routes lower with a warning. That keeps every filter independent of the others' order.
"""

from __future__ import annotations

from nexus.core.model import TierMode
from nexus.core.pipeline.intent import RoutingIntent
from nexus.core.snapshot import Snapshot

__all__ = ["NAME", "reconcile"]

NAME = "TierReconciler"


def reconcile(intent: RoutingIntent, snapshot: Snapshot) -> None:
    policy = snapshot.policy_for(intent.resolved_model)
    if policy is None or policy.min_tier is None:
        return
    tier = policy.min_tier
    intent.min_tier = tier
    if intent.tier_mode is TierMode.FLEXIBLE:
        return
    low = [b for b in intent.candidates if b.tier < tier]
    if low:
        intent.exclude(
            low,
            NAME,
            f"backend tier below {tier} required by policy '{policy.model_pattern}'",
            f"send X-Nexus-Flexible: true to accept a lower tier when none is available, or add a "
            f"tier >= {tier} backend serving {intent.resolved_model}",
        )
