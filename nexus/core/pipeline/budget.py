"""BudgetReconciler: estimate the request's cost on each candidate and apply the budget.

Cost = input tokens (analyzer estimate) x input price + output tokens (`max_tokens`, else
`DEFAULT_OUTPUT_TOKENS`, in nexus.core.pipeline.intent) x output price, prices per 1M tokens from the snapshot
(local backends 0). Status comes from the spend and limit in the snapshot: Normal below the soft limit,
SoftLimit from the soft limit up to the limit, HardLimit at or past it. When the request carries an API key
with its own budget (or its team has one), the worst of the key's, the team's and the global status applies.
At HardLimit the action decides: `warn` routes with a warning, `block_cloud` excludes open-zone backends,
`block_all` excludes all. SoftLimit only tells the scheduler to prefer local backends. A caller whose atomic
budget reservation was refused (`intent.budget_exhausted`) gets HardLimit under the blocking scope with the
least room (the key's, its team's or the global one), whatever the snapshot says of the others.
A policy's `max_cost_per_request` excludes candidates whose estimate exceeds it.
"""

from __future__ import annotations

from nexus.core.model import Backend, BudgetState, BudgetStatus, HardLimitAction, Zone
from nexus.core.pipeline.intent import DEFAULT_OUTPUT_TOKENS, RoutingIntent
from nexus.core.snapshot import GLOBAL_SCOPE, Snapshot
from nexus.core.tenancy import owner_label, team_scope

__all__ = ["DEFAULT_OUTPUT_TOKENS", "NAME", "estimate_cost", "reconcile"]

NAME = "BudgetReconciler"


def estimate_cost(intent: RoutingIntent, snapshot: Snapshot, backend: str) -> float:
    """USD estimate of the request on `backend` for the intent's resolved model."""
    pin, pout = snapshot.prices.get((backend, intent.resolved_model), (0.0, 0.0))
    if pin == 0.0 and pout == 0.0:
        return 0.0
    req = intent.requirements
    return (req.input_tokens * pin + req.output_estimate * pout) / 1_000_000.0


def _governing(intent: RoutingIntent, snapshot: Snapshot) -> tuple[BudgetState | None, BudgetStatus]:
    budgets = snapshot.budgets
    scopes = [GLOBAL_SCOPE]
    if intent.api_key_id is not None:
        scopes.append(intent.api_key_id)
    if intent.tenant is not None and intent.tenant.team is not None:
        scopes.append(team_scope(intent.tenant.team))
    states = [s for s in (budgets.get(scope) for scope in scopes) if s is not None]
    if intent.budget_exhausted:
        # a lease was refused under one of the request's blocking limits: that scope governs, whatever the
        # snapshot's status of the others (the global budget may have no limit at all). The refused one is
        # the blocking scope with the least room left; unknown (Redis away): the same choice, failing closed.
        blocking = [s for s in states if s.monthly_limit_usd is not None
                    and s.hard_limit_action is not HardLimitAction.WARN]
        if blocking:
            return min(blocking, key=lambda s: (s.monthly_limit_usd or 0.0) - s.spend_usd), BudgetStatus.HARD_LIMIT
    chosen = budgets.get(GLOBAL_SCOPE)
    status = chosen.status() if chosen else BudgetStatus.NORMAL
    for own in states:
        own_status = own.status()
        if own_status.severity > status.severity:
            chosen, status = own, own_status
    return chosen, status


def _raise_hint(state: BudgetState) -> str:
    if state.scope == GLOBAL_SCOPE:
        return "raise routing.budget.monthly_limit_usd (PUT /admin/v1/budgets/global)"
    if state.scope.startswith("team:"):
        return f"raise the budget of {owner_label(state.scope)} (PUT /admin/v1/teams/{state.scope[5:]})"
    if state.scope.startswith("key_"):
        return f"raise the budget of key {state.scope} (PATCH /admin/v1/keys/{state.scope})"
    return f"raise the budget of key {state.scope} (PUT /admin/v1/budgets/{state.scope})"


def reconcile(intent: RoutingIntent, snapshot: Snapshot) -> None:
    model = intent.resolved_model
    state, status = _governing(intent, snapshot)
    intent.budget_status = status
    intent.budget_scope = state.scope if state else None

    bad: list[tuple[Backend, str, str]] = []
    blocked: set[str] = set()
    if status is BudgetStatus.HARD_LIMIT and state is not None:
        action = state.hard_limit_action
        spent = f"spend ${state.spend_usd:.2f} of ${state.monthly_limit_usd or 0:.2f} ({state.scope})"
        if action is HardLimitAction.WARN:
            intent.warnings.append(f"budget hard limit reached: {spent}; hard_limit_action is warn")
        else:
            hint = _raise_hint(state)
            for b in intent.candidates:
                if action is HardLimitAction.BLOCK_ALL:
                    bad.append((b, f"budget hard limit reached: {spent}; hard_limit_action is block_all",
                                f"{hint}, or wait for the next budget period"))
                elif b.zone is not Zone.RESTRICTED:
                    bad.append((b, f"budget hard limit reached: {spent}; block_cloud excludes open-zone "
                                "backends", f"{hint}, or route to a local backend"))
            blocked = {b.name for b, _, _ in bad}

    policy = snapshot.policy_for(model)
    if policy is not None and policy.max_cost_per_request is not None:
        cap = policy.max_cost_per_request
        costs = intent.cost_estimates
        for b in intent.candidates:
            if b.name in blocked:
                continue
            cost = costs[b.name] = estimate_cost(intent, snapshot, b.name)
            if cost > cap:
                bad.append((b, f"estimated cost ${cost:.6f} exceeds max_cost_per_request ${cap:.6f} "
                            f"of policy '{policy.model_pattern}'",
                            f"lower max_tokens, or raise max_cost_per_request on policy '{policy.model_pattern}'"))
    if bad:
        intent.exclude_each(bad, NAME)
