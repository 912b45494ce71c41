"""PrivacyReconciler: a restricted policy admits only restricted-zone backends.

The matching policy is the most specific glob over the resolved model (precomputed per known model in the
snapshot). A caller may preset `privacy_required` (a fallback after a restricted decision): the constraint
then holds whatever the fallback model's own policy says. A key (or its team) with `privacy = "restricted"`
forces it on every request of the key, whatever the model's policy. Privacy is a hard constraint: the decision
carries `privacy_required`, and every later path (failover alternatives, fallbacks, queue re-runs) stays
inside the candidates left here.
"""

from __future__ import annotations

from nexus.core.model import PrivacyRequirement, Zone
from nexus.core.pipeline.intent import RoutingIntent
from nexus.core.snapshot import Snapshot
from nexus.core.tenancy import owner_label

__all__ = ["NAME", "reconcile"]

NAME = "PrivacyReconciler"


def reconcile(intent: RoutingIntent, snapshot: Snapshot) -> None:
    policy = snapshot.policy_for(intent.resolved_model)
    intent.policy = policy
    by_policy = policy is not None and policy.privacy is PrivacyRequirement.RESTRICTED
    by_key = intent.tenant.privacy_restricted_by if intent.tenant is not None else None
    if not by_policy and by_key is None and intent.privacy_required is not Zone.RESTRICTED:
        return
    intent.privacy_required = Zone.RESTRICTED
    open_zone = [b for b in intent.candidates if b.zone is not Zone.RESTRICTED]
    if not open_zone:
        return
    if by_key is not None:
        reason = f"backend privacy zone is open; {owner_label(by_key)} requires restricted (privacy = \"restricted\")"
        action = (f"add a backend with zone = \"restricted\" serving {intent.resolved_model}, or use a key "
                  "without forced privacy")
    elif by_policy:
        pattern = policy.model_pattern  # type: ignore[union-attr]
        reason = f"backend privacy zone is open; policy '{pattern}' requires restricted"
        action = (f"add a backend with zone = \"restricted\" serving {intent.resolved_model}, or set "
                  f"privacy = \"unrestricted\" on policy '{pattern}'")
    else:
        reason = "backend privacy zone is open; the request it falls back from requires restricted"
        action = f"add a backend with zone = \"restricted\" serving {intent.resolved_model}"
    intent.exclude(open_zone, NAME, reason, action)
