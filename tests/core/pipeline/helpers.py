"""Builders for pipeline tests: snapshots from terse backend specs, and one-call decisions."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from nexus.core.config import BackendConfig, BudgetConfig, DesiredConfig, PolicyConfig, RoutingConfig
from nexus.core.model import HealthState, QualityStats, TierMode
from nexus.core.periods import period_of
from nexus.core.pipeline import Decision, RoutingIntent, decide, extract_requirements
from nexus.core.snapshot import GLOBAL_SCOPE, BudgetObservation, HealthObservation, Observed, Snapshot, build_snapshot

CLOUD_NEEDS_KEY = {"openai", "anthropic", "google"}


def backend(name: str, type: str = "vllm", models: Iterable[Any] = ("m",), **kw: Any) -> BackendConfig:
    if type in CLOUD_NEEDS_KEY:
        kw.setdefault("secret", "TEST_KEY")
    return BackendConfig(name=name, url=f"http://127.0.0.1:9/{name}", type=type, models=list(models), **kw)


def raw_backend(name: str, **fields: Any) -> BackendConfig:
    """A backend that skipped validation, as a value from an older or foreign writer might."""
    base = dict(backend(name))
    base.update(fields)
    return BackendConfig.model_construct(**base)


def snapshot(
    backends: Iterable[BackendConfig],
    *,
    policies: Iterable[Mapping[str, Any]] = (),
    aliases: Mapping[str, str] | None = None,
    budget: Mapping[str, Any] | None = None,
    key_budgets: Mapping[str, Mapping[str, Any]] | None = None,
    spend: Mapping[str, float] | None = None,
    health: Mapping[str, HealthState] | None = None,
    quality: Mapping[str, QualityStats] | None = None,
    latency: Mapping[str, float] | None = None,
    inflight: Mapping[str, int] | None = None,
    strategy: str = "smart",
    validate: bool = True,
) -> Snapshot:
    fields: dict[str, Any] = {
        "strategy": strategy,
        "aliases": dict(aliases or {}),
        "policies": [PolicyConfig(**p) for p in policies],
        "budget": BudgetConfig(**(budget or {})),
        "key_budgets": {k: BudgetConfig(**v) for k, v in (key_budgets or {}).items()},
    }
    if validate:
        desired = DesiredConfig(backends=list(backends), routing=RoutingConfig(**fields))
    else:
        desired = DesiredConfig.model_construct(backends=list(backends), routing=RoutingConfig.model_construct(
            **{**dict(RoutingConfig()), **fields}))
    now = 1000.0
    health_obs = {
        n: HealthObservation(state=s, checked_at=now, latency_ema_ms=(latency or {}).get(n))
        for n, s in (health or {}).items()
    }
    for n, ms in (latency or {}).items():
        health_obs.setdefault(n, HealthObservation(HealthState.HEALTHY, now, (), ms))
    observed = Observed(
        health=health_obs,
        quality=dict(quality or {}),
        spend={scope: BudgetObservation(v, period_of(now)) for scope, v in (spend or {}).items()},
        inflight=dict(inflight or {}),
    )
    return build_snapshot(desired, observed, version=1, now=now)


def chat(text: str = "hello", **extra: Any) -> dict[str, Any]:
    return {"model": "m", "messages": [{"role": "user", "content": text}], **extra}


def run(
    snap: Snapshot,
    model: str = "m",
    body: Mapping[str, Any] | None = None,
    *,
    tier_mode: TierMode | None = None,
    trace: bool = True,
    **intent_kw: Any,
) -> Decision:
    req = extract_requirements(body if body is not None else chat())
    return decide(RoutingIntent(model, req, tier_mode=tier_mode, **intent_kw), snap, trace=trace)


def excluded_by(decision: Decision, reconciler: str) -> set[str]:
    return {r.agent_id for r in decision.reasons if r.reconciler == reconciler}


__all__ = ["GLOBAL_SCOPE", "backend", "chat", "excluded_by", "raw_backend", "run", "snapshot"]
