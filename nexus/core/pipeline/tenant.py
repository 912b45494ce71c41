"""TenantReconciler: what the request's key (and its team) allows, as constraints like any other.

- models: a key or team with a model list admits only models matching one of its globs (the requested name
  or what it resolves to); any other model is, for this key, not found (404 lists only what it may use);
- max_tier: backends above the key's (or team's, the lower) `max_tier` are excluded;
- priority: the key's priority is the most its requests get (`X-Nexus-Priority: high` from a `normal` key is
  lowered; a `high` key's requests are high).
The key's forced privacy is the PrivacyReconciler's (it carries over to fallbacks like a policy's).
"""

from __future__ import annotations

from nexus.core.pipeline.intent import RoutingIntent
from nexus.core.snapshot import Snapshot
from nexus.core.tenancy import Tenant, owner_label

__all__ = ["NAME", "reconcile"]

NAME = "TenantReconciler"


def reconcile(intent: RoutingIntent, snapshot: Snapshot) -> None:
    tenant: Tenant | None = intent.tenant
    if tenant is None:
        return
    if tenant.priority is not None:
        intent.priority = tenant.priority
    if not tenant.allows_model(intent.requested_model, intent.resolved_model):
        owners = ", ".join(owner_label(o) for o in tenant.model_owners)
        intent.exclude(
            intent.candidates,
            NAME,
            f"model {intent.requested_model} is not in the models allowed for {owners}",
            f"use a model {owners} may use, or add it to its models (PATCH /admin/v1/keys/{tenant.key_id})",
        )
        intent.model_known = False
        intent.model_forbidden = True
        return
    if tenant.max_tier is not None:
        high = [b for b in intent.candidates if b.tier > tenant.max_tier]
        if high:
            who = owner_label(tenant.max_tier_by or tenant.key_id)
            intent.exclude(
                high,
                NAME,
                f"backend tier above max_tier {tenant.max_tier} of {who}",
                f"raise max_tier of {who}, or add a tier <= {tenant.max_tier} backend serving {intent.resolved_model}",
            )
