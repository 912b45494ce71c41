"""Telemetry aggregates, the pure part: which integer counters one record adds, and how to read them back.

Router nodes' telemetry batches add their records' counters to two kinds of Redis hashes (summed per batch
by `nexus.core.batching`, written by `nexus.core.telemetry_store`, read by `nexus.core.aggregate_store`;
this module only decides *what* to add):

- the period aggregate `{telemetry}:agg:<period>`: fields `<dimension>.<metric>[:<value>]`, e.g.
  `total.nusd`, `backend.requests:gpu-box`, `model.prompt_tokens:llama3:8b`, `key.nusd:team-a`. The
  dimension and metric never contain `:`, so everything after the first `:` is the value, however many
  colons a model name has. The `key` dimension of `agg:<period>` counts in the period of the key's own
  budget (`nexus.core.periods`): the global period unless the key budget has its own reset day.
- per backend and UTC hour, quality counts per minute: fields `<MM>.<metric>` in
  `{telemetry}:quality:<backend>:<YYYYMMDDHH>`.

Invariants:
- Every counter is an integer: money in nano-USD (`round(usd * 1e9)`), TTFB in microseconds. Integer
  sums do not depend on the order records are added in or how they are grouped into batches: a batch's
  sums are exactly its records' counters one by one, bit for bit.
- A record id `<request id>:<n>` is a failed attempt before failover (cost 0): it counts under
  `failed_attempts` (and as an errored request in quality), never under `requests`.
- What counts as a backend error (quality and the `errors` metric): `upstream_error`, `midstream_error`,
  and an answered status of 5xx or 429. A `client_disconnected` or a 4xx answer (the client's fault) is
  a request, not an error.
- TTFB averages only cover non-error records that carry a TTFB.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from nexus.core.telemetry_records import Outcome, TelemetryRecord
from nexus.core.tenancy import team_scope

__all__ = [
    "DIMENSIONS",
    "ERROR_OUTCOMES",
    "MAX_RECORD_TOKENS",
    "MAX_RECORD_USD",
    "METRICS",
    "NANO",
    "QUALITY_METRICS",
    "QUALITY_WINDOW_SECONDS",
    "Aggregate",
    "MinuteCounts",
    "Totals",
    "aggregate_field",
    "aggregate_fields",
    "day_start",
    "hour_of",
    "hour_start",
    "inconsistencies",
    "is_attempt",
    "is_error",
    "is_key_field",
    "minute_of",
    "parse_aggregate",
    "parse_quality_hour",
    "quality_increments",
    "quality_metrics",
    "record_dimensions",
    "record_increments",
    "record_metrics",
    "record_problem",
    "to_nano",
]

NANO = 1_000_000_000
ERROR_OUTCOMES = frozenset({Outcome.UPSTREAM_ERROR, Outcome.MIDSTREAM_ERROR})
METRICS = ("requests", "failed_attempts", "errors", "nusd", "prompt_tokens", "completion_tokens")
DIMENSIONS = ("total", "backend", "model", "key")
QUALITY_METRICS = ("requests", "errors", "ttfb_us", "ttfb_count")
# Records older than this (relative to the batch's clock) cannot affect any quality window any more.
QUALITY_WINDOW_SECONDS = 24 * 3600


# Per-record bounds, far above any real request, so that sums of a period's records stay far inside the
# 64-bit integers of HINCRBY (10^9 tokens and 10^13 nano-USD per record, times 10^5 per batch).
MAX_RECORD_TOKENS = 1_000_000_000
MAX_RECORD_USD = 10_000.0
_MAX_MS = 10.0 * 86400 * 1000


def _bounded(value: float, high: float) -> bool:
    return math.isfinite(value) and 0 <= value <= high


def record_problem(rec: TelemetryRecord) -> str | None:
    """Why `rec` cannot be counted (a value out of its bounds), or None when it can."""
    for name in ("prompt_tokens", "completion_tokens"):
        value = getattr(rec, name)
        if not 0 <= value <= MAX_RECORD_TOKENS:
            return f"{name} = {value} is outside 0..{MAX_RECORD_TOKENS}"
    if not _bounded(rec.cost_usd, MAX_RECORD_USD):
        return f"cost_usd = {rec.cost_usd!r} is outside 0..{MAX_RECORD_USD:g}"
    if not _bounded(rec.latency_ms, _MAX_MS) or (rec.ttfb_ms is not None and not _bounded(rec.ttfb_ms, _MAX_MS)):
        return "latency_ms or ttfb_ms is negative, not finite or longer than 10 days"
    if not 0 <= rec.retries <= 1000 or not 0 <= rec.status <= 999:
        return f"retries = {rec.retries} or status = {rec.status} is out of range"
    return None


def inconsistencies(agg: Aggregate) -> list[str]:
    """Where a period's totals differ from the sum of a breakdown that covers every record (backend, model):
    empty when the aggregate is consistent. (Keys cover only keyed records, in their own budget's period.)"""
    out = []
    for metric in METRICS:
        total = getattr(agg.total, metric)
        for dimension, parts in (("backend", agg.by_backend), ("model", agg.by_model)):
            summed = sum(getattr(t, metric) for t in parts.values())
            if summed != total:
                out.append(f"total.{metric} = {total} but the sum over {dimension} is {summed}")
    return out


def to_nano(usd: float) -> int:
    return round(usd * NANO)


def is_attempt(rec: TelemetryRecord) -> bool:
    """Request ids are uuid hex; router nodes add `:<n>` for a failed attempt before failover."""
    return ":" in rec.id


def is_error(rec: TelemetryRecord) -> bool:
    if rec.outcome in ERROR_OUTCOMES:
        return True
    if rec.outcome in (Outcome.OK, Outcome.CLIENT_DISCONNECTED):
        return False
    return rec.status >= 500 or rec.status == 429


def aggregate_field(dimension: str, metric: str, value: str | None = None) -> str:
    if dimension == "total":
        return f"total.{metric}"
    return f"{dimension}.{metric}:{value}"


def is_key_field(name: str) -> bool:
    """Whether aggregate field `name` is of the `key` dimension (counted in the key budget's period)."""
    return name.startswith("key.")


def record_metrics(rec: TelemetryRecord) -> dict[str, int]:
    """Metric -> amount this record adds under each of its dimensions (zero amounts included)."""
    return {
        "failed_attempts" if is_attempt(rec) else "requests": 1,
        "errors": int(is_error(rec) and not is_attempt(rec)),
        "nusd": to_nano(rec.cost_usd),
        "prompt_tokens": rec.prompt_tokens,
        "completion_tokens": rec.completion_tokens,
    }


def record_dimensions(rec: TelemetryRecord) -> tuple[tuple[str, str | None], ...]:
    """The (dimension, value) pairs a record counts under."""
    if not rec.key:
        return (("total", None), ("backend", rec.backend), ("model", rec.model))
    if rec.team:  # a team is a budget scope like a key (nexus.core.tenancy): `key.<metric>:team:<name>`
        return (("total", None), ("backend", rec.backend), ("model", rec.model), ("key", rec.key),
                ("key", team_scope(rec.team)))
    return (("total", None), ("backend", rec.backend), ("model", rec.model), ("key", rec.key))


def aggregate_fields(dims: tuple[tuple[str, str | None], ...], metrics: Mapping[str, int]) -> dict[str, int]:
    """Aggregate field -> amount: `metrics` under each of `dims` (zero amounts left out)."""
    return {aggregate_field(d, m, v): n for d, v in dims for m, n in metrics.items() if n}


def record_increments(rec: TelemetryRecord) -> dict[str, int]:
    """Aggregate field -> amount this record adds (zero amounts left out)."""
    return aggregate_fields(record_dimensions(rec), record_metrics(rec))


def _utc(ts: float) -> datetime:
    # floored to the second, as nexus.core.periods does: fromtimestamp would round 12:59:59.9999997 up
    return datetime.fromtimestamp(math.floor(ts), UTC)


def hour_of(ts: float) -> str:
    return _utc(ts).strftime("%Y%m%d%H")


def day_start(day: str) -> float:
    """Unix seconds at the start of UTC day `YYYY-MM-DD`."""
    return datetime.strptime(day, "%Y-%m-%d").replace(tzinfo=UTC).timestamp()


def hour_start(hour: str) -> float:
    """Unix seconds at the start of UTC hour `YYYYMMDDHH`."""
    return datetime.strptime(hour, "%Y%m%d%H").replace(tzinfo=UTC).timestamp()


def quality_metrics(rec: TelemetryRecord) -> dict[str, int]:
    """Quality metric -> amount this record adds to its minute."""
    if is_error(rec):
        return {"requests": 1, "errors": 1}
    if rec.ttfb_ms is not None:
        return {"requests": 1, "ttfb_us": round(rec.ttfb_ms * 1000), "ttfb_count": 1}
    return {"requests": 1}


def minute_of(ts: float) -> str:
    """The minute (`MM`) of the UTC hour holding `ts`."""
    return _utc(ts).strftime("%M")


def quality_increments(rec: TelemetryRecord, now: float) -> tuple[str, dict[str, int]] | None:
    """(UTC hour `YYYYMMDDHH`, {`<MM>.<metric>`: amount}) for the record's backend, or None when the record
    is too old to matter for any quality window."""
    if rec.ts < now - QUALITY_WINDOW_SECONDS:
        return None
    minute = minute_of(rec.ts)
    return hour_of(rec.ts), {f"{minute}.{m}": n for m, n in quality_metrics(rec).items()}


@dataclass(frozen=True, slots=True)
class Totals:
    requests: int = 0
    failed_attempts: int = 0
    errors: int = 0
    nusd: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0

    @property
    def usd(self) -> float:
        return self.nusd / NANO

    def as_dict(self) -> dict[str, Any]:
        return {
            "usd": self.usd,
            "requests": self.requests,
            "errors": self.errors,
            "failed_attempts": self.failed_attempts,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
        }


@dataclass(frozen=True, slots=True)
class Aggregate:
    """One period's telemetry aggregate."""

    total: Totals = field(default_factory=Totals)
    by_backend: Mapping[str, Totals] = field(default_factory=dict)
    by_model: Mapping[str, Totals] = field(default_factory=dict)
    by_key: Mapping[str, Totals] = field(default_factory=dict)

    def scope_usd(self, scope: str, global_scope: str) -> float:
        """Spend of a budget scope: the global total, or one API key's."""
        if scope == global_scope:
            return self.total.usd
        return self.by_key.get(scope, Totals()).usd


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def parse_aggregate(raw: Mapping[Any, Any]) -> Aggregate:
    """An `agg:<period>` hash (HGETALL reply, bytes or str) as typed totals; unknown fields are ignored
    so a newer worker may add metrics during a rolling upgrade."""
    parts: dict[str, dict[str | None, dict[str, int]]] = {d: {} for d in DIMENSIONS}
    for name_raw, value_raw in raw.items():
        head, sep, value = _text(name_raw).partition(":")
        dimension, _, metric = head.partition(".")
        if dimension not in parts or metric not in METRICS or (dimension == "total") == bool(sep):
            continue
        parts[dimension].setdefault(value if sep else None, {})[metric] = int(value_raw)

    def totals(dimension: str) -> dict[str, Totals]:
        return {str(v): Totals(**m) for v, m in sorted(parts[dimension].items(), key=lambda kv: str(kv[0]))}

    return Aggregate(
        total=Totals(**parts["total"].get(None, {})),
        by_backend=totals("backend"),
        by_model=totals("model"),
        by_key=totals("key"),
    )


@dataclass(frozen=True, slots=True)
class MinuteCounts:
    requests: int = 0
    errors: int = 0
    ttfb_us: int = 0
    ttfb_count: int = 0


def parse_quality_hour(hour: str, raw: Mapping[Any, Any]) -> dict[float, MinuteCounts]:
    """A `quality:<backend>:<hour>` hash as {minute start (unix s): counts}; unknown fields ignored."""
    start = hour_start(hour)
    minutes: dict[int, dict[str, int]] = {}
    for name_raw, value_raw in raw.items():
        minute, _, metric = _text(name_raw).partition(".")
        if metric not in QUALITY_METRICS or not minute.isdigit() or not 0 <= int(minute) < 60:
            continue
        minutes.setdefault(int(minute), {})[metric] = int(value_raw)
    return {start + 60 * m: MinuteCounts(**counts) for m, counts in sorted(minutes.items())}
