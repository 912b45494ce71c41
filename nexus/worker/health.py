"""The health state machine and probe-reply parsing: pure functions, no I/O, no clock.

`next_health(previous record, probe result, policy, now)` is the whole decision. States:

- healthy / unhealthy: decided by consecutive probe results against the thresholds;
- loading: the backend answered 503 with a body mentioning "loading" (or the caller says it is inside
  a configured warm-up). Loading is a sign of life, not a failure: it resets both counters;
- unknown: not enough history yet. A never-seen backend and a record older than `policy.stale_after`
  (twice the health interval: the age at which the snapshot stops trusting it) start from unknown with
  zeroed counters; a backend stays unknown while it fails fewer than F times in a row.

Transitions (F = failure_threshold, R = recovery_threshold, counters after this probe):

    previous      probe ok                        probe failed                      probe loading
    unknown       healthy                         unhealthy if fails >= F else unknown   loading
    healthy       healthy                         unhealthy if fails >= F else healthy   loading
    loading       healthy                         unhealthy if fails >= F else loading   loading
    unhealthy     healthy if oks >= R else unh.   unhealthy                         loading

A success resets the failure counter and a failure the success counter, so only *consecutive* results
count. The latency EMA (`alpha` weight on the new sample) moves on successful probes only; discovered
models are replaced on successful probes that report models and kept otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from pydantic import ValidationError

from nexus.core.adapters import ListedModel, adapter_for
from nexus.core.config import LIMITS, HealthCheckConfig, ModelConfig
from nexus.core.model import HealthState
from nexus.core.observed import HealthRecord

__all__ = [
    "DEFAULT_EMA_ALPHA",
    "HealthPolicy",
    "ProbeResult",
    "ProbeStatus",
    "is_loading_reply",
    "next_health",
    "parse_models",
    "warming_up",
]

DEFAULT_EMA_ALPHA = 0.3


class ProbeStatus(StrEnum):
    OK = "ok"
    FAILED = "failed"
    LOADING = "loading"


@dataclass(frozen=True, slots=True)
class ProbeResult:
    status: ProbeStatus
    latency_ms: float | None = None
    models: tuple[ModelConfig, ...] = ()
    error: str = ""  # operator-facing reason of a failure; never holds secrets


@dataclass(frozen=True, slots=True)
class HealthPolicy:
    failure_threshold: int = 3
    recovery_threshold: int = 2
    stale_after: float = 20.0
    ema_alpha: float = DEFAULT_EMA_ALPHA

    @classmethod
    def from_config(cls, cfg: HealthCheckConfig, ema_alpha: float = DEFAULT_EMA_ALPHA) -> HealthPolicy:
        return cls(cfg.failure_threshold, cfg.recovery_threshold, 2.0 * cfg.interval_seconds, ema_alpha)


def _usable(prev: HealthRecord | None, policy: HealthPolicy, now: float) -> HealthRecord | None:
    if prev is None or now - prev.checked_at > policy.stale_after:
        return None
    return prev


def next_health(
    prev: HealthRecord | None, probe: ProbeResult, policy: HealthPolicy, now: float, *, warming_up: bool = False
) -> HealthRecord:
    """The record to store after `probe`. `warming_up` turns a failure into loading (a configured warm-up)."""
    base = _usable(prev, policy, now)
    state = base.state if base is not None else HealthState.UNKNOWN
    fails = base.consecutive_failures if base is not None else 0
    oks = base.consecutive_successes if base is not None else 0
    latency = prev.latency_ema_ms if prev is not None else None
    models = list(prev.models) if prev is not None else []
    status = ProbeStatus.LOADING if probe.status is ProbeStatus.FAILED and warming_up else probe.status

    if status is ProbeStatus.LOADING:
        state, fails, oks = HealthState.LOADING, 0, 0
    elif status is ProbeStatus.OK:
        fails, oks = 0, oks + 1
        if state is not HealthState.UNHEALTHY or oks >= policy.recovery_threshold:
            state = HealthState.HEALTHY
        if probe.latency_ms is not None:
            a = policy.ema_alpha
            latency = probe.latency_ms if latency is None else a * probe.latency_ms + (1 - a) * latency
        if probe.models:
            models = list(probe.models)
    else:
        fails, oks = fails + 1, 0
        if fails >= policy.failure_threshold:
            state = HealthState.UNHEALTHY
    return HealthRecord(
        state=state,
        checked_at=now,
        models=models,
        latency_ema_ms=latency,
        consecutive_failures=fails,
        consecutive_successes=oks,
        first_seen=prev.first_seen if prev is not None and prev.first_seen is not None else now,
    )


def warming_up(prev: HealthRecord | None, warmup_seconds: float, now: float) -> bool:
    """Inside the backend's configured warm-up, counted from the first probe the worker made of it."""
    if warmup_seconds <= 0:
        return False
    first = prev.first_seen if prev is not None and prev.first_seen is not None else now
    return now - first < warmup_seconds


def is_loading_reply(status: int, body: bytes) -> bool:
    """A 503 whose body says the model is loading (Ollama, vLLM, llama.cpp and the fake backend do)."""
    return status == 503 and b"loading" in body.lower()


def _model(listed: ListedModel) -> ModelConfig | None:
    extra = {k: v for k, v in (("vision", listed.vision), ("tools", listed.tools)) if v is not None}
    try:
        return ModelConfig(name=listed.name, context_length=listed.context_length, **extra)
    except ValidationError:  # a name past the length bound, an absurd context length: not a model we keep
        return None


def parse_models(backend_type: str, payload: Any) -> tuple[ModelConfig, ...]:
    """Models from a probe reply, read by the backend type's adapter (OpenAI-style `{"data": [{"id": ...}]}`,
    Anthropic's too; Ollama's `{"models": [{"name": ...}]}`), bounded here: context length and capabilities
    are taken where reported, an entry past a bound is skipped, never an error, and the first of two
    entries with one name wins. At most `LIMITS.models_per_backend` are kept: a backend's list is observed
    state every snapshot carries, so it is bounded like configured models."""
    out: dict[str, ModelConfig] = {}
    for listed in adapter_for(backend_type).list_models(payload):
        if (m := _model(listed)) is not None:
            out.setdefault(m.name, m)
            if len(out) >= LIMITS.models_per_backend:
                break
    return tuple(out.values())
