"""The one configuration tree: `nexus.toml` plus `NEXUS_*` environment overrides.

Sources, strongest first: explicit init values, environment (`NEXUS_<SECTION>_<KEY>`, e.g.
`NEXUS_REDIS_URL`, `NEXUS_SERVER_PORT`, `NEXUS_BUDGET_MONTHLY_LIMIT_USD`, `NEXUS_ADMIN_TOKEN`), the TOML file.
This module is the only place that reads the process environment (`resolve_secret`, and `key_for` for
backend keys, which `nexus.core.secrets` only lets go to the hosts their secret lists).

The same pydantic models validate the TOML, admin API bodies and the desired state stored in Redis, so
a value is accepted or refused identically wherever it enters. `DesiredConfig` is the part of the tree
that lives in Redis and changes at run time; the rest is per-process.

Desired state is bounded (`LIMITS`: backends, models, policies, aliases, fallbacks, key budgets, name
lengths), so no write can make a snapshot too large to build quickly on every router node.

Invalid input raises `ConfigError`, whose message names the file, each bad key and the fix.
"""

from __future__ import annotations

import contextlib
import difflib
import ipaddress
import os
import time
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

from pydantic import (
    AliasChoices,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from nexus.core.adapters.registry import kind_of
from nexus.core.aliases import MAX_ALIAS_HOPS
from nexus.core.aliases import follow as follow_alias
from nexus.core.errors import ConfigError
from nexus.core.globs import GlobError, validate_glob
from nexus.core.model import BackendSource, BackendType, HardLimitAction, PrivacyRequirement, Strategy, Zone
from nexus.core.periods import MAX_RESET_DAY, BudgetCalendar, PeriodRule
from nexus.core.redis_conn import RedisTarget, parse_target
from nexus.core.secrets import (
    SECRET_NAME_PATTERN,
    SecretConfig,
    check_backend_secret,
    implied_secrets,
    secret_allowed,
)
from nexus.core.tenancy import KeyConfig, TeamConfig, team_scope
from nexus.core.urls import validate_backend_url

__all__ = [
    "LIMITS",
    "MAX_ALIAS_HOPS",
    "AdminConfig",
    "BackendConfig",
    "BudgetConfig",
    "DesiredConfig",
    "DiscoveryConfig",
    "FleetConfig",
    "HealthCheckConfig",
    "LifecycleConfig",
    "Limits",
    "LoggingConfig",
    "ModelConfig",
    "NexusSettings",
    "PolicyConfig",
    "QualityConfig",
    "QueueConfig",
    "RedisConfig",
    "RoutingConfig",
    "ServerConfig",
    "TelemetryConfig",
    "TestingConfig",
    "WeightsConfig",
    "check_aliases",
    "check_secret_refs",
    "format_errors",
    "format_validation_error",
    "key_for",
    "load_settings",
    "missing_key_reasons",
    "resolve_secret",
    "validate_desired",
]

GLOBAL_SCOPE = "global"  # the budget scope of `[routing.budget]`; every other scope is an API key id


@dataclass(frozen=True, slots=True)
class Limits:
    """Bounds on desired state. A 5,000-backend config builds into a snapshot in well under a second
    (`bench/snapshot.py`); 20,000 backends once took every replica seconds per rebuild and 1.2 GB."""

    backends: int = 5_000
    models_per_backend: int = 1_000
    models_total: int = 100_000
    policies: int = 1_000
    aliases: int = 10_000
    fallbacks: int = 10_000
    fallback_chain: int = 16
    key_budgets: int = 10_000
    keys: int = 10_000  # virtual client keys (nexus.core.tenancy), revoked ones included
    teams: int = 1_000
    name_length: int = 256  # model, alias and budget-scope names
    admin_body_bytes: int = 16 * 1024 * 1024


LIMITS = Limits()
_NAME = Field(min_length=1, max_length=LIMITS.name_length)


def _lower(value: Any) -> Any:
    return value.strip().lower() if isinstance(value, str) else value


def _zone(value: Any) -> Any:
    if value is None:
        return None
    if isinstance(value, str):
        v = value.strip().lower()
        if v in ("restricted", "open"):
            return v
    raise ValueError(f'unknown zone {value!r}; use "restricted" or "open" (any case), or leave it out')


def _soft_fraction(value: Any) -> Any:
    if isinstance(value, str):
        try:
            value = float(value.strip().rstrip("%"))
        except ValueError:
            return value
    if isinstance(value, bool) or not isinstance(value, int | float):
        return value
    if value < 0:
        raise ValueError("must not be negative; give a fraction such as 0.75 or a percent such as 75")
    return value / 100.0 if value > 1 else float(value)


# Bounded numbers everywhere: values travel as JSON (orjson: 64-bit ints, no inf/nan) through Redis.
_Section = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class ModelConfig(BaseModel):
    model_config = _Section

    name: str = _NAME
    context_length: int | None = Field(default=None, gt=0, le=100_000_000)
    vision: bool = False
    tools: bool = True
    json_mode: bool = True
    input_usd_per_1m: float | None = Field(default=None, ge=0)
    output_usd_per_1m: float | None = Field(default=None, ge=0)
    # request features as requirements (nexus/core/capabilities.py): a backend type's adapter limits apply on top
    json_schema: bool = True
    multiple_choices: bool = True  # n > 1
    logprobs: bool = True
    completions: bool = True  # serves the legacy /v1/completions endpoint


def _model_entry(value: Any) -> Any:
    return {"name": value} if isinstance(value, str) else value


class BackendConfig(BaseModel):
    model_config = _Section

    name: str = Field(min_length=1, max_length=200, pattern=r"^[A-Za-z0-9][A-Za-z0-9._:@-]*$")
    url: str
    type: Annotated[BackendType, BeforeValidator(_lower)] = BackendType.GENERIC
    zone: Annotated[Zone | None, BeforeValidator(_zone)] = None
    tier: int = Field(default=1, ge=1, le=5)
    # lower is preferred; negative values (Rust Nexus's i32 priorities) sort before 0
    priority: int = Field(default=1, ge=-1_000_000, le=1_000_000)
    max_concurrency: int = Field(default=8, ge=1, le=1_000_000)
    # the name of a secret declared in nexus.toml [secrets]; its key is only ever sent to that secret's hosts
    secret: str | None = Field(default=None, max_length=200, pattern=SECRET_NAME_PATTERN)
    models: list[Annotated[ModelConfig, BeforeValidator(_model_entry)]] = Field(
        default_factory=list, max_length=LIMITS.models_per_backend
    )
    timeout_seconds: float | None = Field(default=None, gt=0, le=3600)
    # a backend that needs time after start (model load): failures in this window count as loading
    warmup_seconds: float = Field(default=0.0, ge=0, le=86400)
    # who wrote it: an operator (nexus.toml, the admin API) or the discovery job, which removes only its own
    source: Annotated[BackendSource, BeforeValidator(_lower)] = BackendSource.STATIC

    @model_validator(mode="before")
    @classmethod
    def _no_env_names(cls, data: Any) -> Any:
        # nexus.toml and stored state of older releases were rewritten to `secret` before this point
        # (nexus.core.secrets): a body still naming a variable is an admin write, which may not.
        if isinstance(data, Mapping) and "api_key_env" in data:
            raise ValueError(
                "api_key_env names an environment variable, which only nexus.toml may do; reference a secret "
                'declared in nexus.toml [secrets] instead, e.g. "secret": "openai"'
            )
        return data

    @field_validator("url", mode="before")
    @classmethod
    def _url(cls, v: Any) -> str:
        return validate_backend_url(v)

    @model_validator(mode="after")
    def _cloud_key(self) -> BackendConfig:
        if kind_of(self.type).needs_key and not self.secret:
            raise ValueError(
                f"secret is required for type {self.type.value!r}; name a secret declared in nexus.toml "
                "[secrets] (or, in nexus.toml, set api_key_env)"
            )
        return self

    @model_validator(mode="after")
    def _unique_models(self) -> BackendConfig:
        seen: set[str] = set()
        for m in self.models:
            if m.name in seen:
                raise ValueError(f"model {m.name!r} is listed twice; keep one entry")
            seen.add(m.name)
        return self


class PolicyConfig(BaseModel):
    model_config = _Section

    model_pattern: str
    privacy: Annotated[PrivacyRequirement, BeforeValidator(_lower)] = PrivacyRequirement.UNRESTRICTED
    min_tier: int | None = Field(default=None, ge=1, le=5)
    max_cost_per_request: float | None = Field(default=None, ge=0)
    fallback_allowed: bool = True

    @field_validator("model_pattern")
    @classmethod
    def _glob(cls, v: str) -> str:
        try:
            return validate_glob(v)
        except GlobError as exc:
            raise ValueError(str(exc)) from None


class BudgetConfig(BaseModel):
    model_config = _Section

    monthly_limit_usd: float | None = Field(default=None, ge=0)
    soft_limit_percent: Annotated[float, BeforeValidator(_soft_fraction)] = Field(default=0.75, ge=0, le=1)
    hard_limit_action: Annotated[HardLimitAction, BeforeValidator(_lower)] = HardLimitAction.WARN
    # the day of the month (1-28, 00:00 UTC) on which this budget's periods start; unset: the 1st for the
    # global budget, the global budget's reset day for a key budget
    reset_day: int | None = Field(default=None, ge=1, le=MAX_RESET_DAY)
    reconciliation_interval_secs: float = Field(default=60.0, gt=0)


class WeightsConfig(BaseModel):
    model_config = _Section

    priority: float = Field(default=50.0, ge=0)
    load: float = Field(default=30.0, ge=0)
    latency: float = Field(default=20.0, ge=0)


def check_aliases(aliases: Mapping[str, str]) -> None:
    """Refuse cycles and chains longer than MAX_ALIAS_HOPS, naming the alias and the chain."""
    for start in aliases:
        chain = follow_alias(aliases, start)
        if chain.cycle:
            raise ValueError(f"alias cycle {' -> '.join(chain.names)}; remove one of these aliases")
        if chain.too_long:
            raise ValueError(
                f"alias chain {' -> '.join(chain.names)} has {chain.hops} hops; at most {MAX_ALIAS_HOPS} "
                f"are allowed: point {start!r} closer to the model"
            )


class RoutingConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    strategy: Annotated[Strategy, BeforeValidator(_lower)] = Strategy.SMART
    max_retries: int = Field(default=2, ge=0, le=10)
    aliases: dict[Annotated[str, _NAME], Annotated[str, _NAME]] = Field(
        default_factory=dict, max_length=LIMITS.aliases
    )
    fallbacks: dict[Annotated[str, _NAME], list[Annotated[str, _NAME]]] = Field(
        default_factory=dict, max_length=LIMITS.fallbacks
    )
    weights: WeightsConfig = WeightsConfig()
    policies: list[PolicyConfig] = Field(default_factory=list, max_length=LIMITS.policies)
    budget: BudgetConfig = BudgetConfig()
    key_budgets: dict[Annotated[str, _NAME], BudgetConfig] = Field(default_factory=dict, max_length=LIMITS.key_budgets)

    @field_validator("fallbacks")
    @classmethod
    def _fallbacks(cls, v: dict[str, list[str]]) -> dict[str, list[str]]:
        for model, chain in v.items():
            if len(chain) > LIMITS.fallback_chain:
                raise ValueError(
                    f"fallback chain of {model!r} has {len(chain)} models; at most {LIMITS.fallback_chain} are allowed"
                )
        return v

    def budgets(self) -> dict[str, BudgetConfig]:
        """Every configured budget by scope: `global` first, then the key budgets."""
        return {GLOBAL_SCOPE: self.budget, **self.key_budgets}

    def calendar(
        self, testing: TestingConfig | None = None, budgets: Mapping[str, BudgetConfig] | None = None
    ) -> BudgetCalendar:
        """The period rule of every configured budget scope (`budgets`, default this section's); other scopes
        (keys without a budget) follow the global one. `[testing] budget_period_seconds` replaces every rule by
        fixed-length periods."""
        budgets = self.budgets() if budgets is None else budgets
        if testing is not None and testing.budget_period_seconds:
            fixed = PeriodRule(seconds=testing.budget_period_seconds, anchor=testing.budget_period_anchor)
            return BudgetCalendar(fixed, dict.fromkeys(budgets, fixed))
        default = PeriodRule(self.budget.reset_day or 1)
        return BudgetCalendar(
            default, {s: PeriodRule(cfg.reset_day) if cfg.reset_day else default for s, cfg in budgets.items()}
        )

    @field_validator("aliases")
    @classmethod
    def _aliases(cls, v: dict[str, str]) -> dict[str, str]:
        for k, target in v.items():
            if not k or not target:
                raise ValueError("aliases need a non-empty name and target")
            if k == target:
                raise ValueError(f"alias cycle {k} -> {k}; remove the alias {k!r}")
        check_aliases(v)
        return v


class TestingConfig(BaseModel):
    """`[testing]`: knobs for tests and local experiments, never for production. They change how processes
    agree on time, so every process of a cluster must carry the same values; `nexus` logs a warning at
    start-up while any is set."""

    __test__ = False  # not a pytest test class
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    # > 0: every budget period lasts this many seconds, counted from budget_period_anchor (unix seconds),
    # instead of a calendar month; a rollover can then be seconds ahead
    budget_period_seconds: int = Field(default=0, ge=0, le=31 * 86400)
    budget_period_anchor: int = Field(default=0, ge=0, le=2**40)
    # > 0: rate limits (rpm, tpm) count over windows of this many seconds instead of 60 (tests of the bound)
    rate_window_seconds: float = Field(default=0.0, ge=0, le=3600)
    # added to the wall clock of router nodes and workers: a replica whose clock is off by this much
    clock_offset_seconds: float = Field(default=0.0, ge=-3600, le=3600)

    def knobs(self) -> dict[str, Any]:
        """The knobs set to something other than their default."""
        return self.model_dump(exclude_defaults=True)

    def clock(self) -> Callable[[], float]:
        """The wall clock of a router node or worker: `time.time`, skewed by `clock_offset_seconds`."""
        offset = self.clock_offset_seconds
        if not offset:
            return time.time
        return lambda: time.time() + offset


class ServerConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    max_body_bytes: int = Field(default=10 * 1024 * 1024, gt=0, le=2**40)
    api_keys: list[str] = Field(default_factory=list, description="sha256:<hex> digests of client keys")
    api_keys_env: str | None = Field(default=None, description="env var with comma-separated plain keys")
    # the variable holding the secret that managed client keys are hashed under (HMAC-SHA256, nexus.core.tenancy);
    # unset: one is generated and kept in Redis (`{config}:key_hash_secret`, docs/tenancy.md)
    key_hash_secret_env: str | None = Field(default=None, max_length=200, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    request_timeout_seconds: float = Field(default=300.0, gt=0)
    connect_timeout_seconds: float = Field(default=5.0, gt=0)
    # inference requests in progress on this replica (queued ones included) before new ones get a fast 503
    max_concurrent_requests: int = Field(default=1000, ge=1, le=10_000_000)
    # the largest non-streamed body a backend may answer (more: an upstream failure, failed over)
    max_response_bytes: int = Field(default=64 * 1024 * 1024, ge=1024, le=2**40)
    # what one client may make a replica hold (nexus/router_node/protocol.py): open connections, the size and
    # arrival time of a request head, the arrival time of a body, and idle time between requests
    max_connections: int = Field(default=4096, ge=1, le=10_000_000)
    max_header_bytes: int = Field(default=32 * 1024, ge=1024, le=16 * 1024 * 1024)
    max_headers: int = Field(default=100, ge=8, le=10_000)
    header_timeout_seconds: float = Field(default=10.0, gt=0, le=3600)
    body_timeout_seconds: float = Field(default=60.0, gt=0, le=3600)
    keepalive_timeout_seconds: float = Field(default=5.0, gt=0, le=3600)
    # with client keys set: whether GET /v1/models and GET /metrics need one too
    models_require_key: bool = True
    metrics_require_key: bool = False
    # on SIGTERM: not-ready (still serving) for this long so balancers polling /ready stop sending; after it new
    # requests get a fast 503 and the process exits once nothing is in flight (at most the 10 s drain time)
    drain_delay_seconds: float = Field(default=1.0, ge=0, le=300)

    @field_validator("api_keys")
    @classmethod
    def _hashed(cls, v: list[str]) -> list[str]:
        for key in v:
            digest = key.removeprefix("sha256:")
            if not key.startswith("sha256:") or len(digest) != 64:
                raise ValueError(
                    "api_keys holds sha256 digests ('sha256:' + 64 hex chars), never plain keys; "
                    "put plain keys in the variable named by api_keys_env instead"
                )
        return v


class RedisConfig(BaseModel):
    """Where the shared state lives (see `nexus.core.redis_conn`): a URL (standalone or
    `redis+sentinel://`), or `sentinels` + `master_name`; neither means nexus serve's embedded Redis."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    url: str = ""
    sentinels: list[str] = Field(default_factory=list, max_length=32)
    master_name: str = Field(default="mymaster", max_length=200)
    db: int = Field(default=0, ge=0, le=1_000_000)
    data_dir: str = ".nexus-data"
    snapshot_poll_seconds: float = Field(default=2.0, gt=0)
    # Telemetry flushes wait (Redis WAIT) until this many replicas hold the records before dropping them from
    # the node's buffer, so a primary failover loses none; 0: do not wait (standalone Redis).
    replica_acks: int = Field(default=0, ge=0, le=16)
    replica_ack_timeout_ms: int = Field(default=100, ge=1, le=60_000)

    @model_validator(mode="after")
    def _target(self) -> RedisConfig:
        if self.configured:
            try:
                self.target()
            except ConfigError as exc:
                raise ValueError(str(exc)) from None
        return self

    @property
    def configured(self) -> bool:
        """A shared Redis is named (else nexus serve embeds one)."""
        return bool(self.url or self.sentinels)

    def target(self, url: str | None = None) -> RedisTarget:
        """The Redis to connect to: `url` when given (a --redis-url), else this section's."""
        if url:
            return parse_target(url)
        return parse_target(self.url, self.sentinels, self.master_name, self.db)


class HealthCheckConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    enabled: bool = True
    interval_seconds: float = Field(default=10.0, gt=0)
    timeout_seconds: float = Field(default=5.0, gt=0)
    failure_threshold: int = Field(default=3, ge=1, le=1000)
    recovery_threshold: int = Field(default=2, ge=1, le=1000)


class QualityConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    # false: quality never excludes or demotes a backend (health, breakers and passive ejection still do)
    enabled: bool = True
    # a backend whose 1h error rate is at or above this is excluded; 0.0: any error excludes it
    error_rate_threshold: float = Field(default=0.5, ge=0, le=1)
    ttft_penalty_threshold_ms: float = Field(default=3000.0, gt=0)
    metrics_interval_seconds: float = Field(default=30.0, gt=0)
    min_requests: int = Field(
        default=5, ge=0, le=1_000_000_000, description="1h requests below which quality has no say"
    )
    # passive health, per router node: after this many consecutive upstream failures a backend goes to the
    # back of every decision's order for eject_seconds, before the health worker's probes catch up
    eject_after_failures: int = Field(default=3, ge=1, le=1000)
    eject_seconds: float = Field(default=10.0, ge=0, le=3600)
    # circuit breaker, per router node (nexus/router_node/breaker.py): after this many consecutive failures a
    # backend is excluded (fast 503 + Retry-After when nothing else serves); one trial request every
    # breaker_retry_seconds probes recovery; an upstream 429 cools a backend down for its Retry-After, capped
    breaker_failures: int = Field(default=5, ge=1, le=1000)
    breaker_retry_seconds: float = Field(default=1.0, gt=0, le=300)
    max_cooldown_seconds: float = Field(default=300.0, gt=0, le=3600)


class QueueConfig(BaseModel):
    # Rust Nexus's documented names are accepted as aliases: max_queue_size, default_timeout_seconds
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False, populate_by_name=True)

    enabled: bool = True
    max_size: int = Field(
        default=100, ge=0, le=10_000_000, validation_alias=AliasChoices("max_size", "max_queue_size")
    )
    max_wait_seconds: float = Field(
        default=30.0, gt=0, validation_alias=AliasChoices("max_wait_seconds", "default_timeout_seconds")
    )


class TelemetryConfig(BaseModel):
    """`[telemetry]`: the router node's telemetry buffer, the sampled ring of recent routing decisions the
    dashboard shows, and the optional OpenTelemetry trace export (the `otel` extra)."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    flush_interval_ms: int = Field(default=50, gt=0, le=60_000)
    buffer_max_records: int = Field(default=100_000, gt=0, le=100_000_000)
    # recent decisions kept per router node (model, backend, reason, trace; never prompt content)
    decisions_kept: int = Field(default=50, ge=0, le=10_000)
    decisions_sample_ratio: float = Field(default=0.1, ge=0, le=1)
    # OpenTelemetry: one span per request, children for the pipeline and each upstream attempt
    otel_enabled: bool = False
    otlp_endpoint: str = Field(default="http://127.0.0.1:4318/v1/traces", max_length=2000)
    otlp_headers: dict[str, str] = Field(default_factory=dict, max_length=32)
    service_name: str = Field(default="nexus", min_length=1, max_length=200)
    sample_ratio: float = Field(default=1.0, ge=0, le=1)


_LOG_LEVELS = ("trace", "debug", "info", "warn", "warning", "error", "critical")


class LoggingConfig(BaseModel):
    """`[logging]`: process logs and the one structured line per request (logger `nexus.request`)."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    level: Annotated[str, BeforeValidator(_lower)] = "info"
    format: Annotated[str, BeforeValidator(_lower)] = "pretty"
    # logger names below `nexus.` (e.g. routing, api, health, request) -> level
    component_levels: dict[
        Annotated[str, Field(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9_.]+$")],
        Annotated[str, BeforeValidator(_lower)],
    ] = Field(default_factory=dict, max_length=100)
    # true: request lines carry the messages (privacy risk; local debugging only). Never secrets.
    enable_content_logging: bool = False
    request_log: bool = True  # false: no per-request line

    @field_validator("level")
    @classmethod
    def _level(cls, v: str) -> str:
        if v not in _LOG_LEVELS:
            raise ValueError(f"unknown log level {v!r}; use one of {', '.join(_LOG_LEVELS)}")
        return v

    @field_validator("component_levels")
    @classmethod
    def _levels(cls, v: dict[str, str]) -> dict[str, str]:
        for name, level in v.items():
            if level not in _LOG_LEVELS:
                raise ValueError(f"{name}: unknown log level {level!r}; use one of {', '.join(_LOG_LEVELS)}")
        return v

    @field_validator("format")
    @classmethod
    def _format(cls, v: str) -> str:
        if v not in ("pretty", "json"):
            raise ValueError(f'unknown log format {v!r}; use "pretty" or "json"')
        return v


class AdminConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    token: str = ""
    port: int = Field(default=8001, ge=0, le=65535)
    url: str = Field(default="http://127.0.0.1:8000", description="where operator commands find the admin API")
    # how often the dashboard's one shared reading of the cluster is taken while a page is open
    dashboard_interval_seconds: float = Field(default=1.0, ge=0.05, le=60)


_SERVICE_TYPE = r"^_[A-Za-z0-9-]{1,15}\._(tcp|udp)\.local\.$"


def _trailing_dot(value: Any) -> Any:
    # Rust Nexus's example writes "_ollama._tcp.local" and adds the dot itself: so do we
    return value + "." if isinstance(value, str) and value.endswith(".local") else value


class DiscoveryConfig(BaseModel):
    """`[discovery]` (names as in Rust Nexus's config): browse mDNS for local inference servers and write what
    answers into desired state as `source = "discovered"` backends (issue 18: the discovery job is not built yet).
    Off unless enabled: an enabled cluster multicasts on `interfaces` (empty: every interface)."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    enabled: bool = False
    service_types: list[Annotated[str, BeforeValidator(_trailing_dot), Field(pattern=_SERVICE_TYPE)]] = Field(
        default_factory=lambda: ["_ollama._tcp.local.", "_llm._tcp.local."], min_length=1, max_length=16
    )
    # a backend that stops answering (its announcement gone, or its health probe failing) is kept this long
    grace_period_seconds: float = Field(default=60.0, ge=0, le=86400)
    # how often the discovery job re-reads what the browser has seen and writes it to desired state
    browse_interval_seconds: float = Field(default=10.0, gt=0, le=3600)
    # how long one browse listens for answers (mDNS responders answer within about 0.5 s)
    browse_seconds: float = Field(default=1.5, gt=0, le=60)
    # the addresses to multicast on (IPv4 addresses of local interfaces); empty: every interface
    interfaces: list[str] = Field(default_factory=list, max_length=64)
    # at most this many discovered backends (announcements past it are ignored and logged)
    max_backends: int = Field(default=256, ge=1, le=LIMITS.backends)
    # announced addresses outside these networks are skipped: anyone on the link can announce a service, and
    # a discovered local backend gets restricted traffic, so by default only private and link-local ones
    allowed_networks: list[str] = Field(
        default_factory=lambda: ["10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "127.0.0.0/8", "169.254.0.0/16",
                                 "fc00::/7", "fe80::/10", "::1/128"],
        max_length=256,
    )

    @field_validator("allowed_networks")
    @classmethod
    def _networks(cls, v: list[str]) -> list[str]:
        for net in v:
            try:
                ipaddress.ip_network(net, strict=False)
            except ValueError:
                raise ValueError(f"{net!r} is not a network; give CIDRs such as 192.168.0.0/16") from None
        return v

    def allows(self, address: str) -> bool:
        """Whether an announced address lies in `allowed_networks`."""
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        return any(ip in ipaddress.ip_network(n, strict=False) for n in self.allowed_networks)

    @field_validator("interfaces")
    @classmethod
    def _addresses(cls, v: list[str]) -> list[str]:
        for address in v:
            try:
                ipaddress.IPv4Address(address)
            except ValueError:
                raise ValueError(f"{address!r} is not an IPv4 address; list addresses such as 127.0.0.1") from None
        return v


class FleetConfig(BaseModel):
    """`[fleet]`: pre-warming from demand. The worker counts per-model requests over `window_seconds` and
    recommends loading a model (on an Ollama backend that lists it but has it unloaded) whose rate reaches
    `prewarm_min_requests_per_minute`; with `auto_prewarm` it performs those loads itself."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    auto_prewarm: bool = False
    interval_seconds: float = Field(default=30.0, gt=0, le=3600)
    window_seconds: float = Field(default=900.0, ge=60, le=86400)
    prewarm_min_requests_per_minute: float = Field(default=1.0, gt=0, le=1_000_000)
    max_recommendations: int = Field(default=50, ge=1, le=1000)


class LifecycleConfig(BaseModel):
    """`[lifecycle]`: model load, unload and migrate on Ollama backends through its native API (`/api/ps`,
    `/api/generate` with `keep_alive`, `/api/pull`)."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    # Ollama's keep_alive for a load: how long the model stays in memory unused ("-1": until unloaded)
    keep_alive: str = Field(default="30m", pattern=r"^(-1|0|[0-9]{1,6}(ms|s|m|h)?)$")
    load_timeout_seconds: float = Field(default=600.0, gt=0, le=86400)
    # pull a model the backend lacks before loading it (`/api/pull`); off: loading a missing model is a 409
    pull_missing: bool = False
    pull_timeout_seconds: float = Field(default=3600.0, gt=0, le=86400)
    # how often a load in progress is checked against /api/ps, and how long a finished operation stays listed
    poll_seconds: float = Field(default=0.5, gt=0, le=60)
    status_retention_seconds: float = Field(default=3600.0, ge=1, le=7 * 86400)


class DesiredConfig(BaseModel):
    """What the admin API changes live and Redis stores: backends and routing."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    backends: list[BackendConfig] = Field(default_factory=list, max_length=LIMITS.backends)
    routing: RoutingConfig = RoutingConfig()
    keys: list[KeyConfig] = Field(default_factory=list, max_length=LIMITS.keys)
    teams: list[TeamConfig] = Field(default_factory=list, max_length=LIMITS.teams)

    def budgets(self) -> dict[str, BudgetConfig]:
        """Every budget by scope: `global`, the key budgets of `[routing]`, then each key's and team's own
        (nexus.core.tenancy: a key's scope is its id, a team's `team:<name>`)."""
        out = self.routing.budgets()
        for k in self.keys:
            if k.budget is not None and k.revoked_at is None:
                out[k.id] = BudgetConfig.model_validate(k.budget)
        for t in self.teams:
            if t.budget is not None:
                out[team_scope(t.name)] = BudgetConfig.model_validate(t.budget)
        return out

    def calendar(self, testing: TestingConfig | None = None) -> BudgetCalendar:
        """`RoutingConfig.calendar` over every budget of `budgets()`."""
        return self.routing.calendar(testing, self.budgets())

    @model_validator(mode="after")
    def _tenants(self) -> DesiredConfig:
        teams = {t.name for t in self.teams}
        if len(teams) != len(self.teams):
            raise ValueError("a team name is used twice; team names must be unique")
        ids: set[str] = set()
        digests: set[str] = set()
        for k in self.keys:
            if k.id in ids:
                raise ValueError(f"key id {k.id!r} is used twice; key ids must be unique")
            ids.add(k.id)
            if k.team is not None and k.team not in teams:
                raise ValueError(f"key {k.id!r}: team {k.team!r} does not exist; create the team first")
            for d in (k.digest, k.previous_digest):
                if d is not None and d in digests:
                    raise ValueError(f"key {k.id!r}: its digest is another key's; every key needs its own secret")
                if d is not None:
                    digests.add(d)
        return self

    @model_validator(mode="after")
    def _cross_checks(self) -> DesiredConfig:
        names: set[str] = set()
        models = 0
        for b in self.backends:
            if b.name in names:
                raise ValueError(f"backend name {b.name!r} is used twice; backend names must be unique")
            names.add(b.name)
            models += len(b.models)
        if models > LIMITS.models_total:
            raise ValueError(f"{models} model entries over all backends; at most {LIMITS.models_total} are allowed")
        return self


class _NexusEnvSource(PydanticBaseSettingsSource):
    """`NEXUS_<SECTION>_<KEY>` for every scalar key of every section; `NEXUS_BUDGET_<KEY>` for the
    global budget. Names are derived from the model, so a new key is overridable without code here."""

    def __init__(self, settings_cls: type[BaseSettings], environ: Mapping[str, str]) -> None:
        super().__init__(settings_cls)
        self._environ = environ

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        env = self._environ
        out: dict[str, Any] = {}
        sections: list[tuple[tuple[str, ...], str, type[BaseModel]]] = [
            ((name,), name.upper(), info.annotation)  # type: ignore[misc]
            for name, info in NexusSettings.model_fields.items()
            if isinstance(info.annotation, type) and issubclass(info.annotation, BaseModel)
        ]
        sections.append((("routing", "budget"), "BUDGET", BudgetConfig))
        for path, prefix, model in sections:
            for key, info in model.model_fields.items():
                if isinstance(info.annotation, type) and issubclass(info.annotation, BaseModel):
                    continue
                raw = env.get(f"NEXUS_{prefix}_{key.upper()}")
                if raw is None:
                    continue
                listed = key in ("api_keys", "sentinels", "service_types", "interfaces", "allowed_networks")
                value: Any = [p.strip() for p in raw.split(",") if p.strip()] if listed else raw
                node = out
                for part in path:
                    node = node.setdefault(part, {})
                node[key] = value
        return out


class NexusSettings(BaseSettings):
    model_config = SettingsConfigDict(extra="ignore", frozen=True)

    server: ServerConfig = ServerConfig()
    redis: RedisConfig = RedisConfig()
    admin: AdminConfig = AdminConfig()
    backends: list[BackendConfig] = Field(default_factory=list)
    routing: RoutingConfig = RoutingConfig()
    keys: list[KeyConfig] = Field(default_factory=list)
    teams: list[TeamConfig] = Field(default_factory=list)
    health_check: HealthCheckConfig = HealthCheckConfig()
    quality: QualityConfig = QualityConfig()
    queue: QueueConfig = QueueConfig()
    telemetry: TelemetryConfig = TelemetryConfig()
    logging: LoggingConfig = LoggingConfig()
    testing: TestingConfig = TestingConfig()
    discovery: DiscoveryConfig = DiscoveryConfig()
    fleet: FleetConfig = FleetConfig()
    lifecycle: LifecycleConfig = LifecycleConfig()
    secrets: dict[Annotated[str, Field(max_length=200, pattern=SECRET_NAME_PATTERN)], SecretConfig] = Field(
        default_factory=dict
    )
    # secret name -> reason, for secrets whose variable was unset when load_settings read the environment
    _missing_keys: dict[str, str] = PrivateAttr(default_factory=dict)

    @property
    def missing_keys(self) -> Mapping[str, str]:
        """Secret name -> "API key variable X is not set", as `load_settings` found the environment."""
        return self._missing_keys

    @model_validator(mode="before")
    @classmethod
    def _implied_secrets(cls, data: Any) -> Any:
        if isinstance(data, Mapping):
            data = dict(data)
            _check_sections(data)
            implied_secrets(data)
        return data

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The TOML arrives through init values (load_settings); env must beat it, so merge by hand there.
        return (init_settings,)

    @model_validator(mode="after")
    def _cross_checks(self) -> NexusSettings:
        DesiredConfig(backends=self.backends, routing=self.routing, keys=self.keys, teams=self.teams)
        problems = check_secret_refs(self.backends, self.secrets)
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def desired(self) -> DesiredConfig:
        return validate_desired(
            {"backends": self.backends, "routing": self.routing, "keys": self.keys, "teams": self.teams}, "nexus.toml"
        )


def _check_sections(data: dict[str, Any]) -> None:
    """Refuse an unknown top-level section (a typo such as `[helth_check]` used to pass silently), naming the
    closest known one."""
    known = list(NexusSettings.model_fields)
    for name in list(data):
        if name not in known:
            close = difflib.get_close_matches(str(name), known, n=1, cutoff=0.6)
            hint = f"did you mean [{close[0]}]?" if close else f"known sections: {', '.join(sorted(known))}"
            raise ValueError(f"unknown section [{name}]; {hint}")


def missing_key_reasons(settings: NexusSettings, environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """Secret name -> why a backend using it cannot be used here: the variable holding its key is unset or
    empty in this process. Such backends are kept (and shown) but excluded from routing with this reason."""
    return {
        name: f"API key variable {s.env} is not set"
        for name, s in settings.secrets.items()
        if resolve_secret(s.env, environ) is None
    }


def _deep_merge(base: dict[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in over.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _loc(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part.startswith(("function-", "tagged-union")) or part in ("str", "int", "float"):
            continue
        else:
            out += f".{part}" if out else part
    return out or "(top level)"


def format_validation_error(exc: ValidationError, source: str, data: Any = None) -> str:
    """One line per problem: `<source>: <key>: <message>`, with backend names where known."""
    return format_errors(exc.errors(), source, data)


def format_errors(errors: Any, source: str, data: Any = None) -> str:
    """`format_validation_error` over pydantic's error dicts. Inputs are never repeated (they may hold
    credentials); only where the problem is and what it is."""
    lines = []
    for err in errors:
        loc = tuple(err["loc"])
        where = _loc(loc)
        if data is not None and len(loc) >= 2 and loc[0] == "backends" and isinstance(loc[1], int):
            with contextlib.suppress(KeyError, IndexError, TypeError):
                where += f" (backend {data['backends'][loc[1]]['name']!r})"
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown key; check its spelling against examples/nexus.toml"
        lines.append(f"{source}: {where}: {msg}")
    return "\n".join(lines)


def validate_desired(data: Any, source: str) -> DesiredConfig:
    """The one check of desired state, wherever it enters: nexus.toml (`NexusSettings.desired`), every admin
    write (`nexus.core.state`, the config import), and every read from Redis that a snapshot is built from
    (`nexus.core.fetch`). What passes here compiles: a policy glob is checked by the very parser that
    compiles it (`nexus.core.globs`), and sizes are bounded (`LIMITS`). ConfigError names each bad key."""
    try:
        return DesiredConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, source, data if isinstance(data, Mapping) else None)) from None


def check_secret_refs(backends: list[BackendConfig], secrets: Mapping[str, SecretConfig]) -> list[str]:
    """One line per backend that references an undeclared secret or one its URL's host may not get."""
    return [p for b in backends if (p := check_backend_secret(b, secrets)) is not None]


def resolve_secret(env_name: str, environ: Mapping[str, str] | None = None) -> str | None:
    """The value of an environment variable holding a secret, or None. Never logged, never stored."""
    value = (os.environ if environ is None else environ).get(env_name)
    return value or None


def key_for(
    secret: str | None, url: str, secrets: Mapping[str, SecretConfig], environ: Mapping[str, str] | None = None
) -> str | None:
    """The key to send to the backend at `url`, or None when it has no secret (or its variable is empty).
    Raises `nexus.core.secrets.SecretRefused` when the secret is undeclared or `url`'s host is not one of
    its hosts: nothing may then be sent with it."""
    if secret is None:
        return None
    return resolve_secret(secret_allowed(secret, url, secrets).env, environ)


def load_settings(
    path: str | Path | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> NexusSettings:
    """Read `path` (if any), apply NEXUS_* overrides and `overrides`, validate everything. A secret whose
    variable is unset does not stop start-up: its backends are excluded with a reason (`missing_key_reasons`)."""
    env = os.environ if environ is None else environ
    source = str(path) if path is not None else "environment"
    data: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        try:
            data = tomllib.loads(p.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"{source}: file not found; pass --config with the path of your nexus.toml") from None
        except OSError as exc:
            raise ConfigError(f"{source}: cannot read the file ({exc.strerror})") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{source}: not valid TOML: {exc}") from exc
    env_values = _NexusEnvSource(NexusSettings, env)()
    data = _deep_merge(data, env_values)
    if overrides:
        data = _deep_merge(data, overrides)
    try:
        settings = NexusSettings(**data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, source, data)) from None
    settings._missing_keys = missing_key_reasons(settings, env)
    return settings
