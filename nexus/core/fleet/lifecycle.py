"""Model lifecycle, the pure part: operations (load, unload, migrate), the marks routers honour, pre-warming.

An operation is written by the admin API as `pending` ({fleet} ops) and carried out by the lifecycle job of
one worker (nexus/worker/lifecycle.py) under a lease of its own, step by step:

    load     mark (backend, model) `loading` -> Ollama loads it (`/api/generate` with keep_alive) -> /api/ps
             lists it -> mark cleared
    unload   mark (backend, model) `draining` -> routers stop choosing it for the model (one snapshot poll)
             -> `/api/generate` with keep_alive 0 -> /api/ps no longer lists it -> mark `unloaded`, kept for
             `status_retention_seconds` (or until a load there), so routers do not make Ollama reload it
    migrate  load on `target`, then unload on `source`: the model is served throughout

Marks live in `{observed} lifecycle` with a deadline (`until`), so a worker that dies mid-operation leaves
nothing lasting. In a snapshot, a `loading` backend is LOADING for that model only (the scheduler queues a
request whose best candidate is loading, exactly as for a warming backend), and a `draining` one is left out
of that model's candidates while another candidate remains.
"""

from __future__ import annotations

import itertools
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field

from nexus.core.config import LIMITS

__all__ = [
    "LifecycleMark",
    "MarkState",
    "OpKind",
    "OpState",
    "Operation",
    "Recommendation",
    "decode_marks",
    "rate_per_minute",
    "recommend",
]

_NAME = Field(min_length=1, max_length=LIMITS.name_length)


class MarkState(StrEnum):
    LOADING = "loading"
    DRAINING = "draining"
    UNLOADED = "unloaded"  # an unload finished: left out like draining until loaded again (or the deadline)


@dataclass(frozen=True, slots=True)
class LifecycleMark:
    state: MarkState
    op: str
    until: float


log = logging.getLogger("nexus.fleet")


def decode_marks(reply: Any) -> dict[str, dict[str, LifecycleMark]]:
    """HGETALL of `{observed} lifecycle` as backend -> model -> mark; malformed entries are skipped with a
    warning (a router must never fail on them)."""
    out: dict[str, dict[str, LifecycleMark]] = {}
    items = reply.items() if isinstance(reply, dict) else []
    for raw_backend, raw in items:
        backend = raw_backend.decode() if isinstance(raw_backend, bytes) else str(raw_backend)
        try:
            marks = orjson.loads(raw)
            for model, m in marks.items():
                out.setdefault(backend, {})[str(model)] = LifecycleMark(
                    MarkState(m["state"]), str(m["op"]), float(m["until"])
                )
        except (orjson.JSONDecodeError, AttributeError, KeyError, TypeError, ValueError):
            log.warning("skipping a malformed lifecycle mark of %r", backend[:80])
    return out


class OpKind(StrEnum):
    LOAD = "load"
    UNLOAD = "unload"
    MIGRATE = "migrate"


class OpState(StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"


class Operation(BaseModel):
    """One lifecycle operation as stored and as the admin API shows it."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    id: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9-]+$")
    kind: OpKind
    model: str = _NAME
    backend: str | None = Field(default=None, min_length=1, max_length=200)  # load / unload
    source: str | None = Field(default=None, min_length=1, max_length=200)  # migrate: from
    target: str | None = Field(default=None, min_length=1, max_length=200)  # migrate: to
    state: OpState = OpState.PENDING
    step: str = ""
    error: str | None = Field(default=None, max_length=2000)
    created_at: float
    updated_at: float

    @property
    def finished(self) -> bool:
        return self.state in (OpState.DONE, OpState.FAILED)


class Recommendation(BaseModel):
    model_config = ConfigDict(frozen=True)

    model: str
    backend: str
    action: Literal["load"] = "load"
    requests_per_minute: float
    reason: str
    performed: bool = False


def recommend(
    rates: Mapping[str, float],
    installed: Mapping[str, Sequence[str]],
    loaded: Mapping[str, Sequence[str]],
    min_rate: float,
    limit: int,
) -> list[Recommendation]:
    """Load recommendations: a model whose request rate (per minute, over the window) reaches `min_rate`
    and that no Ollama backend has loaded, on the backend that has it installed with the fewest models
    loaded (ties by name). Busiest models first; at most `limit`."""
    out: list[Recommendation] = []
    for model, rate in sorted(rates.items(), key=lambda kv: (-kv[1], kv[0])):
        if not math.isfinite(rate) or rate < min_rate:
            continue
        if any(model in models for models in loaded.values()):
            continue
        hosts = sorted((len(loaded.get(b, ())), b) for b, models in installed.items() if model in models)
        if not hosts:
            continue
        backend = hosts[0][1]
        out.append(Recommendation(
            model=model, backend=backend, requests_per_minute=round(rate, 3),
            reason=f"{rate:.2f} requests/min (threshold {min_rate:g}) and not loaded anywhere; {backend} has it "
                   f"installed with {hosts[0][0]} model(s) loaded",
        ))
        if len(out) >= limit:
            break
    return out


def rate_per_minute(samples: Sequence[tuple[float, int]], now: float, window: float) -> float:
    """Requests per minute from cumulative counter samples (time, count) inside `window`; a counter that went
    down (a new budget period) restarts the count."""
    inside = [(t, c) for t, c in samples if now - t <= window]
    if len(inside) < 2:
        return 0.0
    total = 0
    for (_, a), (_, b) in itertools.pairwise(inside):
        total += b - a if b >= a else b
    elapsed = inside[-1][0] - inside[0][0]
    return total * 60.0 / elapsed if elapsed > 0 else 0.0
