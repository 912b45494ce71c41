"""PrivacyReconciler: a restricted policy admits only restricted-zone backends.

The matching policy is the most specific glob over the resolved model (precomputed per known model
in the snapshot). Privacy is a hard constraint: the decision carries `privacy_required`, and every
later path (failover alternatives, fallbacks, queue re-runs) stays inside the candidates left here.
"""

from __future__ import annotations

from controlplane.model import PrivacyRequirement, Zone
from controlplane.snapshot import Snapshot
from router_node.pipeline.intent import RoutingIntent

__all__ = ["NAME", "reconcile"]

NAME = "PrivacyReconciler"


def reconcile(intent: RoutingIntent, snapshot: Snapshot) -> None:
    policy = snapshot.policy_for(intent.resolved_model)
    intent.policy = policy
    if policy is None or policy.privacy is not PrivacyRequirement.RESTRICTED:
        return
    intent.privacy_required = Zone.RESTRICTED
    open_zone = [b for b in intent.candidates if b.zone is not Zone.RESTRICTED]
    if open_zone:
        pattern = policy.model_pattern
        intent.exclude(
            open_zone,
            NAME,
            f"backend privacy zone is open; policy '{pattern}' requires restricted",
            f"add a backend with zone = \"restricted\" serving {intent.resolved_model}, or set "
            f"privacy = \"unrestricted\" on policy '{pattern}'",
        )
