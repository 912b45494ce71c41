"""The immutable in-process snapshot that router nodes route from.

`build_snapshot` is pure: desired config + observed state + the time, in; a `Snapshot` out. Everything
the pipeline would otherwise compute per request is computed here once: the merged backend views, the
per-model candidate lists (sorted by name), the policy matching each known model, per-model prices and
the static part of each backend's score. Cluster-wide in-flight counts change far more often than the rest;
router nodes pass their live view of them to the pipeline instead of rebuilding the snapshot.

Invariants:
- Observed health older than twice the health interval is `unknown`, never trusted as healthy/unhealthy.
- Local backends cost 0; cloud prices come from the model entry, else the default price table.
- `by_model[m]` lists exactly the backends that declare or have reported model `m`, sorted by name.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType

from nexus.core.adapters.registry import is_local_type, kind_of, zone_for
from nexus.core.capabilities import unsupported
from nexus.core.config import (
    GLOBAL_SCOPE,
    BudgetConfig,
    DesiredConfig,
    HealthCheckConfig,
    ModelConfig,
    QualityConfig,
    TestingConfig,
)
from nexus.core.fleet.lifecycle import LifecycleMark, MarkState
from nexus.core.globs import Glob, best_match, compile_glob
from nexus.core.model import (
    Backend,
    BudgetState,
    BudgetStatus,
    HealthState,
    ModelSpec,
    Policy,
    QualityStats,
    Strategy,
    Weights,
)
from nexus.core.periods import PeriodRule
from nexus.core.prices import default_price

__all__ = [
    "GLOBAL_SCOPE",
    "BudgetObservation",
    "HealthObservation",
    "ModelFacts",
    "Observed",
    "Snapshot",
    "SnapshotCache",
    "build_snapshot",
    "static_score",
]



@dataclass(frozen=True, slots=True)
class HealthObservation:
    state: HealthState
    checked_at: float
    models: tuple[ModelConfig, ...] = ()
    latency_ema_ms: float | None = None


@dataclass(frozen=True, slots=True)
class BudgetObservation:
    """One budget scope as the budget worker last saw it: the one schema of `{observed}:spend`, written only
    by `nexus.core.spend_report.write_budget_observations`. Snapshots read `spend_usd` and `period`; the
    rest is what the worker computed the status from, for the admin API."""

    spend_usd: float
    period: str
    status: BudgetStatus = BudgetStatus.NORMAL
    limit_usd: float | None = None
    soft_limit_fraction: float = 0.75
    utilization: float = 0.0
    checked_at: float = 0.0


@dataclass(frozen=True, slots=True)
class Observed:
    """Everything workers and router nodes report, as read from Redis."""

    health: Mapping[str, HealthObservation] = field(default_factory=dict)
    quality: Mapping[str, QualityStats] = field(default_factory=dict)
    spend: Mapping[str, BudgetObservation] = field(default_factory=dict)
    inflight: Mapping[str, int] = field(default_factory=dict)
    # backend -> model -> mark of a lifecycle operation (nexus.core.fleet.lifecycle)
    lifecycle: Mapping[str, Mapping[str, LifecycleMark]] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class ModelFacts:
    """What holds for every backend serving one model, so the analyzer can skip per-backend checks."""

    unhealthy: tuple[Backend, ...]
    min_context: int | None
    lacks_any: frozenset[str]  # request features some backend serving the model lacks (nexus/core/capabilities.py)
    unusable: tuple[Backend, ...] = ()  # configured but not usable here (`Backend.unusable`: a key unset)


@dataclass(frozen=True, slots=True)
class Snapshot:
    version: int
    built_at: float
    backends: Mapping[str, Backend]
    aliases: Mapping[str, str]
    fallbacks: Mapping[str, tuple[str, ...]]
    policies: tuple[Policy, ...]
    strategy: Strategy
    weights: Weights
    max_retries: int
    budgets: Mapping[str, BudgetState]
    quality_error_threshold: float
    inflight: Mapping[str, int]
    # derived once per build
    by_model: Mapping[str, tuple[Backend, ...]]
    model_facts: Mapping[str, ModelFacts]
    failing: frozenset[str]
    slow: frozenset[str]
    policy_by_model: Mapping[str, Policy | None]
    compiled_policies: tuple[tuple[Glob, int, Policy], ...]
    prices: Mapping[tuple[str, str], tuple[float, float]]
    static_scores: Mapping[str, float]
    # newest health observation in the store (None: never probed); its age shows whether workers run
    observed_at: float | None = None
    # model -> what lifecycle operations do to it now (`loading=gpu-box`, `draining=old-box`): the value of
    # the X-Nexus-Lifecycle-Status response header
    lifecycle: Mapping[str, str] = field(default_factory=dict)

    def policy_for(self, model: str) -> Policy | None:
        try:
            return self.policy_by_model[model]
        except KeyError:
            return best_match(model, self.compiled_policies)

    def price(self, backend: str, model: str) -> tuple[float, float]:
        return self.prices.get((backend, model), (0.0, 0.0))

    @property
    def models(self) -> list[str]:
        return sorted(self.by_model)


def _spec(b_type: str, b_is_local: bool, m: ModelConfig) -> ModelSpec:
    # prices of cloud models only; local backends cost nothing
    if b_is_local:
        pin, pout = 0.0, 0.0
    else:
        dflt = default_price(m.name)
        pin = m.input_usd_per_1m if m.input_usd_per_1m is not None else dflt[0]
        pout = m.output_usd_per_1m if m.output_usd_per_1m is not None else dflt[1]
    spec = ModelSpec(
        name=m.name,
        context_length=m.context_length,
        vision=m.vision,
        tools=m.tools,
        json_mode=m.json_mode,
        input_usd_per_1m=pin,
        output_usd_per_1m=pout,
        json_schema=m.json_schema,
        multiple_choices=m.multiple_choices,
        logprobs=m.logprobs,
        completions=m.completions,
    )
    return replace(spec, lacks=unsupported(spec, kind_of(b_type).lacks))


def _budget(
    scope: str, cfg: BudgetConfig, spend: BudgetObservation | None, rule: PeriodRule, now: float
) -> BudgetState:
    period = rule.name(now)
    # an observation of another period (the worker has not ticked since the rollover) is not this one's spend
    current = spend is not None and spend.period == period
    return BudgetState(
        scope=scope,
        monthly_limit_usd=cfg.monthly_limit_usd,
        soft_limit_fraction=cfg.soft_limit_percent,
        hard_limit_action=cfg.hard_limit_action,
        spend_usd=spend.spend_usd if spend is not None and current else 0.0,
        period=period,
        rule=rule,
    )


def static_score(b: Backend, weights: Weights) -> float:
    """Score parts that do not change between snapshot builds: priority, latency, quality."""
    # lower priority is better; negative priorities (Rust Nexus allows them) rank above 0, still bounded
    prio = 1.0 / (1.0 + b.priority) if b.priority >= 0 else 2.0 - 1.0 / (1.0 - b.priority)
    lat = 0.5 if b.latency_ema_ms is None else 100.0 / (100.0 + b.latency_ema_ms)
    quality = 1.0 if b.quality is None else max(0.0, 1.0 - b.quality.error_rate_1h)
    return (weights.priority * prio + weights.latency * lat) * quality


class SnapshotCache:
    """What consecutive builds from one desired config can share, owned by one builder at a time (a router
    node's refresher builds serially). Built from the config alone: configured model specs, zones, compiled
    policies and their verdict per model name. Carried between builds: each backend's merged view, reused
    while its observed inputs are equal, and the per-model tables derived from the backends, reused while
    no backend changed. A poll that finds no new health then allocates almost nothing."""

    __slots__ = ("backends", "compiled", "configs", "derived", "desired", "policies", "policy_memo")

    def __init__(self, desired: DesiredConfig) -> None:
        self.desired = desired
        self.configs = [
            (cfg, is_local_type(cfg.type), zone_for(cfg.type, cfg.zone),
             _specs(cfg.type, is_local_type(cfg.type), cfg.models))
            for cfg in sorted(desired.backends, key=lambda b: b.name)
        ]
        self.policies = tuple(
            Policy(
                model_pattern=p.model_pattern,
                privacy=p.privacy,
                min_tier=p.min_tier,
                max_cost_per_request=p.max_cost_per_request,
                fallback_allowed=p.fallback_allowed,
                index=i,
            )
            for i, p in enumerate(desired.routing.policies)
        )
        self.compiled = tuple((g, g.literals, p) for p in self.policies for g in (compile_glob(p.model_pattern),))
        self.policy_memo: dict[str, Policy | None] = {}
        self.backends: dict[str, tuple[tuple, Backend]] = {}
        self.derived: tuple[tuple, _Derived] | None = None

    def policy(self, model: str) -> Policy | None:
        try:
            return self.policy_memo[model]
        except KeyError:
            found = self.policy_memo[model] = best_match(model, self.compiled)
            return found


def _specs(b_type: str, local: bool, models: Iterable[ModelConfig]) -> dict[str, ModelSpec]:
    return {m.name: _spec(b_type, local, m) for m in models}


def _backend(
    cache: SnapshotCache,
    entry: tuple,
    obs: HealthObservation | None,
    quality: QualityStats | None,
    fresh: bool,
    unusable: str | None = None,
) -> Backend:
    cfg, local, zone, configured = entry
    state = obs.state if obs is not None and fresh else HealthState.UNKNOWN
    latency = obs.latency_ema_ms if obs is not None and fresh else None
    # when an unhealthy verdict was observed (router nodes weigh it against their own evidence); only then, so
    # a healthy backend's cached object survives every health tick
    health_at = obs.checked_at if obs is not None and state is HealthState.UNHEALTHY else None
    discovered = obs.models if obs is not None else ()
    key = (cfg, state, latency, discovered, quality, health_at, unusable)
    hit = cache.backends.get(cfg.name)
    if hit is not None and hit[0] == key:
        return hit[1]
    models = dict(configured)
    for m in discovered:
        known = models.get(m.name)
        if known is None:
            models[m.name] = _spec(cfg.type, local, m)
        elif known.context_length is None and m.context_length is not None:
            # configured without a context length: the backend's own report fills it in
            models[m.name] = replace(known, context_length=m.context_length)
    b = Backend(
        name=cfg.name,
        url=cfg.url,
        type=cfg.type,
        zone=zone,
        tier=cfg.tier,
        priority=cfg.priority,
        max_concurrency=cfg.max_concurrency,
        models=models,
        health=state,
        health_at=health_at,
        latency_ema_ms=latency,
        quality=quality,
        secret=cfg.secret,
        is_local=local,
        timeout_seconds=cfg.timeout_seconds,
        unusable=unusable,
    )
    cache.backends[cfg.name] = (key, b)
    return b


@dataclass(frozen=True, slots=True)
class _Derived:
    by_model: Mapping[str, tuple[Backend, ...]]
    model_facts: Mapping[str, ModelFacts]
    prices: Mapping[tuple[str, str], tuple[float, float]]
    failing: frozenset[str]
    slow: frozenset[str]
    policy_by_model: Mapping[str, Policy | None]
    static_scores: Mapping[str, float]


def _derive(
    cache: SnapshotCache, backends: Mapping[str, Backend], quality: QualityConfig, weights: Weights
) -> _Derived:
    by_model: dict[str, list[Backend]] = {}
    prices: dict[tuple[str, str], tuple[float, float]] = {}
    for b in backends.values():
        for spec in b.models.values():
            by_model.setdefault(spec.name, []).append(b)
            prices[(b.name, spec.name)] = (spec.input_usd_per_1m, spec.output_usd_per_1m)
    facts = {}
    for m, bs in by_model.items():
        specs = [b.models[m] for b in bs]
        contexts = [s.context_length for s in specs if s.context_length is not None]
        facts[m] = ModelFacts(
            unhealthy=tuple(b for b in bs if b.health is HealthState.UNHEALTHY),
            min_context=min(contexts) if contexts else None,
            lacks_any=frozenset().union(*(s.lacks for s in specs)),
            unusable=tuple(b for b in bs if b.unusable is not None),
        )
    failing, slow = set(), set()
    for b in backends.values():
        q = b.quality
        if not quality.enabled or q is None or q.requests_1h < quality.min_requests:
            continue
        # threshold 0.0 (Rust Nexus: "exclude any errors") excludes a backend with any error, not every one
        if q.error_rate_1h >= quality.error_rate_threshold and q.error_rate_1h > 0:
            failing.add(b.name)
        elif q.avg_ttfb_ms_1h > quality.ttft_penalty_threshold_ms:
            slow.add(b.name)
    routing = cache.desired.routing
    known = set(by_model) | set(routing.aliases) | set(routing.aliases.values())
    for chain in routing.fallbacks.values():
        known.update(chain)
    return _Derived(
        by_model=MappingProxyType({m: tuple(bs) for m, bs in by_model.items()}),
        model_facts=MappingProxyType(facts),
        prices=MappingProxyType(prices),
        failing=frozenset(failing),
        slow=frozenset(slow),
        policy_by_model=MappingProxyType({m: cache.policy(m) for m in known}),
        static_scores=MappingProxyType({n: static_score(b, weights) for n, b in backends.items()}),
    )


def build_snapshot(
    desired: DesiredConfig,
    observed: Observed,
    *,
    version: int,
    now: float,
    health: HealthCheckConfig | None = None,
    quality: QualityConfig | None = None,
    testing: TestingConfig | None = None,
    cache: SnapshotCache | None = None,
    missing_keys: Mapping[str, str] | None = None,
) -> Snapshot:
    """`cache` (from the previous build of the same `desired`) makes a rebuild reuse what did not change; a
    cache of another config is ignored. Either way the result equals a build from scratch. `missing_keys`
    (secret name -> reason, `NexusSettings.missing_keys`) marks the backends using such a secret unusable."""
    missing_keys = missing_keys or {}
    health = health or HealthCheckConfig()
    quality = quality or QualityConfig()
    if cache is None or cache.desired is not desired:
        cache = SnapshotCache(desired)
    stale_after = 2.0 * health.interval_seconds
    routing = desired.routing
    weights = Weights(
        priority=routing.weights.priority, load=routing.weights.load, latency=routing.weights.latency
    )
    backends: dict[str, Backend] = {}
    for entry in cache.configs:
        name = entry[0].name
        obs = observed.health.get(name)
        fresh = obs is not None and now - obs.checked_at <= stale_after
        secret = entry[0].secret
        unusable = missing_keys.get(secret) if secret is not None else None
        backends[name] = _backend(cache, entry, obs, observed.quality.get(name), fresh, unusable)
    if len(cache.backends) > len(backends):
        cache.backends = {n: v for n, v in cache.backends.items() if n in backends}
    # the derived tables depend on the backends (reused objects when unchanged), quality and weights only
    key = (tuple(id(b) for b in backends.values()), quality, weights)
    if cache.derived is not None and cache.derived[0] == key:
        derived = cache.derived[1]
    else:
        derived = _derive(cache, backends, quality, weights)
        cache.derived = (key, derived)

    by_model, lifecycle = derived.by_model, {}
    if observed.lifecycle:
        by_model, lifecycle = _apply_marks(by_model, observed.lifecycle, now)

    configured = desired.budgets()
    calendar = routing.calendar(testing, configured)
    budgets = {
        scope: _budget(scope, cfg, observed.spend.get(scope), calendar.rule(scope), now)
        for scope, cfg in configured.items()
    }

    return Snapshot(
        version=version,
        built_at=now,
        backends=MappingProxyType(backends),
        aliases=MappingProxyType(dict(routing.aliases)),
        fallbacks=MappingProxyType({k: tuple(v) for k, v in routing.fallbacks.items()}),
        policies=cache.policies,
        strategy=routing.strategy,
        weights=weights,
        max_retries=routing.max_retries,
        budgets=MappingProxyType(budgets),
        quality_error_threshold=quality.error_rate_threshold,
        inflight=MappingProxyType(dict(observed.inflight)),
        by_model=by_model,
        model_facts=derived.model_facts,
        failing=derived.failing,
        slow=derived.slow,
        policy_by_model=derived.policy_by_model,
        compiled_policies=cache.compiled,
        prices=derived.prices,
        static_scores=derived.static_scores,
        observed_at=max((o.checked_at for o in observed.health.values()), default=None),
        lifecycle=MappingProxyType(lifecycle),
    )


def _apply_marks(
    by_model: Mapping[str, tuple[Backend, ...]], marks: Mapping[str, Mapping[str, LifecycleMark]], now: float
) -> tuple[Mapping[str, tuple[Backend, ...]], dict[str, str]]:
    """Per model: a backend a lifecycle operation is loading it on is LOADING for that model (the scheduler
    queues while it is the best candidate), one about to unload it is left out while another candidate
    remains. Marks past their deadline count for nothing."""
    changed = dict(by_model)
    status: dict[str, list[str]] = {}
    for model, bs in by_model.items():
        live = {b.name: m for b in bs if (m := marks.get(b.name, {}).get(model)) is not None and m.until > now}
        if not live:
            continue
        out = []
        for b in bs:
            m = live.get(b.name)
            if m is None:
                out.append(b)
            elif m.state is MarkState.LOADING:
                out.append(b if b.health is HealthState.UNHEALTHY else replace(b, health=HealthState.LOADING))
        if not out:  # every candidate is about to unload it: better those than none
            out = list(bs)
        changed[model] = tuple(out)
        status[model] = [f"{m.state.value}={name}" for name, m in sorted(live.items())]
    return MappingProxyType(changed), {model: ", ".join(v) for model, v in status.items()}
